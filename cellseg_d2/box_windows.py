"""Pixel windows of boxes: where a box's mask can have pixels."""
import math

import torch


def box_windows(boxes, height: int, width: int, margin: float = 0.0, stride: int = 1):
    """(n, 4) long tensor (x0, y0, x1, y1), end exclusive, in units of ``stride`` pixels: the
    cells of a stride grid over a (height, width) image that XYXY ``boxes`` (pixels) grown by
    ``margin`` pixels touch, clipped to the image."""
    b = torch.as_tensor(boxes).detach()
    b = b if b.is_floating_point() else b.float()
    lo = ((b[:, :2] - margin) / stride).floor()
    hi = ((b[:, 2:] + margin) / stride).ceil()
    limit = b.new_tensor([math.ceil(width / stride), math.ceil(height / stride)])
    return torch.cat([torch.minimum(lo.clamp(min=0), limit),
                      torch.minimum(hi.clamp(min=0), limit)], dim=1).long()


def grown_boxes(boxes, fraction: float):
    """XYXY ``boxes`` grown by ``fraction`` of their width and height on every side (unclipped)."""
    if not fraction:
        return boxes
    size = (boxes[:, 2:] - boxes[:, :2]) * fraction
    return torch.cat([boxes[:, :2] - size, boxes[:, 2:] + size], dim=1)
