"""Per-image output files from box-local cells: label TIFF, ImageJ ROI zip, overlay and
outline PNGs. Every file is written to a temporary name and renamed into place."""
from __future__ import annotations

import csv
import os
import zipfile

import cv2
import numpy as np
from detectron2.utils.visualizer import ColorMode, Visualizer

from .cells import label_source, main_outline, polygons
from .utils import atomic_open, atomic_path

# BGR outline colours by class where the metadata gives none (green, magenta, cyan, ...).
PALETTE = np.array([(0, 255, 0), (255, 0, 255), (255, 255, 0), (0, 255, 255), (0, 128, 255),
                    (255, 128, 0), (128, 0, 255), (0, 0, 255)], np.uint8)


def write_image(path: str, image: np.ndarray) -> None:
    ok, data = cv2.imencode(os.path.splitext(path)[1], image)
    if not ok:
        raise OSError(f"{path}: could not encode image")
    with atomic_open(path, "wb") as f:
        f.write(data.tobytes())


def label_image(label) -> np.ndarray:
    """A label image of non-negative integer cell ids as the label TIFFs hold it (uint16, or
    uint32 past 65,535); ValueError for anything else."""
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer) or (label.size and label.min() < 0):
        raise ValueError("a label image holds non-negative integer cell ids")
    return label.astype(np.uint16 if label.max(initial=0) <= 65535 else np.uint32, copy=False)


def write_label_tiff(path: str, label: np.ndarray) -> None:
    """Label image as a deflate-compressed TIFF (uint16, or uint32 past 65,535 cells); BigTIFF
    when the pixels alone approach the 4 GB limit of classic TIFF."""
    _write_tiff(path, label, label.shape, label.dtype)


def write_label_tiff_tiles(path: str, tiles, shape: tuple, dtype, tile: int) -> None:
    """write_label_tiff of a label image given as ``tile``-px tiles in row-major order (the
    TIFF is tiled): a whole well's, never in memory at once."""
    _write_tiff(path, tiles, shape, dtype, tile=(tile, tile))


def _write_tiff(path, data, shape, dtype, **layout) -> None:
    import tifffile

    big = shape[0] * shape[1] * np.dtype(dtype).itemsize > 2**32 - 2**28
    with atomic_path(path) as tmp:
        if isinstance(data, np.ndarray):
            tifffile.imwrite(tmp, data, bigtiff=big, compression="zlib", photometric="minisblack")
        else:
            tifffile.imwrite(tmp, data, shape=shape, dtype=dtype, bigtiff=big, compression="zlib",
                             photometric="minisblack", **layout)


def write_rois(path: str, cells: list, ids: list = None) -> None:
    """ImageJ / Fiji ROI zip: one sub-pixel polygon ROI per cell (``main_outline``), named by
    its id in the label image (``ids``; default 1..n in order), zero-padded so the ROI Manager
    lists them in order."""
    import roifile

    ids = list(range(1, len(cells) + 1)) if ids is None else [int(i) for i in ids]
    width = len(str(max(ids, default=0)))
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for i, cell in zip(ids, cells):
            name = str(i).zfill(width)
            roi = roifile.ImagejRoi.frompoints(main_outline(cell), name=name)
            # a fixed entry time: the same cells give the same file
            info = zipfile.ZipInfo(f"{name}.roi", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, roi.tobytes(), compress_type=zipfile.ZIP_DEFLATED)


def class_colors(metadata, n: int) -> np.ndarray:
    colors = getattr(metadata, "thing_colors", None)
    if colors and len(colors) >= n:
        return np.asarray(colors, np.uint8)[:, ::-1]  # metadata colours are RGB
    return PALETTE[np.arange(n) % len(PALETTE)]


def outline_edges(label: np.ndarray) -> np.ndarray:
    """Each cell's one-pixel inner boundary: its pixels with a 4-neighbour of another label."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(label, connectivity=1, mode="inner")


def outlines(image_bgr: np.ndarray, label: np.ndarray, classes: np.ndarray,
             metadata, edge: np.ndarray = None) -> np.ndarray:
    """The image with each cell's boundary (``outline_edges``, or ``edge`` where given) drawn
    in its class colour. ``classes`` gives the class of label 1, 2, ..."""
    edge = outline_edges(label) if edge is None else edge
    out = image_bgr.copy()
    lut = np.zeros(len(classes) + 1, np.int64)
    lut[1:] = classes
    out[edge] = class_colors(metadata, int(classes.max(initial=0)) + 1)[lut[label[edge]]]
    return out


def outline_bands(image, kept: list, classes: np.ndarray, metadata, band: int = 512):
    """``outlines`` of a whole well, ``band`` rows at a time (each band's label image made
    with a row of its neighbours', so its edges are the whole image's): ``image`` is an
    array or data.regions.ScaledRegions, ``kept`` non-overlapping cells
    (cells.non_overlapping)."""
    height, width = image.shape[:2]
    label_of = label_source(kept)
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        c0, c1 = max(y0 - 1, 0), min(y1 + 1, height)
        label = label_of(c0, c1, 0, width)
        inner = slice(y0 - c0, y0 - c0 + y1 - y0)
        yield outlines(image[y0:y1, 0:width], label[inner], classes, metadata,
                       outline_edges(label)[inner])


def write_png_bands(path: str, bands, height: int, width: int) -> None:
    """A BGR image given as bands of rows, written as an RGB PNG row by row (pypng), never
    whole in memory."""
    import png

    rows = (row.tobytes() for b in bands for row in np.ascontiguousarray(b[:, :, ::-1]))
    with atomic_open(path, "wb") as f:
        png.Writer(width, height, greyscale=False, bitdepth=8).write_packed(f, rows)


def overlay(image_bgr: np.ndarray, cells: list, metadata) -> np.ndarray:
    """Detectron2's Visualizer drawing of the cells (outlines as polygons, class and score), each
    in its class colour (the Visualizer's own would be random: the same cells drawn twice
    would differ)."""
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    if cells:
        names = metadata.get("thing_classes", None)
        labels = [f"{names[c.cls] if names else c.cls} {c.score * 100:.0f}%" for c in cells]
        masks = [[p.ravel() for p in polygons(c) if len(p) >= 3] for c in cells]
        palette = class_colors(metadata, max(c.cls for c in cells) + 1)[:, ::-1] / 255.0
        vis.overlay_instances(masks=masks, boxes=np.array([c.box for c in cells]),
                              labels=labels, alpha=0.5,
                              assigned_colors=[tuple(palette[c.cls]) for c in cells])
    return vis.output.get_image()[:, :, ::-1]


def write_csv(path: str, rows: list, fields: list) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
