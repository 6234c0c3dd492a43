"""Cross-validation scored as one evaluation: every fold's detections on its own validation
images, pooled and scored against the ground truth of all the images (each image validated
once), with each class's recall at the prediction threshold and per-image counts."""
from __future__ import annotations

import os
from collections import Counter

from .files import ScoringError, agnostic, coco_metrics, kaggle_metric
from .per_class import evaluate_coco


def pool_folds(fold_results: list, fold_images: list) -> list:
    """One results list from each fold's (results, validation image ids); an image validated
    by two folds, or a fold's detection on an image it did not validate, is an error."""
    seen, pooled = {}, []
    for f, (results, images) in enumerate(zip(fold_results, fold_images)):
        for i in images:
            if i in seen:
                raise ScoringError(f"image {i} is validated by folds {seen[i]} and {f}")
            seen[i] = f
        stray = {r["image_id"] for r in results} - set(images)
        if stray:
            raise ScoringError(f"fold {f} has detections on image {min(stray)}, which it did "
                               f"not validate")
        pooled += results
    return pooled


def recall_at(gt, results: list, thresh: float, names: list, max_dets: int) -> dict:
    """Per-class recall (%) at IoU 0.5 of the detections scoring above ``thresh`` (the cells
    a user gets from predict), COCO matching, every area, up to ``max_dets``."""
    kept = [r for r in results if r["score"] > thresh]
    cat_ids = sorted(gt.getCatIds())
    if not kept:
        return dict.fromkeys(names, 0.0)
    e = evaluate_coco(gt, kept, "segm", (1, 10, max_dets))
    recall = e.eval["recall"][0, :, 0, -1]  # IoU 0.5, area all, the last maxDets
    return {n: float(max(recall[cat_ids.index(c)], 0.0) * 100) for n, c in zip(names, cat_ids)}


def agnostic_recall_at(gt, results: list, thresh: float, names: list, max_dets: int) -> dict:
    """For each class, the recall (%) at IoU 0.5 of its images' cells by detections of any
    class above ``thresh``: a cell found but typed wrong counts here, not in recall_at."""
    kept = [r for r in results if r["score"] > thresh]
    if not kept:
        return dict.fromkeys(names, 0.0)
    merged_gt, merged = agnostic(gt, kept)
    out = {}
    for cat, name in zip(sorted(gt.getCatIds()), names):
        images = sorted({a["image_id"] for a in gt.loadAnns(gt.getAnnIds(catIds=[cat]))})
        e = evaluate_coco(merged_gt, merged, "segm", (1, 10, max_dets), img_ids=images)
        out[name] = float(max(e.eval["recall"][0, 0, 0, -1], 0.0) * 100)
    return out


def per_image_counts(gt, results: list, thresh: float, names: list) -> list:
    """For each image: its cell type(s), ground-truth cells and detections above ``thresh``
    by predicted class."""
    cat_name = dict(zip(sorted(gt.getCatIds()), names))
    found = Counter((r["image_id"], r["category_id"]) for r in results if r["score"] > thresh)
    rows = []
    for img in gt.loadImgs(sorted(gt.getImgIds())):
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[img["id"]]))
        types = sorted({cat_name[a["category_id"]] for a in anns})
        row = {"image": os.path.basename(img.get("file_name", str(img["id"]))),
               "type": "+".join(types),
               "gt_cells": len(anns)}
        row.update({f"found_{n}": found[(img["id"], c)] for c, n in cat_name.items()})
        row["found"] = sum(row[f"found_{n}"] for n in names)
        rows.append(row)
    return rows


def cross_validation_report(gt, results: list, thresh: float, max_dets: int = 1000) -> dict:
    """{"segm": metrics, "bbox": metrics, "kaggle": .., "recall_at_thresh": {class: %},
    "agnostic_recall": {threshold: {class: %}}, "per_image": rows} of pooled fold results
    against ``gt`` (every image's truth)."""
    names = [c["name"] for c in gt.loadCats(sorted(gt.getCatIds()))]
    report = {}
    for task in ("segm", "bbox"):
        report[task], _ = coco_metrics(gt, results, task, (1, 10, max_dets), names)
    report["kaggle"] = kaggle_metric(gt, results, thresh, names)
    report["recall_at_thresh"] = recall_at(gt, results, thresh, names, max_dets)
    # Where a class's cells are lost: typed wrong (agnostic recall above the class's), scored
    # low (recall rising at lower thresholds), or not found at all.
    report["agnostic_recall"] = {f"{t:g}": agnostic_recall_at(gt, results, t, names, max_dets)
                                 for t in sorted({0.1, 0.3, thresh})}
    report["per_image"] = per_image_counts(gt, results, thresh, names)
    report["thresh"] = thresh
    return report
