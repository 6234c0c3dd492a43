"""Each class's score threshold, chosen where its detections' F1 at mask IoU 0.5 is best on
annotated images: the operating point at which a class's detections are called cells (a
class the model is less sure of, astrocytes, gets a lower one). Detections are matched to
the ground truth as COCO matches them: in score order, each to the unmatched cell it overlaps
most, so the matches above any threshold are those of that threshold alone."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util

GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)  # thresholds tried (a detection counts above)


def matches(gt, results: list, iou: float = 0.5, images=None) -> tuple:
    """({category_id: [(score, matched?)]}, {category_id: ground-truth cells}) over ``images``
    (ids; default: every image of ``gt``, a pycocotools COCO); crowd regions are not cells."""
    by_image = defaultdict(list)
    for r in results:
        by_image[(r["image_id"], r["category_id"])].append(r)
    found, cells = defaultdict(list), defaultdict(int)
    for img in gt.getImgIds() if images is None else images:
        for cat in gt.getCatIds():
            anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[img], catIds=[cat]))
                    if not a.get("iscrowd", 0)]
            cells[cat] += len(anns)
            dets = sorted(by_image.get((img, cat), []), key=lambda r: -r["score"])
            if not dets:
                continue
            taken = np.zeros(len(anns), bool)
            overlaps = mask_util.iou([d["segmentation"] for d in dets],
                                     [gt.annToRLE(a) for a in anns], [0] * len(anns)) \
                if anns else np.zeros((len(dets), 0))
            for d, row in zip(dets, np.asarray(overlaps).reshape(len(dets), len(anns))):
                row = np.where(taken, -1.0, row)
                best = int(row.argmax()) if len(row) else -1
                hit = best >= 0 and row[best] >= iou
                if hit:
                    taken[best] = True
                found[cat].append((d["score"], hit))
    return found, cells


def best_thresholds(gt, results: list, names: list, iou: float = 0.5, images=None) -> dict:
    """{class name: {"thresh", "f1", "precision", "recall"}}: per class, the threshold of GRID
    with the best F1 at mask IoU ``iou`` (the highest of equal ones) on ``images`` (ids; default
    every image of ``gt``); None for a class without cells or detections."""
    return thresholds_of(*matches(gt, results, iou, images), sorted(gt.getCatIds()), names)


def thresholds_of(found: dict, cells: dict, cats: list, names: list) -> dict:
    """best_thresholds from ``matches``' output (classes ``cats``, named ``names``)."""
    out = {}
    for cat, name in zip(cats, names):
        dets = np.array(found.get(cat, []), dtype=float).reshape(-1, 2)
        if cells[cat] == 0 or len(dets) == 0:
            out[name] = None
            continue
        best = None
        for t in GRID:
            above = dets[dets[:, 0] > t]
            tp = above[:, 1].sum()
            precision = tp / len(above) if len(above) else 0.0
            recall = tp / cells[cat]
            f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
            if best is None or f1 >= best["f1"]:
                best = {"thresh": float(t), "f1": float(f1), "precision": float(precision),
                        "recall": float(recall)}
        out[name] = best
    return out


def exponents(thresholds: list, target: float = 0.5) -> np.ndarray:
    """Per class, the exponent that maps its threshold onto ``target`` (s ** e: 0 and 1 stay,
    each class's order is kept): MODEL.YOLACT.TEST_SCORE_THRESH_BY_CLASS's remapping."""
    return np.log(target) / np.log(np.asarray(thresholds, np.float64))


def calibrated(results: list, thresholds: dict) -> list:
    """COCO results with their scores remapped (``exponents``) by ``thresholds`` {category_id:
    threshold}: what the model gives with those thresholds set."""
    cats = sorted(thresholds)
    e = dict(zip(cats, exponents([thresholds[c] for c in cats])))
    return [dict(r, score=float(r["score"] ** e[r["category_id"]])) for r in results]


def held_out_calibration(gt, fold_results: list, fold_images: list, names: list) -> dict:
    """Cross-validated operating points: each fold's detections (on its images, ids in
    ``fold_images``) judged at the thresholds chosen on the other folds' images and detections
    (best_thresholds; 0.5 for a class they cannot place). Returns {class: {"thresholds": per
    fold, "recall", "precision"}} at mask IoU 0.5 (%), pooled over folds."""
    cats = sorted(gt.getCatIds())
    tp, kept, cells = np.zeros(len(cats)), np.zeros(len(cats)), np.zeros(len(cats))
    chosen = {n: [] for n in names}
    # matching is per image, so each fold's is computed once and pooled for the other folds
    per_fold = [matches(gt, results, images=images)
                for results, images in zip(fold_results, fold_images)]
    for f, (found, fold_cells) in enumerate(per_fold):
        others_found, others_cells = defaultdict(list), defaultdict(int)
        for g, (found_g, cells_g) in enumerate(per_fold):
            if g != f:
                for cat in cats:
                    others_found[cat] += found_g.get(cat, [])
                    others_cells[cat] += cells_g[cat]
        best = thresholds_of(others_found, others_cells, cats, names)
        for k, (cat, name) in enumerate(zip(cats, names)):
            cells[k] += fold_cells[cat]
            t = best[name]["thresh"] if best[name] else 0.5
            chosen[name].append(t)
            above = [hit for score, hit in found.get(cat, []) if score > t]
            tp[k] += sum(above)
            kept[k] += len(above)
    return {name: {"thresholds": chosen[name],
                   "recall": float(100 * tp[k] / max(cells[k], 1)),
                   "precision": float(100 * tp[k] / max(kept[k], 1))}
            for k, (cat, name) in enumerate(zip(cats, names))}
