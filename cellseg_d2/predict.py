"""Prediction on image files: overlays, label images, COCO results, Kaggle submission, tables."""
import csv
import glob
import os

import cv2
import numpy as np
import torch
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from .data.image_io import IMAGE_EXTENSIONS
from .data.rle import rle_encode
from .evaluation.box_rle import encode_instance_masks
from .evaluation.kaggle_metric import remove_overlaps
from .utils import atomic_open, write_json


class InputError(ValueError):
    pass


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


def label_image(masks: np.ndarray) -> np.ndarray:
    """(n, H, W) non-overlapping masks -> uint16 label image, 0 background, 1..n cells."""
    h, w = masks.shape[1:] if len(masks) else (0, 0)
    label = np.zeros((h, w), np.uint16)
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


def coco_results(image_id: int, masks, classes, scores, boxes) -> list:
    out = []
    rles = encode_instance_masks(masks, boxes)
    for rle, c, s, b in zip(rles, classes, scores, boxes):
        x0, y0, x1, y1 = (float(v) for v in b)
        out.append({"image_id": image_id, "category_id": int(c) + 1, "score": float(s),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rle})
    return out


def write_csv(path: str, rows: list, fields: list) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def predict_files(predictor, files, read_image, output_dir, class_names, metadata,
                  score_thresh: float = 0.5, progress=True):
    """Run ``predictor`` (DefaultPredictor) on ``files``; keep detections scoring above
    ``score_thresh``, made non-overlapping (higher score wins); write per-image overlay / label
    TIFF and the run's coco_results.json, submission.csv, cells.csv, counts.csv. Returns counts."""
    os.makedirs(os.path.join(output_dir, "overlays"), exist_ok=True)
    os.makedirs(os.path.join(output_dir, "labels"), exist_ok=True)
    results, images, submission, cells, counts = [], [], [], [], []
    for image_id, path in enumerate(tqdm(files, desc="predicting", unit="img", disable=not progress)):
        name = os.path.splitext(os.path.basename(path))[0]
        image = read_image(path)
        inst = predictor(image)["instances"].to("cpu")
        inst = inst[inst.scores > score_thresh]
        masks, keep = remove_overlaps(inst.pred_masks, inst.scores.numpy(), inst.pred_boxes.tensor)
        masks = masks.numpy()
        classes = inst.pred_classes.numpy()[keep]
        scores = inst.scores.numpy()[keep]
        write_image(os.path.join(output_dir, "overlays", f"{name}.png"),
                    overlay(image, inst[torch.from_numpy(keep)], metadata))
        write_image(os.path.join(output_dir, "labels", f"{name}.tif"), label_image(masks))
        images.append({"id": image_id, "file_name": os.path.abspath(path),
                       "height": image.shape[0], "width": image.shape[1]})
        results += coco_results(image_id, masks, classes, scores, inst.pred_boxes.tensor.numpy()[keep])
        submission += [{"id": name, "predicted": rle_encode(m)} for m in masks] or \
            [{"id": name, "predicted": ""}]
        cells += cell_rows(name, masks, classes, scores, class_names)
        row = {"image": name, "cells": len(masks)}
        row.update({f"n_{c}": int(np.sum(classes == k)) for k, c in enumerate(class_names)})
        covered = masks.any(axis=0).mean() if len(masks) else 0.0
        row["confluence"] = round(float(covered), 4)
        counts.append(row)
    write_json(os.path.join(output_dir, "coco_results.json"), results)
    write_json(os.path.join(output_dir, "images.json"), images)
    write_csv(os.path.join(output_dir, "submission.csv"), submission, ["id", "predicted"])
    write_csv(os.path.join(output_dir, "cells.csv"), cells,
              ["image", "cell_id", "class", "score", "area_px", "centroid_x", "centroid_y",
               "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"])
    write_csv(os.path.join(output_dir, "counts.csv"), counts,
              ["image", "cells", *[f"n_{c}" for c in class_names], "confluence"])
    return counts
