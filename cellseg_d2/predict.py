"""Prediction on image files: overlays, label images, COCO results, Kaggle submission, tables."""
import contextlib
import csv
import fnmatch
import glob
import os
import shutil
import sys
import tempfile

import cv2
import numpy as np
import torch
from detectron2.engine import DefaultPredictor
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from .checkpoint import FittingCheckpointer
from .data.image_io import IMAGE_EXTENSIONS, ImageReadError
from .data.rle import rle_encode
from .evaluation.box_rle import encode_instance_masks
from .evaluation.kaggle_metric import remove_overlaps
from .utils import atomic_open, default_mode, write_json


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


def write_image(path: str, image: np.ndarray) -> None:
    ext = os.path.splitext(path)[1]
    ok, data = cv2.imencode(ext, image)
    if not ok:
        raise OSError(f"{path}: could not encode image")
    with atomic_open(path, "wb") as f:
        f.write(data.tobytes())


def label_image(masks: np.ndarray, shape: tuple) -> np.ndarray:
    """(n, H, W) non-overlapping masks -> (H, W) uint16 label image, 0 background, 1..n cells."""
    label = np.zeros(shape, np.uint16)
    for i, m in enumerate(masks):
        label[m] = i + 1
    return label


def cell_rows(image_name, masks, classes, scores, class_names) -> list:
    rows = []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        rows.append({"image": image_name, "cell_id": i + 1, "class": class_names[classes[i]],
                     "score": round(float(scores[i]), 4), "area_px": int(len(ys)),
                     "centroid_x": round(float(xs.mean()), 2), "centroid_y": round(float(ys.mean()), 2),
                     "bbox_x0": int(xs.min()), "bbox_y0": int(ys.min()),
                     "bbox_x1": int(xs.max()) + 1, "bbox_y1": int(ys.max()) + 1})
    return rows


def overlay(image_bgr, instances, metadata) -> np.ndarray:
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    return vis.draw_instance_predictions(instances.to("cpu")).get_image()[:, :, ::-1]


def coco_results(image_id: int, masks, classes, scores, boxes, category_ids) -> list:
    out = []
    rles = encode_instance_masks(masks, boxes)
    xywh = BoxMode.convert(np.asarray(boxes, np.float64).reshape(-1, 4), BoxMode.XYXY_ABS,
                           BoxMode.XYWH_ABS)
    for rle, c, s, b in zip(rles, classes, scores, xywh):
        out.append({"image_id": image_id, "category_id": category_ids[int(c)], "score": float(s),
                    "bbox": [float(v) for v in b], "segmentation": rle})
    return out


def write_csv(path: str, rows: list, fields: list) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# Everything predict_files writes; --overwrite replaces a folder that holds only these.
OUTPUTS = ("overlays", "labels", "coco_results.json", "images.json", "submission.csv",
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


def predict_image(predictor, image, score_thresh):
    """Detections above ``score_thresh`` made non-overlapping (higher score wins).
    Returns (instances kept, their masks as an (n, H, W) bool array)."""
    inst = predictor(image)["instances"].to("cpu")
    inst = inst[inst.scores > score_thresh]
    if not inst.has("pred_masks"):
        inst.pred_masks = torch.zeros((len(inst), *image.shape[:2]), dtype=torch.bool)
    masks, keep = remove_overlaps(inst.pred_masks, inst.scores.numpy(), inst.pred_boxes.tensor)
    inst = inst[torch.from_numpy(keep)]
    inst.pred_masks = masks  # the overlay shows exactly the cells of the label image
    return inst, masks.numpy()


def predict_files(predictor, files, read_image, output_dir, metadata, score_thresh: float = 0.5,
                  overwrite: bool = False, progress=True):
    """Run ``predictor`` (DefaultPredictor) on ``files``; keep detections scoring above
    ``score_thresh``, made non-overlapping (higher score wins); write per-image overlay / label
    TIFF and the run's coco_results.json, images.json, submission.csv, cells.csv, counts.csv.

    An unreadable image is reported with one warning line and skipped (listed in skipped.csv);
    every other image gets all its outputs, and the tables list exactly those images.
    Returns (counts rows, skipped: [{"file", "reason"}])."""
    check_output_dir(output_dir, overwrite)
    class_names = list(metadata.thing_classes)
    to_dataset_id = {v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id",
                                              {i + 1: i for i in range(len(class_names))}).items()}
    results, images, submission, cells, counts, skipped = [], [], [], [], [], []
    with staged_dir(output_dir) as stage:
        for sub in ("overlays", "labels"):
            os.makedirs(os.path.join(stage, sub))
        bar = tqdm(list(zip(files, output_names(files))), desc="predicting", unit="img",
                   disable=not progress)
        for path, name in bar:
            try:
                image = read_image(path)
            except ImageReadError as e:
                bar.write(f"warning: skipped {e}", file=sys.stderr)
                skipped.append({"file": path, "reason": str(e)})
                continue
            inst, masks = predict_image(predictor, image, score_thresh)
            classes, scores = inst.pred_classes.numpy(), inst.scores.numpy()
            image_id = len(images)
            write_image(os.path.join(stage, "overlays", f"{name}.png"),
                        overlay(image, inst, metadata))
            write_image(os.path.join(stage, "labels", f"{name}.tif"),
                        label_image(masks, image.shape[:2]))
            images.append({"id": image_id, "file_name": os.path.abspath(path), "output_name": name,
                           "height": image.shape[0], "width": image.shape[1]})
            results += coco_results(image_id, masks, classes, scores,
                                    inst.pred_boxes.tensor.numpy(), to_dataset_id)
            submission += [{"id": name, "predicted": rle_encode(m)} for m in masks] or \
                [{"id": name, "predicted": ""}]
            cells += cell_rows(name, masks, classes, scores, class_names)
            row = {"image": name, "file": path, "cells": len(masks)}
            row.update({f"n_{c}": int(np.sum(classes == k)) for k, c in enumerate(class_names)})
            covered = masks.any(axis=0).mean() if len(masks) else 0.0
            row["confluence"] = round(float(covered), 4)
            counts.append(row)
        if not images:
            raise InputError(skipped[0]["reason"] if len(files) == 1 else
                             f"none of the {len(files)} input images could be read; nothing "
                             f"written to {output_dir}")
        write_json(os.path.join(stage, "coco_results.json"), results)
        write_json(os.path.join(stage, "images.json"), images)
        write_csv(os.path.join(stage, "submission.csv"), submission, ["id", "predicted"])
        write_csv(os.path.join(stage, "cells.csv"), cells,
                  ["image", "cell_id", "class", "score", "area_px", "centroid_x", "centroid_y",
                   "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"])
        write_csv(os.path.join(stage, "counts.csv"), counts,
                  ["image", "file", "cells", *[f"n_{c}" for c in class_names], "confluence"])
        if skipped:
            write_csv(os.path.join(stage, "skipped.csv"), skipped, ["file", "reason"])
    return counts, skipped
