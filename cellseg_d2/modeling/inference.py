"""YOLACT inference: per-class Fast NMS and mask assembly at full resolution."""
import math

import torch
import torch.nn.functional as F


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


def paste_masks(proto, coefs, boxes, input_hw, output_hw, stride: float, threshold: float = 0.5):
    """Assemble sigmoid(P C^T) per instance, upsampled (bilinear) to the output image and cut
    to its box, as a bool (n, H, W) tensor.

    Only each box's own pixels are computed: the mask is evaluated on the prototype window
    under the box and sampled onto the box's output pixels, so memory and time grow with the
    boxes' area, never with n x H x W floats.

    proto (k, hp, wp) at ``stride`` input pixels per prototype pixel; coefs (n, k); boxes (n, 4)
    in output pixels; input_hw: the resized image size the network saw (before padding);
    output_hw: the size to produce.
    """
    out_h, out_w = output_hw
    n = coefs.shape[0]
    masks = torch.zeros((n, out_h, out_w), dtype=torch.bool, device=coefs.device)
    if n == 0:
        return masks
    # output pixel -> prototype coordinate (align_corners=False convention)
    sy = input_hw[0] / out_h / stride
    sx = input_hw[1] / out_w / stride
    hp, wp = proto.shape[1:]
    valid_h = min(hp, math.ceil(input_hw[0] / stride))
    valid_w = min(wp, math.ceil(input_hw[1] / stride))
    boxes_cpu = boxes.detach().float().cpu()
    x0s = boxes_cpu[:, 0].floor().clamp(0, out_w).long().tolist()
    y0s = boxes_cpu[:, 1].floor().clamp(0, out_h).long().tolist()
    x1s = boxes_cpu[:, 2].ceil().clamp(0, out_w).long().tolist()
    y1s = boxes_cpu[:, 3].ceil().clamp(0, out_h).long().tolist()
    for i in range(n):
        x0, y0, x1, y1 = x0s[i], y0s[i], x1s[i], y1s[i]
        if x1 <= x0 or y1 <= y0:
            continue
        ys = (torch.arange(y0, y1, device=proto.device, dtype=proto.dtype) + 0.5) * sy - 0.5
        xs = (torch.arange(x0, x1, device=proto.device, dtype=proto.dtype) + 0.5) * sx - 0.5
        ys = ys.clamp(0, valid_h - 1)
        xs = xs.clamp(0, valid_w - 1)
        py0, px0 = int(ys[0].floor()), int(xs[0].floor())
        py1, px1 = min(int(ys[-1].floor()) + 2, valid_h), min(int(xs[-1].floor()) + 2, valid_w)
        window = torch.sigmoid(torch.einsum("khw,k->hw", proto[:, py0:py1, px0:px1], coefs[i]))
        # bilinear sampling of the probabilities, as F.interpolate(align_corners=False) does
        fy, fx = ys - py0, xs - px0
        iy0, ix0 = fy.floor().long(), fx.floor().long()
        iy1 = (iy0 + 1).clamp(max=window.shape[0] - 1)
        ix1 = (ix0 + 1).clamp(max=window.shape[1] - 1)
        wy, wx = (fy - iy0)[:, None], (fx - ix0)[None, :]
        top = window[iy0][:, ix0] * (1 - wx) + window[iy0][:, ix1] * wx
        bottom = window[iy1][:, ix0] * (1 - wx) + window[iy1][:, ix1] * wx
        masks[i, y0:y1, x0:x1] = (top * (1 - wy) + bottom * wy) > threshold
    return masks


def upsample_probabilities(proto, coefs, input_hw, output_hw, stride: float):
    """Reference (dense) assembly: sigmoid(P C^T) upsampled to the output for all instances.
    Used by tests to check :func:`paste_masks`; allocates n x H x W floats."""
    probs = torch.sigmoid(torch.einsum("khw,nk->nhw", proto, coefs))
    valid_h = math.ceil(input_hw[0] / stride)
    valid_w = math.ceil(input_hw[1] / stride)
    probs = probs[:, :valid_h, :valid_w]
    # Scale so that the valid region maps exactly onto input_hw, then onto output_hw.
    full = F.interpolate(probs[:, None], scale_factor=(output_hw[0] / input_hw[0] * stride,
                                                       output_hw[1] / input_hw[1] * stride),
                         mode="bilinear", align_corners=False, recompute_scale_factor=False)
    return full[:, 0, :output_hw[0], :output_hw[1]]
