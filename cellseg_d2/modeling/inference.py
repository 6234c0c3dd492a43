"""YOLACT inference: per-class Fast NMS and mask assembly at full resolution."""
import math

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


def paste_masks(proto, coefs, boxes, input_hw, output_hw, stride: float, threshold: float = 0.5,
                chunk: int = 128):
    """Assemble sigmoid(P C^T) per instance, upsampled (bilinear, align_corners=False) to the
    output image and cut to its box, as a bool (n, H, W) tensor.

    Only each box's own output pixels are sampled: instances are sorted by box size and
    processed in chunks, each sampling a (chunk, box_h, box_w) grid from the prototype-resolution
    masks, so memory and time grow with the boxes' area, never with n x H x W floats.

    proto (k, hp, wp) at ``stride`` input pixels per prototype pixel; coefs (n, k); boxes (n, 4)
    in output pixels; input_hw: the resized image size the network saw (before padding);
    output_hw: the size to produce.
    """
    out_h, out_w = output_hw
    n = coefs.shape[0]
    masks = torch.zeros((n, out_h, out_w), dtype=torch.bool, device=coefs.device)
    if n == 0:
        return masks
    sy = input_hw[0] / out_h / stride  # output pixel -> prototype coordinate
    sx = input_hw[1] / out_w / stride
    valid_h = min(proto.shape[1], math.ceil(input_hw[0] / stride))
    valid_w = min(proto.shape[2], math.ceil(input_hw[1] / stride))
    proto = proto[:, :valid_h, :valid_w]
    b = boxes.detach().float()
    x0 = b[:, 0].floor().clamp(0, out_w).long()
    y0 = b[:, 1].floor().clamp(0, out_h).long()
    x1 = b[:, 2].ceil().clamp(0, out_w).long()
    y1 = b[:, 3].ceil().clamp(0, out_h).long()
    bh, bw = (y1 - y0).clamp(min=0), (x1 - x0).clamp(min=0)
    order = (bh * bw).argsort()
    x0l, y0l, bhl, bwl = x0.tolist(), y0.tolist(), bh.tolist(), bw.tolist()
    for start in range(0, n, chunk):
        idx = order[start:start + chunk]
        hmax, wmax = int(bh[idx].max()), int(bw[idx].max())
        if hmax == 0 or wmax == 0:
            continue
        probs = torch.sigmoid(torch.einsum("khw,nk->nhw", proto, coefs[idx]))
        ys = y0[idx, None] + torch.arange(hmax, device=b.device)  # (c, hmax) output rows
        xs = x0[idx, None] + torch.arange(wmax, device=b.device)
        fy = ((ys + 0.5) * sy - 0.5).clamp(0, valid_h - 1)
        fx = ((xs + 0.5) * sx - 0.5).clamp(0, valid_w - 1)
        iy0, ix0 = fy.floor().long(), fx.floor().long()
        iy1, ix1 = (iy0 + 1).clamp(max=valid_h - 1), (ix0 + 1).clamp(max=valid_w - 1)
        wy, wx = (fy - iy0)[:, :, None], (fx - ix0)[:, None, :]
        c = torch.arange(len(idx), device=b.device)[:, None, None]
        r0, r1 = iy0[:, :, None], iy1[:, :, None]
        c0, c1 = ix0[:, None, :], ix1[:, None, :]
        top = probs[c, r0, c0] * (1 - wx) + probs[c, r0, c1] * wx
        bottom = probs[c, r1, c0] * (1 - wx) + probs[c, r1, c1] * wx
        sampled = (top * (1 - wy) + bottom * wy) > threshold
        for j, i in enumerate(idx.tolist()):
            h, w = bhl[i], bwl[i]
            if h and w:
                masks[i, y0l[i]:y0l[i] + h, x0l[i]:x0l[i] + w] = sampled[j, :h, :w]
    return masks
