"""Scoring of results files from any tool (tools/evaluate.py): COCO results JSON or a folder of
label images against a COCO ground-truth JSON, with the metrics training reports: COCO bbox /
segm AP overall and per class at any maxDets (faster-coco-eval) and the Kaggle metric."""
from __future__ import annotations

import os

import cv2
import numpy as np
from tqdm import tqdm

from ..cells import Cell, cells_from_label, coco_rle, paint_labels, tight
from ..data.coco_input import read_coco, read_json
from ..data.mapper import annotation_rles
from .kaggle_metric import score_cells
from .per_class import METRICS, evaluate_coco, per_class_metrics

LABEL_EXTENSIONS = (".tif", ".tiff", ".png")


class ScoringError(ValueError):
    pass


def load_json(path: str, what: str):
    return read_json(path, what, ScoringError)


def load_ground_truth(path: str):
    """faster-coco-eval COCO of a COCO instances JSON, checked for what scoring reads."""
    from faster_coco_eval import COCO

    data = read_coco(path, "ground truth", ScoringError)
    for i, im in enumerate(data["images"]):
        missing = [k for k in ("id", "height", "width") if k not in im]
        if missing:
            raise ScoringError(f"{path}: images[{i}] has no {missing[0]!r}")
    for i, a in enumerate(data["annotations"]):
        missing = [k for k in ("image_id", "category_id", "segmentation", "bbox") if k not in a]
        if missing:
            raise ScoringError(f"{path}: annotations[{i}] (id {a.get('id')}) has no {missing[0]!r}")
        a.setdefault("iscrowd", 0)
    return COCO(data)


def check_results(results, gt, path: str) -> list:
    if not isinstance(results, list):
        raise ScoringError(f"{path}: a COCO results file is a list of detections")
    images, cats = set(gt.getImgIds()), set(gt.getCatIds())
    for i, r in enumerate(results):
        missing = [k for k in ("image_id", "category_id", "score", "segmentation") if k not in r]
        if missing:
            raise ScoringError(f"{path}: detection {i} has no {missing[0]!r}")
        if r["image_id"] not in images:
            raise ScoringError(f"{path}: detection {i} has image_id {r['image_id']}, not an image "
                               f"of the ground truth")
        if r["category_id"] not in cats:
            raise ScoringError(f"{path}: detection {i} has category_id {r['category_id']}, not a "
                               f"category of the ground truth ({sorted(cats)})")
    return results


def find_label_file(folder: str, file_name: str, files: list) -> str:
    """The label image of ``file_name`` in ``folder``: same stem, or the stem followed by
    '_' and a suffix (Cellpose writes <stem>_cp_masks.tif)."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    exact = [f for f in files if os.path.splitext(f)[0] == stem]
    found = exact or [f for f in files if os.path.splitext(f)[0].startswith(stem + "_")]
    if not found:
        raise ScoringError(f"{folder}: no label image for {file_name} (expected {stem}.tif, "
                           f"{stem}.png or {stem}_*.tif)")
    if len(found) > 1:
        raise ScoringError(f"{folder}: several label images for {file_name}: "
                           f"{', '.join(sorted(found))}")
    return os.path.join(folder, found[0])


def read_label(path: str, height: int, width: int) -> np.ndarray:
    if path.lower().endswith((".tif", ".tiff")):
        import tifffile

        try:
            label = tifffile.imread(path)
        except Exception as e:  # tifffile raises several types for unreadable files
            raise ScoringError(f"{path}: not a readable TIFF ({e})") from None
    else:
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if label is None:
            raise ScoringError(f"{path}: not a readable image")
    label = np.squeeze(label)
    if label.shape != (height, width) or not np.issubdtype(label.dtype, np.integer):
        raise ScoringError(f"{path}: expected a {height}x{width} integer label image, got "
                           f"{'x'.join(map(str, label.shape))} {label.dtype}")
    return label


def results_from_labels(folder: str, gt, progress: bool = True) -> list:
    """COCO results from label images (each labelled region one detection, score 1). A cell
    takes its image's ground-truth class where the image has one (as in Sartorius and
    LIVECell, one cell type per image); otherwise scoring must be class-agnostic."""
    if not os.path.isdir(folder):
        raise ScoringError(f"{folder}: results are neither a JSON file nor a folder of label images")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(LABEL_EXTENSIONS))
    results = []
    for img in tqdm(gt.loadImgs(gt.getImgIds()), desc="reading labels", unit="img",
                    disable=not progress):
        h, w = img["height"], img["width"]
        label = read_label(find_label_file(folder, img.get("file_name", str(img["id"])), files), h, w)
        classes = {a["category_id"] for a in gt.loadAnns(gt.getAnnIds(imgIds=[img["id"]]))}
        cat = classes.pop() if len(classes) == 1 else min(gt.getCatIds())
        for c in cells_from_label(label.astype(np.int64, copy=False)):
            x0, y0, x1, y1 = c.bounds
            results.append({"image_id": img["id"], "category_id": cat, "score": 1.0,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "segmentation": coco_rle(c, h, w)})
    return results


def images_mix_classes(gt) -> bool:
    return any(len({a["category_id"] for a in gt.loadAnns(gt.getAnnIds(imgIds=[i]))}) > 1
               for i in gt.getImgIds())


def agnostic(gt, results: list):
    """Ground truth and results with every category merged into one, "cell"."""
    from faster_coco_eval import COCO

    data = dict(gt.dataset)
    data["annotations"] = [dict(a, category_id=1) for a in data["annotations"]]
    data["categories"] = [{"id": 1, "name": "cell"}]
    return COCO(data), [dict(r, category_id=1) for r in results]


def coco_metrics(gt, results: list, iou_type: str, max_dets: int, names: list):
    """Training's metrics for one task: {"AP": .., "AP-<class>": .., ...} in %, and the
    per-class table."""
    if not results:
        raise ScoringError("no detections to score")
    e = evaluate_coco(gt, results, iou_type, (1, 10, max_dets))
    metrics = {m: float(e.stats[i] * 100) if e.stats[i] >= 0 else float("nan")
               for i, m in enumerate(METRICS)}
    table = per_class_metrics(e.eval["precision"], e.params.iouThrs, names)
    for name, values in table.items():
        for m, v in values.items():
            metrics[f"{m}-{name}"] = v
    return metrics, table


def kaggle_metric(gt, results: list, score_thresh: float, names: list) -> dict:
    """The competition metric (see kaggle_metric.py) of results above ``score_thresh``, made
    non-overlapping (higher score wins), overall and per class, in %."""
    by_image = {}
    for r in results:
        if r["score"] > score_thresh:
            by_image.setdefault(r["image_id"], []).append(r)
    cat_ids = sorted(gt.getCatIds())
    overall, per_class = [], {c: [] for c in cat_ids}
    for img in gt.loadImgs(sorted(gt.getImgIds())):
        h, w = img["height"], img["width"]
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[img["id"]])) if not a["iscrowd"]]
        gt_rles = annotation_rles(anns, h, w)
        gt_cats = np.array([a["category_id"] for a in anns], np.int64)
        cells = []
        for r in by_image.get(img["id"], []):
            cut = tight(rle_mask(r["segmentation"], h, w), 0, 0)
            if cut is not None:
                cells.append(Cell(cut[1], cut[2], cut[0], float(r["score"]), r["category_id"],
                                  np.zeros(4)))
        _, cells = paint_labels(cells, (h, w))
        score, by_class = score_cells(gt_rles, gt_cats, cells, h, w)
        overall.append(score)
        for c, s in by_class.items():
            per_class[c].append(s)
    out = {"score": float(np.mean(overall)) * 100 if overall else float("nan")}
    for c, name in zip(cat_ids, names):
        if per_class[c]:
            out[f"score-{name}"] = float(np.mean(per_class[c])) * 100
    return out


def rle_mask(segmentation, height: int, width: int) -> np.ndarray:
    import pycocotools.mask as mask_util

    rle = annotation_rles([{"segmentation": segmentation}], height, width)[0]
    if isinstance(rle.get("counts"), str):
        rle = dict(rle, counts=rle["counts"].encode("ascii"))
    return mask_util.decode(rle).astype(bool)
