"""Prediction on image files: overlays, label images, COCO results, Kaggle submission, tables."""
import contextlib
import glob
import os
import shutil
import sys

import numpy as np
from detectron2.engine import DefaultPredictor
from detectron2.structures import BoxMode
from tqdm import tqdm

from .cells import (
    cell_row,
    coco_rle,
    kaggle_rle,
    label_dtype,
    label_source,
    non_overlapping,
    windows,
)
from .checkpoint import FittingCheckpointer
from .config import inference_scale
from .data.image_io import IMAGE_EXTENSIONS, ImageReadError, is_ome_zarr
from .data.mapper import ScaleBy
from .data.regions import RegionReader, ScaledRegions
from .modeling.test_time_augmentation import with_test_time_policy
from .ome_zarr_output import write_ome_zarr
from .outputs import (
    outline_bands,
    outlines,
    overlay,
    write_csv,
    write_image,
    write_label_tiff,
    write_label_tiff_tiles,
    write_png_bands,
    write_rois,
)
from .run_folder import check_output_dir, staged_run
from .utils import printable, write_json


class InputError(ValueError):
    pass


def output_names(files: list) -> list:
    """One distinct output name per input: its stem, or stem_ext where inputs share a stem
    (x.png, x.tif -> x_png, x_tif), numbered where even that repeats (same name, other folder).
    Bytes of a name that are not UTF-8 become %XX (utils.printable)."""
    stems = [printable(os.path.splitext(os.path.basename(f))[0]) for f in files]
    names = [s if stems.count(s) == 1 else
             f"{s}_{os.path.splitext(f)[1].lstrip('.').lower()}" for s, f in zip(stems, files)]
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return out


def skip_reason(path, error: Exception) -> str:
    """The one line that says why an image was skipped (skipped.csv, the warning)."""
    return str(error) if isinstance(error, ImageReadError) else \
        f"{printable(path)}: {type(error).__name__}: {error}"


def list_images(spec: str) -> list:
    """A file (or an OME-Zarr image folder), a folder (its images, sorted), a glob pattern, or
    a .txt list of image paths."""
    if spec.endswith(".txt") and os.path.isfile(spec):
        with open(spec) as f:
            files = [line.strip() for line in f if line.strip()]
        if not files:
            raise InputError(f"{printable(spec)}: image list is empty")
        missing = [f for f in files if not (os.path.isfile(f) or is_ome_zarr(f))]
        if missing:
            raise InputError(f"{printable(missing[0])}: image file not found (listed in "
                             f"{printable(spec)})")
        return files
    if is_ome_zarr(spec):
        return [spec.rstrip(os.sep) or spec]
    if os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                       if f.lower().endswith(IMAGE_EXTENSIONS) or
                       is_ome_zarr(os.path.join(spec, f)))
        if not files:
            raise InputError(f"{printable(spec)}: folder has no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if os.path.isfile(spec):
        return [spec]
    files = sorted(f for f in glob.glob(spec) if f.lower().endswith(IMAGE_EXTENSIONS) or
                   is_ome_zarr(f))
    if not files:
        raise InputError(f"{printable(spec)}: no such file, folder or matching images")
    return files


class CellPredictor(DefaultPredictor):
    """Detectron2's DefaultPredictor (``predictor(bgr_image)["instances"]``), resizing every
    image by config.inference_scale (the scale the model was trained at, whatever the image's
    size) instead of ResizeShortestEdge, with its weights loaded by FittingCheckpointer (a
    checkpoint that does not fit the model is one error line), and the config's test-time
    policy (modeling.test_time_augmentation). Images far larger than the
    training images: tiling.CellSegmenter cuts them into tiles for it."""

    def __init__(self, cfg):
        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.MODEL.WEIGHTS = ""
        super().__init__(cfg)
        FittingCheckpointer(self.model).load(weights)
        self.model = with_test_time_policy(cfg, self.model)
        self.aug = ScaleBy(inference_scale(cfg))

    def __call__(self, image, scale: float = None):
        """Detectron2's outputs for one BGR image; ``scale`` replaces the training scale for
        this image (an image of larger or smaller cells: tiling.CellSegmenter's diameter)."""
        if scale is None:
            return super().__call__(image)
        default, self.aug = self.aug, ScaleBy(scale)
        try:
            return super().__call__(image)
        finally:
            self.aug = default


# Per-image files, chosen with predict_files(save=...): name -> (folder, extension).
SAVE = {"png": ("overlays", "png"), "tif": ("labels", "tif"), "rois": ("rois", "zip"),
        "outlines": ("outlines", "png"), "zarr": ("zarr", "zarr")}
DEFAULT_SAVE = ("png", "tif")


def predict_files(segmenter, files, read_image, output_dir, metadata, save=DEFAULT_SAVE,
                  overwrite: bool = False, progress=True, tool: str = "tools/predict.py",
                  cluster=None):
    """Segment ``files`` with ``segmenter`` (tiling.CellSegmenter: cells above its score
    threshold); make them non-overlapping (higher score wins) and write, per image, what
    ``save`` names (see SAVE: overlay PNG, label TIFF, ImageJ ROI zip, outline PNG), and for
    the run coco_results.json, images.json, submission.csv, cells.csv, counts.csv.

    The output folder must be new, empty, or (with ``overwrite``) hold only this tool's earlier
    run (run_folder); the run is staged and moved into place at the end. An image that cannot
    be read or segmented, for whatever reason, is reported with one warning line and skipped
    (listed in skipped.csv); every other image gets all its outputs, and the tables list
    exactly those images. ``cluster`` (cluster.ClusterSegmentation) segments the images on a
    Dask cluster instead, every image's tasks submitted first; the outputs are the same.
    Returns (counts rows, skipped: [{"file", "reason"}])."""
    unknown = sorted(set(save) - set(SAVE))
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r} (one of {', '.join(SAVE)})")
    check_output_dir(output_dir, tool, overwrite)
    class_names = list(metadata.thing_classes)
    to_dataset_id = {v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id",
                                              {i + 1: i for i in range(len(class_names))}).items()}
    run = {"results": [], "images": [], "submission": [], "cells": [], "counts": []}
    skipped = []
    with staged_run(output_dir, tool) as stage:
        for key in save:
            os.makedirs(os.path.join(stage, SAVE[key][0]))
        if cluster is not None:
            cluster.submit(files)
        bar = tqdm(list(zip(files, output_names(files))), desc="predicting", unit="img",
                   disable=not progress)
        for index, (path, name) in enumerate(bar):
            written = []
            try:
                cells_of = None if cluster is None else (lambda i=index: cluster.cells_of(i))
                rows = _predict_image(segmenter, read_image, path, name, stage, save, metadata,
                                      to_dataset_id, len(run["images"]), written, cells_of)
            except Exception as e:  # one image's failure, whatever it is, is not the run's
                for f in written:
                    with contextlib.suppress(OSError):
                        if os.path.isdir(f):
                            shutil.rmtree(f)
                        else:
                            os.remove(f)
                reason = skip_reason(path, e)
                bar.write(f"warning: skipped {reason}", file=sys.stderr)
                skipped.append({"file": printable(path), "reason": reason})
                continue
            for key, value in rows.items():
                run[key] += value
        if not run["images"]:
            raise InputError(skipped[0]["reason"] if len(files) == 1 else
                             f"none of the {len(files)} input images could be read; nothing "
                             f"written to {output_dir}")
        write_json(os.path.join(stage, "coco_results.json"), run["results"])
        write_json(os.path.join(stage, "images.json"), run["images"])
        write_csv(os.path.join(stage, "submission.csv"), run["submission"], ["id", "predicted"])
        write_csv(os.path.join(stage, "cells.csv"), run["cells"],
                  ["image", "cell_id", "class", "score", "area_px", "centroid_x", "centroid_y",
                   "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"])
        write_csv(os.path.join(stage, "counts.csv"), run["counts"],
                  ["image", "file", "cells", *[f"n_{c}" for c in class_names], "confluence",
                   "diameter_px"])
        if skipped:
            write_csv(os.path.join(stage, "skipped.csv"), skipped, ["file", "reason"])
    return run["counts"], skipped


def _predict_image(segmenter, read_image, path, name, stage, save, metadata, to_dataset_id,
                   image_id, written, cells_of=None) -> dict:
    """Segment one image (or take its cells, and the diameter segmented for, from
    ``cells_of()``) and write its files (their paths appended to ``written`` as they appear);
    returns its rows of the run's tables. An image larger than one tile (a whole well) is read
    by region (data.regions) and its files written piece by piece: it is never in memory whole,
    nor is its label image."""
    reader = RegionReader(path)
    try:
        height, width = reader.shape[:2]
        one_tile = segmenter.fits_one_tile(height, width)
        image = read_image(path) if one_tile else ScaledRegions(reader)
        if cells_of is None:
            found = segmenter(image)
            diameter = getattr(segmenter, "last_diameter", None)
        else:
            found, diameter = cells_of()
        cells = non_overlapping(found, (height, width))
        classes = np.array([c.cls for c in cells], np.int64)

        def out(key):
            folder, ext = SAVE[key]
            written.append(os.path.join(stage, folder, f"{name}.{ext}"))
            return written[-1]

        _write_image_files(image, cells, classes, metadata, save, out, one_tile)
    finally:
        reader.close()
    class_names = list(metadata.thing_classes)
    xywh = BoxMode.convert(np.array([c.box for c in cells]).reshape(-1, 4),
                           BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    counts = {"image": name, "file": printable(path), "cells": len(cells)}
    counts.update({f"n_{c}": int(np.sum(classes == k)) for k, c in enumerate(class_names)})
    counts["confluence"] = round(sum(c.area for c in cells) / (height * width), 4)
    # The cell diameter the image was segmented for: --diameter, its estimate, or the model's.
    counts["diameter_px"] = round(diameter, 2) if diameter else ""
    return {
        "images": [{"id": image_id, "file_name": printable(os.path.abspath(path)),
                    "output_name": name, "height": height, "width": width}],
        "results": [{"image_id": image_id, "category_id": to_dataset_id[c.cls],
                     "score": c.score, "bbox": [float(v) for v in b],
                     "segmentation": coco_rle(c, height, width)} for c, b in zip(cells, xywh)],
        "submission": [{"id": name, "predicted": kaggle_rle(c, height, width)}
                       for c in cells] or [{"id": name, "predicted": ""}],
        "cells": [{"image": name, "cell_id": i, "class": class_names[c.cls], **cell_row(c)}
                  for i, c in enumerate(cells, start=1)],
        "counts": [counts],
    }


TILE_PX = 512  # label TIFF tiles and outline bands of an image larger than one tile


def _write_image_files(image, cells, classes, metadata, save, out, one_tile: bool) -> None:
    """An image's files (``save``; ``out(key)`` names each) from its non-overlapping cells:
    ``image`` is an array where it fits one tile (overlay PNG drawn by Detectron2's
    Visualizer), else data.regions.ScaledRegions, read and written piece by piece (overlay
    and outline PNG both the outlines, the label TIFF tiled)."""
    height, width = image.shape[:2]
    label_of = label_source(cells)
    dtype = label_dtype(len(cells))
    if one_tile:
        label = label_of(0, height, 0, width)
        if "png" in save:
            write_image(out("png"), overlay(image, cells, metadata))
        if "outlines" in save:
            write_image(out("outlines"), outlines(image, label, classes, metadata))
        if "tif" in save:
            write_label_tiff(out("tif"), label)
    else:
        for key in ("png", "outlines"):
            if key in save:
                write_png_bands(out(key), outline_bands(image, cells, classes, metadata,
                                                        TILE_PX), height, width)
        if "tif" in save:
            tiles = (label_of(y0, y1, x0, x1)
                     for y0, x0, y1, x1 in windows((height, width), TILE_PX))
            write_label_tiff_tiles(out("tif"), tiles, (height, width), dtype, TILE_PX)
    if "rois" in save:
        write_rois(out("rois"), cells)
    if "zarr" in save:
        write_ome_zarr(out("zarr"), (height, width), lambda y0, y1, x0, x1: image[y0:y1, x0:x1],
                       label_of, dtype)
