"""Per-image output files from box-local cells: label TIFF, ImageJ ROI zip, overlay and
outline PNGs. Every file is written to a temporary name and renamed into place."""
from __future__ import annotations

import csv
import os
import zipfile

import cv2
import numpy as np
from detectron2.utils.visualizer import ColorMode, Visualizer

from .cells import polygons
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
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, label, bigtiff=label.nbytes > 2**32 - 2**28,
                         compression="zlib", photometric="minisblack")


def write_rois(path: str, cells: list, ids: list = None) -> None:
    """ImageJ / Fiji ROI zip: one sub-pixel polygon ROI per cell (its outer outline), named by
    its id in the label image (``ids``; default 1..n in order), zero-padded so the ROI Manager
    lists them in order."""
    import roifile

    ids = list(range(1, len(cells) + 1)) if ids is None else [int(i) for i in ids]
    width = len(str(max(ids, default=0)))
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for i, cell in zip(ids, cells):
            name = str(i).zfill(width)
            roi = roifile.ImagejRoi.frompoints(polygons(cell)[0], name=name)
            # a fixed entry time: the same cells give the same file
            info = zipfile.ZipInfo(f"{name}.roi", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, roi.tobytes(), compress_type=zipfile.ZIP_DEFLATED)


def write_ome_zarr(path: str, image_bgr: np.ndarray, label: np.ndarray,
                   chunk: int = 1024) -> None:
    """OME-Zarr (ome-zarr-py; napari, Fiji's MoBIE and OMERO read it): the image as the model
    saw it (uint8; grey where its channels agree) as a multiscale pyramid, halving down to
    ``chunk`` px, and the label image beside it as ``labels/cells`` with the same levels
    (nearest-neighbour), both in ``chunk``-px chunks. Written in a temporary folder, then
    renamed into place."""
    import shutil

    import dask
    import numcodecs
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.scale import Scaler
    from ome_zarr.writer import write_image, write_labels

    grey = image_bgr.ndim == 2 or (np.array_equal(image_bgr[:, :, 0], image_bgr[:, :, 1]) and
                                   np.array_equal(image_bgr[:, :, 0], image_bgr[:, :, 2]))
    image = image_bgr if image_bgr.ndim == 2 else \
        image_bgr[:, :, 0] if grey else np.moveaxis(image_bgr[:, :, ::-1], -1, 0)
    levels = max(1, int(np.ceil(np.log2(max(label.shape) / chunk)))) if max(label.shape) > chunk \
        else 1
    scaler = Scaler(max_layer=levels, method="nearest")
    options = {"chunks": (chunk, chunk) if image.ndim == 2 else (image.shape[0], chunk, chunk)}
    tmp = f"{path}.{os.getpid()}.tmp"
    # Written here, one chunk after another, with single-threaded Blosc: threaded Blosc lays
    # its blocks out in the order they finish, and the bytes would differ from run to run (or
    # the work would go to a Dask cluster the caller is connected to).
    blosc_threads, numcodecs.blosc.use_threads = numcodecs.blosc.use_threads, False
    try:
        with dask.config.set(scheduler="synchronous"):
            root = zarr.group(store=parse_url(tmp, mode="w").store)
            write_image(image, root, axes="yx" if image.ndim == 2 else "cyx", scaler=scaler,
                        storage_options=options)
            write_labels(label, root, name="cells", axes="yx", scaler=scaler,
                         storage_options={"chunks": (chunk, chunk)})
        os.replace(tmp, path)
    finally:
        numcodecs.blosc.use_threads = blosc_threads
        shutil.rmtree(tmp, ignore_errors=True)


def class_colors(metadata, n: int) -> np.ndarray:
    colors = getattr(metadata, "thing_colors", None)
    if colors and len(colors) >= n:
        return np.asarray(colors, np.uint8)[:, ::-1]  # metadata colours are RGB
    return PALETTE[np.arange(n) % len(PALETTE)]


def outlines(image_bgr: np.ndarray, label: np.ndarray, classes: np.ndarray,
             metadata) -> np.ndarray:
    """The image with each cell's one-pixel inner boundary (pixels with a 4-neighbour of
    another label) drawn in its class colour. ``classes`` gives the class of label 1, 2, ..."""
    from skimage.segmentation import find_boundaries

    edge = find_boundaries(label, connectivity=1, mode="inner")
    out = image_bgr.copy()
    lut = np.zeros(len(classes) + 1, np.int64)
    lut[1:] = classes
    out[edge] = class_colors(metadata, int(classes.max(initial=0)) + 1)[lut[label[edge]]]
    return out


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
