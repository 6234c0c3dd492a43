"""YOLACT inference: per-class Fast NMS."""
import torch


def batched_box_iou(a, b):
    """IoU between every pair within each batch: a (B, n, 4), b (B, m, 4) -> (B, n, m)."""
    area_a = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])).clamp(min=0)
    area_b = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])).clamp(min=0)
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    return inter / union.clamp(min=1e-6)


def fast_nms(boxes, scores, score_thresh: float, iou_thresh: float, top_k: int, max_det: int):
    """Per-class Fast NMS (Bolya et al.): for each class keep its ``top_k`` best candidates,
    form the upper-triangular IoU matrix among them (higher score first) and drop a box whose
    largest IoU with any higher-scored box of its class exceeds ``iou_thresh``. Unlike
    standard NMS, already-suppressed boxes still suppress, which lets it run as matrix ops.

    boxes (n, 4); scores (n, C). Returns (indices into n, classes, scores), sorted by score,
    at most ``max_det``.
    """
    num_classes = scores.shape[1]
    k = min(top_k, scores.shape[0])
    if k == 0:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty, scores.new_zeros(0)
    cls_scores, idx = scores.t().topk(k, dim=1)  # (C, k), sorted descending
    iou = batched_box_iou(boxes[idx], boxes[idx]).triu_(diagonal=1)
    max_iou = iou.max(dim=1).values  # best IoU with a higher-scored box of the same class
    keep = (max_iou <= iou_thresh) & (cls_scores > score_thresh)
    classes = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(idx)
    idx, classes, kept_scores = idx[keep], classes[keep], cls_scores[keep]
    order = kept_scores.argsort(descending=True)[:max_det]
    return idx[order], classes[order], kept_scores[order]


def semantic_type(probs: torch.Tensor, fg_thresh: float = 0.5):
    """An image's type from its semantic probabilities (C, h, w): the class with the highest
    mean probability over the pixels where any class exceeds ``fg_thresh``; None without such
    pixels."""
    cells = probs.max(dim=0).values > fg_thresh
    if not cells.any():
        return None
    return int(probs[:, cells].mean(dim=1).argmax())
