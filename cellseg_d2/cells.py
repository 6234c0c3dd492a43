"""Predicted cells kept box-local: a cell is its mask cut to its pixels' bounds, placed at
(x0, y0) in the image. Every output (label image, COCO RLE, Kaggle RLE, tables, polygons) is
computed from these crops, so nothing is ever n x H x W."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pycocotools.mask as mask_util
import torch

from .box_windows import box_windows


@dataclass
class Cell:
    x0: int
    y0: int
    mask: np.ndarray  # bool, (h, w), nonzero rows and columns at its borders
    score: float
    cls: int
    box: np.ndarray  # the model's box, XYXY in image pixels
    tile: int = 0

    @property
    def bounds(self) -> tuple:
        """(x0, y0, x1, y1) of the mask's pixels, end exclusive."""
        h, w = self.mask.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


def tight(mask: np.ndarray, x0: int, y0: int):
    """Cut ``mask`` to the bounds of its pixels: (mask, x0, y0), or None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return (mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1],
            x0 + int(cols[0]), y0 + int(rows[0]))


def box_crops(masks: np.ndarray, boxes: np.ndarray, indices, margin: int = 2):
    """Yield (index, x0, y0, crop) for ``indices`` of masks (n, H, W) bool, each crop being the
    mask inside its XYXY box grown by ``margin`` px, where YOLACT's and Detectron2's mask heads
    put every pixel; a mask reaching the edge of that window is yielded whole. Nothing is done
    per pixel of the (n, H, W) stack, so the cost follows the boxes, not n x H x W."""
    _, height, width = masks.shape
    windows = box_windows(boxes, height, width, margin).tolist()
    for i in indices:
        x0, y0, x1, y1 = windows[i]
        x0, y0 = min(x0, width - 1), min(y0, height - 1)  # at least one pixel
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        crop = masks[i, y0:y1, x0:x1]
        if ((y0 > 0 and crop[0].any()) or (y1 < height and crop[-1].any())
                or (x0 > 0 and crop[:, 0].any()) or (x1 < width and crop[:, -1].any())):
            yield i, 0, 0, masks[i]
        else:
            yield i, x0, y0, crop


def cells_from_instances(inst, score_thresh: float, origin=(0, 0), tile: int = 0) -> list:
    """Detectron2 Instances (pred_masks at the instances' image size) -> Cells scoring above
    ``score_thresh``, in image coordinates shifted by ``origin`` (x, y); empty masks dropped."""
    if len(inst) == 0 or not inst.has("pred_masks"):
        return []
    masks = torch.as_tensor(inst.pred_masks).cpu().numpy().astype(bool, copy=False)
    scores = inst.scores.cpu().numpy()
    classes = inst.pred_classes.cpu().numpy()
    boxes = inst.pred_boxes.tensor.cpu().numpy().astype(np.float64)
    ox, oy = origin
    cells = []
    for i, x0, y0, crop in box_crops(masks, boxes, np.flatnonzero(scores > score_thresh).tolist()):
        cut = tight(crop, x0, y0)
        if cut is not None:
            crop, x0, y0 = cut
            cells.append(Cell(x0 + ox, y0 + oy, crop.copy(), float(scores[i]), int(classes[i]),
                              boxes[i] + (ox, oy, ox, oy), tile))
    return cells


def windows(shape: tuple, chunk: int) -> list:
    """(y0, x0, y1, x1) of the ``chunk``-px squares covering an image of ``shape``, row by row."""
    height, width = shape[:2]
    return [(y, x, min(y + chunk, height), min(x + chunk, width))
            for y in range(0, height, chunk) for x in range(0, width, chunk)]


def cells_by_window(cells: list, shape: tuple, chunk: int) -> dict:
    """{index in ``windows(shape, chunk)``: indices of the cells whose bounds meet it, in the
    given order}."""
    per_row = -(-shape[1] // chunk)
    out = {}
    for i, c in enumerate(cells):
        x0, y0, x1, y1 = c.bounds
        for wy in range(y0 // chunk, (y1 - 1) // chunk + 1):
            for wx in range(x0 // chunk, (x1 - 1) // chunk + 1):
                out.setdefault(wy * per_row + wx, []).append(i)
    return out


def label_dtype(n: int):
    return np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32


def non_overlapping(cells: list, shape: tuple, chunk: int = 4096) -> list:
    """The cells made non-overlapping: each pixel goes to the highest-scored cell covering it
    (the earlier one of equal scores), a cell cut to the pixels it wins, cells left empty
    dropped; in score order (a label image's ids 1..n). Done ``chunk`` px square at a time, so a
    whole well never needs a label image of its size in memory."""
    order = sorted(range(len(cells)), key=lambda i: -cells[i].score)
    ranked = [cells[i] for i in order]
    won = [None] * len(ranked)  # per cell: its mask of won pixels, at its bounds
    grid = windows(shape, chunk)
    for k, idx in cells_by_window(ranked, shape, chunk).items():
        y0, x0, y1, x1 = grid[k]
        taken = np.zeros((y1 - y0, x1 - x0), bool)
        for i in idx:  # in score order
            c = ranked[i]
            cx0, cy0, cx1, cy1 = c.bounds
            ax0, ay0, ax1, ay1 = max(cx0, x0), max(cy0, y0), min(cx1, x1), min(cy1, y1)
            part = c.mask[ay0 - cy0:ay1 - cy0, ax0 - cx0:ax1 - cx0] & \
                ~taken[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0]
            if part.any():
                taken[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] |= part
                if won[i] is None:
                    won[i] = np.zeros_like(c.mask)
                won[i][ay0 - cy0:ay1 - cy0, ax0 - cx0:ax1 - cx0] = part
    kept = []
    for c, mask in zip(ranked, won):
        cut = None if mask is None else tight(mask, c.x0, c.y0)
        if cut is not None:
            mask, x0, y0 = cut
            kept.append(Cell(x0, y0, mask, c.score, c.cls, c.box, c.tile))
    return kept


def label_window(kept: list, window: tuple, dtype, indices=None) -> np.ndarray:
    """The label image of non-overlapping cells (ids 1..n in list order) inside ``window``
    (y0, x0, y1, x1); ``indices``: the cells that meet it (default: every cell is tried)."""
    y0, x0, y1, x1 = window
    out = np.zeros((y1 - y0, x1 - x0), dtype)
    for i in range(len(kept)) if indices is None else indices:
        c = kept[i]
        cx0, cy0, cx1, cy1 = c.bounds
        ax0, ay0, ax1, ay1 = max(cx0, x0), max(cy0, y0), min(cx1, x1), min(cy1, y1)
        if ax1 > ax0 and ay1 > ay0:
            part = c.mask[ay0 - cy0:ay1 - cy0, ax0 - cx0:ax1 - cx0]
            out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0][part] = i + 1
    return out


def label_source(kept: list):
    """``block(y0, y1, x0, x1)``: the label image of non-overlapping cells (ids 1..n in list
    order; cells.non_overlapping) in any window, made from the cells that meet it: a whole
    well's label image, piece by piece."""
    bounds = np.array([c.bounds for c in kept], np.int64).reshape(-1, 4)
    dtype = label_dtype(len(kept))

    def block(y0, y1, x0, x1):
        near = np.flatnonzero((bounds[:, 0] < x1) & (bounds[:, 2] > x0) &
                              (bounds[:, 1] < y1) & (bounds[:, 3] > y0))
        return label_window(kept, (y0, x0, y1, x1), dtype, near.tolist())
    return block


def paint_labels(cells: list, shape: tuple):
    """Make cells non-overlapping (``non_overlapping``) and paint them into a label image, ids
    1..n in score order; uint16 up to 65,535 cells, uint32 beyond. Returns (label image, the
    kept cells)."""
    kept = non_overlapping(cells, shape)
    return label_window(kept, (0, 0, *shape[:2]), label_dtype(len(kept))), kept


def _runs(cell: Cell, height: int, width: int, column_major: bool):
    """(starts, ends) of the cell's foreground runs in the flattened full image, ends exclusive;
    column-major is COCO's order, row-major Kaggle's."""
    lines, first_line, first_pos, line_len = (
        (cell.mask.T, cell.x0, cell.y0, height) if column_major
        else (cell.mask, cell.y0, cell.x0, width))
    padded = np.zeros((lines.shape[0], lines.shape[1] + 2), np.int8)
    padded[:, 1:-1] = lines
    edges = np.diff(padded, axis=1)
    li, p = np.nonzero(edges == 1)
    starts = (first_line + li) * line_len + first_pos + p
    li, p = np.nonzero(edges == -1)
    ends = (first_line + li) * line_len + first_pos + p
    joined = starts[1:] == ends[:-1]  # a run that goes on into the next line (full-length lines)
    if joined.any():
        starts, ends = starts[np.r_[True, ~joined]], ends[np.r_[~joined, True]]
    return starts, ends


def coco_rle(cell: Cell, height: int, width: int) -> dict:
    """COCO RLE of the cell in the full image (``counts`` as str), equal to
    pycocotools.mask.encode of its dense mask."""
    starts, ends = _runs(cell, height, width, column_major=True)
    bounds = np.empty(2 * len(starts), np.int64)
    bounds[0::2], bounds[1::2] = starts, ends
    counts = np.diff(np.concatenate([[0], bounds, [height * width]])).tolist()
    if counts and counts[-1] == 0:
        counts.pop()
    rle = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def kaggle_rle(cell: Cell, height: int, width: int) -> str:
    """The Kaggle submission's RLE of the cell (row-major, 1-indexed start / length pairs)."""
    starts, ends = _runs(cell, height, width, column_major=False)
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts.tolist(), ends.tolist()))


def polygons(cell: Cell) -> list:
    """The cell's outlines as (k, 2) float arrays of (x, y) in pixel-corner coordinates (pixel
    (x, y) spans [x, x+1) x [y, y+1)), the largest first. They run halfway between the cell's
    pixel centres and the background's, so filling a polygon (pixel centres inside) gives the
    cell's pixels back; holes are further outlines."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(cell.mask, 1).astype(np.uint8), 0.5)
    out = []
    for c in contours:
        # padded (row, col) of pixel centres -> corner coordinates: x = col - 1 + x0 + 0.5
        out.append(np.stack([c[:, 1] + cell.x0 - 0.5, c[:, 0] + cell.y0 - 0.5], axis=1))
    return sorted(out, key=lambda p: -abs(_area(p)))


def main_outline(cell: Cell) -> np.ndarray:
    """The outer outline (as ``polygons`` gives it) of the cell's piece with the most pixels:
    the one polygon an ImageJ ROI holds. A cell in pieces can have a sparse ring enclosing
    more area than its solid body; the ring's outline would mostly cover another cell."""
    from scipy.ndimage import label as pieces

    parts, n = pieces(cell.mask)  # 4-connected, as find_contours traces the foreground
    if n > 1:
        body = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
        cell = replace(cell, mask=body)
    return polygons(cell)[0]


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def cell_row(cell: Cell) -> dict:
    ys, xs = np.nonzero(cell.mask)
    x0, y0, x1, y1 = cell.bounds
    return {"score": round(cell.score, 4), "area_px": int(len(ys)),
            "centroid_x": round(float(xs.mean()) + x0, 2),
            "centroid_y": round(float(ys.mean()) + y0, 2),
            "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1}


def cells_from_label(label: np.ndarray, with_ids: bool = False):
    """Cells of a label image (0 background), in id order; score 1, class 0. ``with_ids``:
    (cells, their ids) -- a corrected label image may skip ids."""
    from scipy.ndimage import find_objects

    cells, ids = [], []
    for k, region in enumerate(find_objects(label), start=1):
        if region is None:
            continue
        ys, xs = region
        mask = label[region] == k
        cells.append(Cell(xs.start, ys.start, mask, 1.0, 0,
                          np.array([xs.start, ys.start, xs.stop, ys.stop], np.float64)))
        ids.append(k)
    return (cells, ids) if with_ids else cells
