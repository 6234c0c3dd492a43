"""Prediction on image files: overlays, label images, COCO results, Kaggle submission, tables."""
import contextlib
import fnmatch
import glob
import os
import shutil
import sys
import tempfile

import numpy as np
from detectron2.engine import DefaultPredictor
from detectron2.structures import BoxMode
from tqdm import tqdm

from .cells import cell_row, coco_rle, kaggle_rle, paint_labels
from .checkpoint import FittingCheckpointer
from .data.image_io import IMAGE_EXTENSIONS, ImageReadError
from .outputs import outlines, overlay, write_csv, write_image, write_label_tiff, write_rois
from .utils import default_mode, write_json


class InputError(ValueError):
    pass


def output_names(files: list) -> list:
    """One distinct output name per input: its stem, or stem_ext where inputs share a stem
    (x.png, x.tif -> x_png, x_tif), numbered where even that repeats (same name, other folder)."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    names = [s if stems.count(s) == 1 else
             f"{s}_{os.path.splitext(f)[1].lstrip('.').lower()}" for s, f in zip(stems, files)]
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return out


def list_images(spec: str) -> list:
    """A file, a folder (its images, sorted), a glob pattern, or a .txt list of image paths."""
    if spec.endswith(".txt") and os.path.isfile(spec):
        with open(spec) as f:
            files = [line.strip() for line in f if line.strip()]
        if not files:
            raise InputError(f"{spec}: image list is empty")
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise InputError(f"{missing[0]}: image file not found (listed in {spec})")
        return files
    if os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise InputError(f"{spec}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if os.path.isfile(spec):
        return [spec]
    files = sorted(f for f in glob.glob(spec) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise InputError(f"{spec}: no such file, folder or matching images")
    return files


# Everything predict_files writes; --overwrite replaces a folder that holds only these.
OUTPUTS = ("overlays", "labels", "rois", "outlines", "coco_results.json", "images.json", "submission.csv",
           "cells.csv", "counts.csv", "skipped.csv")


def check_output_dir(output_dir: str, overwrite: bool, produced=OUTPUTS) -> None:
    """A folder holding an earlier run is refused, or with ``overwrite`` replaced as a whole
    (never mixed); a folder holding anything but ``produced`` (names or glob patterns of what
    the tool writes) is never replaced."""
    if not os.path.exists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise InputError(f"{output_dir}: output path exists and is not a folder")
    entries = sorted(os.listdir(output_dir))
    if not entries:
        return
    if not overwrite:
        raise InputError(f"{output_dir}: output folder is not empty (an earlier run?); pass "
                         f"--overwrite to replace it, or choose another folder")
    foreign = [e for e in entries if not any(fnmatch.fnmatchcase(e, p) for p in produced)]
    if foreign:
        raise InputError(f"{output_dir}: --overwrite replaces only this tool's outputs, but the "
                         f"folder also holds {foreign[0]!r}; choose another folder")


@contextlib.contextmanager
def staged_dir(output_dir: str):
    """Yield a hidden folder beside ``output_dir``; on success it replaces ``output_dir``
    whole, on any error it is removed, so the output folder is never half-written or mixed."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(os.path.abspath(output_dir))
    stage = tempfile.mkdtemp(prefix=f".{base}.", suffix=".partial", dir=parent)
    try:
        os.chmod(stage, default_mode(directory=True))
        yield stage
        if os.path.exists(output_dir):
            old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
            os.replace(output_dir, os.path.join(old, base))
            os.replace(stage, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, output_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def build_predictor(cfg) -> DefaultPredictor:
    """DefaultPredictor whose weights are loaded by FittingCheckpointer (one-line errors)."""
    weights = cfg.MODEL.WEIGHTS
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(cfg)
    FittingCheckpointer(predictor.model).load(weights)
    return predictor


# Per-image files, chosen with predict_files(save=...): name -> (folder, extension).
SAVE = {"png": ("overlays", "png"), "tif": ("labels", "tif"), "rois": ("rois", "zip"),
        "outlines": ("outlines", "png")}
DEFAULT_SAVE = ("png", "tif")


def predict_files(segmenter, files, read_image, output_dir, metadata, save=DEFAULT_SAVE,
                  overwrite: bool = False, progress=True):
    """Segment ``files`` with ``segmenter`` (tiling.CellSegmenter: cells above its score
    threshold); make them non-overlapping (higher score wins) and write, per image, what
    ``save`` names (see SAVE: overlay PNG, label TIFF, ImageJ ROI zip, outline PNG), and for
    the run coco_results.json, images.json, submission.csv, cells.csv, counts.csv.

    An unreadable image is reported with one warning line and skipped (listed in skipped.csv);
    every other image gets all its outputs, and the tables list exactly those images.
    Returns (counts rows, skipped: [{"file", "reason"}])."""
    unknown = sorted(set(save) - set(SAVE))
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r} (one of {', '.join(SAVE)})")
    check_output_dir(output_dir, overwrite)
    class_names = list(metadata.thing_classes)
    to_dataset_id = {v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id",
                                              {i + 1: i for i in range(len(class_names))}).items()}
    results, images, submission, cells_rows, counts, skipped = [], [], [], [], [], []
    with staged_dir(output_dir) as stage:
        for key in save:
            os.makedirs(os.path.join(stage, SAVE[key][0]))
        bar = tqdm(list(zip(files, output_names(files))), desc="predicting", unit="img",
                   disable=not progress)
        for path, name in bar:
            try:
                image = read_image(path)
            except ImageReadError as e:
                bar.write(f"warning: skipped {e}", file=sys.stderr)
                skipped.append({"file": path, "reason": str(e)})
                continue
            height, width = image.shape[:2]
            label, cells = paint_labels(segmenter(image), (height, width))
            classes = np.array([c.cls for c in cells], np.int64)

            def out(key, name=name):
                folder, ext = SAVE[key]
                return os.path.join(stage, folder, f"{name}.{ext}")

            one_tile = segmenter.fits_one_tile(height, width)
            drawn = (outlines(image, label, classes, metadata)
                     if "outlines" in save or ("png" in save and not one_tile) else None)
            if "png" in save:
                write_image(out("png"), overlay(image, cells, metadata) if one_tile else drawn)
            if "outlines" in save:
                write_image(out("outlines"), drawn)
            if "tif" in save:
                write_label_tiff(out("tif"), label)
            if "rois" in save:
                write_rois(out("rois"), cells)
            image_id = len(images)
            images.append({"id": image_id, "file_name": os.path.abspath(path), "output_name": name,
                           "height": height, "width": width})
            xywh = BoxMode.convert(np.array([c.box for c in cells]).reshape(-1, 4),
                                   BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
            results += [{"image_id": image_id, "category_id": to_dataset_id[c.cls],
                         "score": c.score, "bbox": [float(v) for v in b],
                         "segmentation": coco_rle(c, height, width)} for c, b in zip(cells, xywh)]
            submission += [{"id": name, "predicted": kaggle_rle(c, height, width)}
                           for c in cells] or [{"id": name, "predicted": ""}]
            cells_rows += [{"image": name, "cell_id": i, "class": class_names[c.cls], **cell_row(c)}
                           for i, c in enumerate(cells, start=1)]
            row = {"image": name, "file": path, "cells": len(cells)}
            row.update({f"n_{c}": int(np.sum(classes == k)) for k, c in enumerate(class_names)})
            row["confluence"] = round(float(np.count_nonzero(label)) / label.size, 4)
            counts.append(row)
        if not images:
            raise InputError(skipped[0]["reason"] if len(files) == 1 else
                             f"none of the {len(files)} input images could be read; nothing "
                             f"written to {output_dir}")
        write_json(os.path.join(stage, "coco_results.json"), results)
        write_json(os.path.join(stage, "images.json"), images)
        write_csv(os.path.join(stage, "submission.csv"), submission, ["id", "predicted"])
        write_csv(os.path.join(stage, "cells.csv"), cells_rows,
                  ["image", "cell_id", "class", "score", "area_px", "centroid_x", "centroid_y",
                   "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"])
        write_csv(os.path.join(stage, "counts.csv"), counts,
                  ["image", "file", "cells", *[f"n_{c}" for c in class_names], "confluence"])
        if skipped:
            write_csv(os.path.join(stage, "skipped.csv"), skipped, ["file", "reason"])
    return counts, skipped
