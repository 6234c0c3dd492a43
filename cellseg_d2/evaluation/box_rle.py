"""COCO RLE of instance masks computed from their boxes only.

Cell images carry up to ~2000 detections; encoding each as a full H x W Fortran-ordered array
(what Detectron2's instances_to_coco_json does) copies n x H x W bytes. Here each mask is read
only inside its box grown by a margin (cells.box_crops) and its runs in the full image are
computed from that crop (cells.coco_rle).
"""
import numpy as np
import torch

from ..cells import Cell, box_crops, coco_rle


def encode_instance_masks(masks, boxes, margin: int = 2) -> list:
    """masks (n, H, W) bool tensor/array, boxes (n, 4) XYXY; returns COCO RLE dicts whose
    ``counts`` are str (JSON-ready), identical to pycocotools.mask.encode of the full masks."""
    masks = torch.as_tensor(masks).cpu().numpy().astype(bool, copy=False)
    n, height, width = masks.shape
    boxes = torch.as_tensor(boxes).float().cpu().numpy().astype(np.float64).reshape(-1, 4)
    return [coco_rle(Cell(x0, y0, crop, 0.0, 0, boxes[i]), height, width)
            for i, x0, y0, crop in box_crops(masks, boxes, range(n), margin)]
