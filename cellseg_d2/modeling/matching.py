"""Anchor to ground-truth matching, vectorised over ground truths (cell images have ~800)."""
import torch
from detectron2.structures import Boxes, pairwise_iou

IGNORE = -1


@torch.no_grad()
def match_anchors(gt_boxes: Boxes, anchors: Boxes, pos_iou: float, neg_iou: float,
                  chunk_elems: int = 1 << 24):
    """YOLACT matching.

    Each anchor takes the ground truth it overlaps most; IoU >= ``pos_iou`` makes it positive,
    < ``neg_iou`` background, in between ignored. Then every ground truth forces its best anchor
    to be a positive match to itself (in ground-truth order: where two share a best anchor the
    later one wins, as in the reference implementation).

    Returns (matched_idx, label): matched_idx (R,) long, the ground truth per anchor (0 where
    none); label (R,) long, 1 positive, 0 background, -1 ignored.
    """
    num_anchors = len(anchors)
    device = anchors.tensor.device
    num_gt = len(gt_boxes)
    if num_gt == 0:
        return (torch.zeros(num_anchors, dtype=torch.long, device=device),
                torch.zeros(num_anchors, dtype=torch.long, device=device))
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
