"""YOLACT training targets from (anchors, ground truth): anchor classes and box deltas,
mask targets of the anchors whose masks are trained, semantic-segmentation targets."""
from dataclasses import dataclass

import torch
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

from ..box_windows import box_windows

IGNORE = -1


@dataclass
class MaskTargets:
    """One image's trained masks: the anchors, their ground truths' coverage at prototype
    resolution and boxes (input pixels)."""
    anchors: torch.Tensor  # (m,) anchor indices
    coverage: torch.Tensor  # (m, hp, wp)
    boxes: torch.Tensor  # (m, 4)


@dataclass
class Targets:
    classes: torch.Tensor  # (N, R): class, num_classes for background, IGNORE
    box_deltas: torch.Tensor  # (N, R, 4)
    positive: torch.Tensor  # (N, R) bool
    masks: list  # MaskTargets or None, per image
    semantic: torch.Tensor  # (N, C, hs, ws) per-class coverage

    @property
    def num_positive(self) -> int:
        return max(int(self.positive.sum()), 1)

    @property
    def num_masks(self) -> int:
        return max(sum(len(m.anchors) for m in self.masks if m is not None), 1)


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


def _best_overlaps(gt_boxes: Boxes, anchors: Boxes, grid):
    """Per anchor its best IoU and ground truth, per ground truth its best anchor, from the
    candidate pairs only; ties go to the lowest index, as torch.max over all pairs does."""
    num_anchors, num_gt = len(anchors), len(gt_boxes)
    device = anchors.tensor.device
    g, a = grid_candidate_pairs(gt_boxes.tensor, anchors.tensor, grid)
    iou = matched_pairwise_iou(gt_boxes[g], anchors[a])  # same arithmetic as pairwise_iou
    best_iou = torch.zeros(num_anchors, device=device).scatter_reduce_(0, a, iou, "amax")
    tied = (iou == best_iou[a]) & (iou > 0)
    best_gt = torch.full((num_anchors,), num_gt, dtype=torch.long, device=device)
    best_gt.scatter_reduce_(0, a[tied], g[tied], "amin")
    best_gt[best_gt == num_gt] = 0  # no overlap at all: the argmax of zeros is 0
    gt_best_iou = torch.zeros(num_gt, device=device).scatter_reduce_(0, g, iou, "amax")
    tied = (iou == gt_best_iou[g]) & (iou > 0)
    gt_best_anchor = torch.full((num_gt,), num_anchors, dtype=torch.long, device=device)
    gt_best_anchor.scatter_reduce_(0, g[tied], a[tied], "amin")
    gt_best_anchor[gt_best_anchor == num_anchors] = 0
    return best_iou, best_gt, gt_best_anchor


@torch.no_grad()
def match_anchors(gt_boxes: Boxes, anchors: Boxes, pos_iou: float, neg_iou: float, grid):
    """YOLACT matching.

    Each anchor takes the ground truth it overlaps most; IoU >= ``pos_iou`` makes it positive,
    < ``neg_iou`` background, in between ignored. Then every ground truth forces its best anchor
    to be a positive match to itself (in ground-truth order: where two share a best anchor the
    later one wins, as in the reference implementation). Only the anchors near each ground
    truth are scored (grid: [(H, W, stride)] per level, anchors from DefaultAnchorGenerator).

    Returns (matched_idx, label): matched_idx (R,) long, the ground truth per anchor (0 where
    none); label (R,) long, 1 positive, 0 background, -1 ignored.
    """
    num_anchors = len(anchors)
    device = anchors.tensor.device
    num_gt = len(gt_boxes)
    if num_gt == 0:
        return (torch.zeros(num_anchors, dtype=torch.long, device=device),
                torch.zeros(num_anchors, dtype=torch.long, device=device))
    best_iou, best_gt, gt_best_anchor = _best_overlaps(gt_boxes, anchors, grid)
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


def mask_tensor(inst: Instances) -> torch.Tensor:
    """The ground-truth masks as an (n, H, W) bool tensor (polygons rasterised)."""
    masks = inst.gt_masks
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, *inst.image_size)
    return masks.tensor


def parts_of_cells(inst: Instances, anchors: Boxes, part_iou: float) -> torch.Tensor:
    """(R,) bool: anchors whose centre lies on a ground-truth mask, no larger than that cell's
    box, with IoU below ``part_iou`` with it: a piece of the cell, not an anchor of a coarser
    level that should stay background around a small cell."""
    t = mask_tensor(inst)
    h, w = t.shape[1:]
    centres = anchors.get_centers().floor().long()
    cx, cy = centres[:, 0], centres[:, 1]
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    on_cell = t[:, cy.clamp(0, h - 1), cx.clamp(0, w - 1)] & inside  # (G, R)
    near = on_cell.any(dim=0).nonzero().squeeze(1)
    part = torch.zeros(len(anchors), dtype=torch.bool, device=t.device)
    if len(near):
        ious = pairwise_iou(inst.gt_boxes, anchors[near])
        smaller = anchors[near].area()[None] <= inst.gt_boxes.area()[:, None]
        part[near] = (on_cell[:, near] & smaller & (ious < part_iou)).any(dim=0)
    return part


def coverage(inst: Instances, padded_hw, stride: int) -> torch.Tensor:
    """Ground-truth masks as (n, H/stride, W/stride) coverage fractions over the padded
    image: each pixel is the share of its stride x stride block inside the cell.

    Soft targets keep sub-pixel edges (prototypes are at stride 4, a cell is ~15 px across).
    Block sums are taken only inside each cell's box (widened by a pixel), so the work follows
    the cells, not n x H x W."""
    t = mask_tensor(inst)
    n, h, w = t.shape
    ph, pw = padded_hw[0] // stride, padded_hw[1] // stride
    out = torch.zeros((n, ph, pw), device=t.device)
    if n == 0:
        return out
    windows = box_windows(inst.gt_boxes.tensor, h, w, margin=1, stride=stride)
    for i, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        if x1 <= x0 or y1 <= y0:
            continue
        crop = t[i, y0 * stride:y1 * stride, x0 * stride:x1 * stride]
        if crop.shape != ((y1 - y0) * stride, (x1 - x0) * stride):  # at the image edge
            crop = torch.nn.functional.pad(crop.to(torch.uint8),
                                           (0, (x1 - x0) * stride - crop.shape[1],
                                            0, (y1 - y0) * stride - crop.shape[0]))
        block = crop.reshape(y1 - y0, stride, x1 - x0, stride)
        out[i, y0:y1, x0:x1] = block.sum(dim=(1, 3), dtype=torch.int32).float()
    return out / (stride * stride)


class TargetBuilder:
    """Builds ``Targets`` for a batch (see Yolact.forward)."""

    def __init__(self, num_classes, box2box_transform, pos_iou, neg_iou, masks_to_train,
                 proto_stride: int, semantic_stride: int, part_iou: float = 0.0):
        self.num_classes = num_classes
        self.box2box_transform = box2box_transform
        self.pos_iou, self.neg_iou = pos_iou, neg_iou
        self.masks_to_train = masks_to_train
        self.proto_stride, self.semantic_stride = proto_stride, semantic_stride
        self.part_iou = part_iou

    def __call__(self, gt: list, anchors: Boxes, grid, padded_hw) -> Targets:
        classes, deltas, matched = [], [], []
        for inst in gt:
            idx, label = match_anchors(inst.gt_boxes, anchors, self.pos_iou, self.neg_iou, grid)
            if self.part_iou > 0 and len(inst):
                label[(label == 0) & parts_of_cells(inst, anchors, self.part_iou)] = IGNORE
            cls = torch.full_like(label, self.num_classes)
            if len(inst):
                cls = torch.where(label == 1, inst.gt_classes[idx], cls)
                deltas.append(self.box2box_transform.get_deltas(anchors.tensor,
                                                                inst.gt_boxes.tensor[idx]))
            else:
                deltas.append(torch.zeros_like(anchors.tensor))
            cls[label < 0] = IGNORE
            classes.append(cls)
            matched.append(idx)
        classes = torch.stack(classes)
        positive = (classes >= 0) & (classes < self.num_classes)
        s = self.semantic_stride
        semantic = torch.zeros((len(gt), self.num_classes, padded_hw[0] // s, padded_hw[1] // s),
                               device=anchors.tensor.device)
        masks = []
        for i, inst in enumerate(gt):
            masks.append(None)
            if len(inst) == 0:
                continue
            proto_coverage = coverage(inst, padded_hw, self.proto_stride)
            semantic_coverage = coverage(inst, padded_hw, s)
            for c in inst.gt_classes.unique().tolist():
                semantic[i, c] = semantic_coverage[inst.gt_classes == c].amax(dim=0)
            pos_idx = positive[i].nonzero().squeeze(1)
            if len(pos_idx) > self.masks_to_train:  # a random subset, as the reference does
                pos_idx = pos_idx[torch.randperm(len(pos_idx), device=pos_idx.device)
                                  [:self.masks_to_train]]
            if len(pos_idx):
                gt_idx = matched[i][pos_idx]
                masks[i] = MaskTargets(pos_idx, proto_coverage[gt_idx],
                                       inst.gt_boxes.tensor[gt_idx])
        return Targets(classes, torch.stack(deltas), positive, masks, semantic)
