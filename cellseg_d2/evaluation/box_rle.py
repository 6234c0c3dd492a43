"""COCO RLE of instance masks computed from their boxes only.

Cell images carry up to ~1000 detections; encoding each as a full H x W Fortran-ordered array
(what Detectron2's instances_to_coco_json does) copies n x H x W bytes. Here each mask is read
only inside its box (grown by a margin) and the column-major runs of the full image are built
from that crop; a mask with pixels outside its crop falls back to full encoding.
"""
import numpy as np
import pycocotools.mask as mask_util
import torch


def _crop_counts(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> list:
    h, w = crop.shape
    cols = np.zeros((w, height), np.int8)
    cols[:, y0:y0 + h] = crop.T
    edges = np.flatnonzero(np.diff(np.concatenate([[0], cols.ravel(), [0]])))
    if len(edges) == 0:
        return [height * width]
    pos = edges + x0 * height  # run boundaries in column-major full-image order
    counts = np.diff(np.concatenate([[0], pos, [height * width]])).tolist()
    if counts[-1] == 0:  # foreground reaches the last pixel: no trailing background run
        counts.pop()
    return counts


def encode_instance_masks(masks, boxes, margin: int = 2) -> list:
    """masks (n, H, W) bool tensor/array, boxes (n, 4) XYXY; returns COCO RLE dicts whose
    ``counts`` are str (JSON-ready), identical to pycocotools.mask.encode of the full masks."""
    masks = torch.as_tensor(masks).cpu().numpy().astype(bool, copy=False)
    n, height, width = masks.shape
    if n == 0:
        return []
    boxes = torch.as_tensor(boxes).float().cpu()
    x0s = (boxes[:, 0].floor() - margin).clamp(0, width).long().tolist()
    y0s = (boxes[:, 1].floor() - margin).clamp(0, height).long().tolist()
    x1s = (boxes[:, 2].ceil() + margin).clamp(0, width).long().tolist()
    y1s = (boxes[:, 3].ceil() + margin).clamp(0, height).long().tolist()
    totals = np.count_nonzero(masks.reshape(n, -1), axis=1).tolist()  # fast for bool, unlike torch
    out = []
    for i in range(n):
        crop = masks[i, y0s[i]:y1s[i], x0s[i]:x1s[i]]
        if int(crop.sum()) == totals[i]:
            rle = mask_util.frPyObjects(
                {"size": [height, width],
                 "counts": _crop_counts(crop.astype(np.int8), x0s[i], y0s[i], height, width)},
                height, width)
        else:  # pixels outside the box: encode the full mask
            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(rle)
    return out
