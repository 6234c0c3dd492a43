"""Anchor to ground-truth matching, vectorised over ground truths (cell images have ~800)."""
import torch
from detectron2.structures import Boxes, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

IGNORE = -1


def _positions(lo, hi, size, base_lo, base_hi, stride):
    """First grid position and count (G, A) of anchors overlapping [lo, hi] along one axis:
    positions p with base_lo + p * stride < hi and base_hi + p * stride > lo (rounded out)."""
    first = torch.floor((lo[:, None] - base_hi[None]) / stride).clamp(0, size - 1)
    last = torch.ceil((hi[:, None] - base_lo[None]) / stride).clamp(0, size - 1)
    return first.long(), (last - first + 1).clamp(min=0).long()


def grid_candidate_pairs(gt: torch.Tensor, anchors: torch.Tensor, grid):
    """(gt index, anchor index) pairs that include every pair with a non-zero overlap, for
    anchors laid out as DefaultAnchorGenerator does: level by level, each level (H, W, A)
    with anchor (y, x, a) = anchor (0, 0, a) shifted by (x, y) * stride.

    A cell overlaps a few anchor positions per level, so this is ~100 pairs per ground truth
    instead of all ~50k anchors. grid: [(H, W, stride)] per level, in anchor order.
    """
    pairs_g, pairs_a = [], []
    start = 0
    total_cells = sum(h * w for h, w, _ in grid)
    num_cell = len(anchors) // total_cells
    for h, w, stride in grid:
        base = anchors[start:start + num_cell]  # (A, 4): the anchors at grid position (0, 0)

        x0, nx = _positions(gt[:, 0], gt[:, 2], w, base[:, 0], base[:, 2], stride)  # (G, A)
        y0, ny = _positions(gt[:, 1], gt[:, 3], h, base[:, 1], base[:, 3], stride)
        counts = (nx * ny).flatten()
        owner = torch.repeat_interleave(torch.arange(len(counts), device=gt.device), counts)
        k = torch.arange(len(owner), device=gt.device) - (counts.cumsum(0) - counts)[owner]
        nx_o = nx.flatten()[owner]
        xs = x0.flatten()[owner] + k % nx_o
        ys = y0.flatten()[owner] + k // nx_o
        pairs_g.append(owner // num_cell)
        pairs_a.append(start + (ys * w + xs) * num_cell + owner % num_cell)
        start += h * w * num_cell
    return torch.cat(pairs_g), torch.cat(pairs_a)


def _best_overlaps_dense(gt_boxes: Boxes, anchors: Boxes, chunk_elems: int):
    num_anchors, num_gt = len(anchors), len(gt_boxes)
    device = anchors.tensor.device
    best_iou = torch.empty(num_anchors, device=device)
    best_gt = torch.empty(num_anchors, dtype=torch.long, device=device)
    gt_best_iou = torch.full((num_gt,), -1.0, device=device)
    gt_best_anchor = torch.zeros(num_gt, dtype=torch.long, device=device)
    # Chunk over anchors so the G x R IoU matrix never exists whole at real input sizes.
    step = max(1, chunk_elems // num_gt)
    for start in range(0, num_anchors, step):
        iou = pairwise_iou(gt_boxes, anchors[start:start + step])  # (G, r)
        best_iou[start:start + step], best_gt[start:start + step] = iou.max(dim=0)
        chunk_best, chunk_arg = iou.max(dim=1)
        better = chunk_best > gt_best_iou
        gt_best_iou = torch.where(better, chunk_best, gt_best_iou)
        gt_best_anchor = torch.where(better, chunk_arg + start, gt_best_anchor)
    return best_iou, best_gt, gt_best_anchor


def _best_overlaps_grid(gt_boxes: Boxes, anchors: Boxes, grid):
    """Same results as the dense search (ties go to the lowest index, as torch.max does),
    from the candidate pairs only."""
    num_anchors, num_gt = len(anchors), len(gt_boxes)
    device = anchors.tensor.device
    g, a = grid_candidate_pairs(gt_boxes.tensor, anchors.tensor, grid)
    iou = matched_pairwise_iou(gt_boxes[g], anchors[a])  # same arithmetic as pairwise_iou
    best_iou = torch.zeros(num_anchors, device=device).scatter_reduce_(0, a, iou, "amax")
    tied = (iou == best_iou[a]) & (iou > 0)
    best_gt = torch.full((num_anchors,), num_gt, dtype=torch.long, device=device)
    best_gt.scatter_reduce_(0, a[tied], g[tied], "amin")
    best_gt[best_gt == num_gt] = 0  # no overlap at all: the dense argmax of zeros is 0
    gt_best_iou = torch.zeros(num_gt, device=device).scatter_reduce_(0, g, iou, "amax")
    tied = (iou == gt_best_iou[g]) & (iou > 0)
    gt_best_anchor = torch.full((num_gt,), num_anchors, dtype=torch.long, device=device)
    gt_best_anchor.scatter_reduce_(0, g[tied], a[tied], "amin")
    gt_best_anchor[gt_best_anchor == num_anchors] = 0
    return best_iou, best_gt, gt_best_anchor


@torch.no_grad()
def match_anchors(gt_boxes: Boxes, anchors: Boxes, pos_iou: float, neg_iou: float,
                  chunk_elems: int = 1 << 24, grid=None):
    """YOLACT matching.

    Each anchor takes the ground truth it overlaps most; IoU >= ``pos_iou`` makes it positive,
    < ``neg_iou`` background, in between ignored. Then every ground truth forces its best anchor
    to be a positive match to itself (in ground-truth order: where two share a best anchor the
    later one wins, as in the reference implementation).

    With ``grid`` ([(H, W, stride)] per level, anchors from DefaultAnchorGenerator) only the
    anchors near each ground truth are scored; otherwise every pair, in chunks.

    Returns (matched_idx, label): matched_idx (R,) long, the ground truth per anchor (0 where
    none); label (R,) long, 1 positive, 0 background, -1 ignored.
    """
    num_anchors = len(anchors)
    device = anchors.tensor.device
    num_gt = len(gt_boxes)
    if num_gt == 0:
        return (torch.zeros(num_anchors, dtype=torch.long, device=device),
                torch.zeros(num_anchors, dtype=torch.long, device=device))
    if grid is not None:
        best_iou, best_gt, gt_best_anchor = _best_overlaps_grid(gt_boxes, anchors, grid)
    else:
        best_iou, best_gt, gt_best_anchor = _best_overlaps_dense(gt_boxes, anchors, chunk_elems)
    label = torch.full((num_anchors,), IGNORE, dtype=torch.long, device=device)
    label[best_iou >= pos_iou] = 1
    label[best_iou < neg_iou] = 0
    # Forced matches; index_put_ with duplicate indices keeps the last write on CPU and CUDA
    # only by accident, so resolve duplicates explicitly: the highest gt index wins.
    gt_ids = torch.arange(num_gt, device=device)
    winner = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
    winner.scatter_reduce_(0, gt_best_anchor, gt_ids, reduce="amax")
    forced = winner >= 0
    best_gt[forced] = winner[forced]
    label[forced] = 1
    return best_gt, label
