"""The Sartorius competition metric.

Per image: predictions are made non-overlapping (pixels go to the higher-scored prediction;
emptied predictions are dropped); for each IoU threshold t in 0.50:0.05:0.95 a prediction and a
ground truth match when IoU > t; TP = ground truths with exactly one match, FN = ground truths
with none, FP = predictions with none; the image scores mean_t TP / (TP + FP + FN). The metric
is the mean over images. Per class: the same restricted to that class's ground truths and
predictions, over the images that contain the class.
"""
import itertools
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..cells import cells_from_instances, coco_rle, paint_labels
from ..data.segmentation import annotation_rles

THRESHOLDS = np.arange(0.5, 0.96, 0.05)


def rle_score(gt_rles: list, pred_rles: list) -> float:
    """Kaggle score of one image from COCO RLEs; predictions must not overlap."""
    n_gt, n_pred = len(gt_rles), len(pred_rles)
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0
    iou = np.asarray(mask_util.iou(pred_rles, gt_rles, [0] * n_gt)).T  # (gt, pred)
    return iou_matrix_score(iou)


def iou_matrix_score(iou: np.ndarray) -> float:
    scores = []
    for t in THRESHOLDS:
        matches = iou > t
        tp = np.sum(matches.sum(axis=1) == 1)
        fn = np.sum(matches.sum(axis=1) == 0)
        fp = np.sum(matches.sum(axis=0) == 0)
        scores.append(tp / (tp + fp + fn))
    return float(np.mean(scores))


def score_cells(gt_rles: list, gt_classes, cells: list, height: int, width: int):
    """Kaggle score of one image's non-overlapping predicted cells (cells.paint_labels), and
    per class of its ground truth, matching cells by ``Cell.cls``: (score, {class: score})."""
    pred_rles = [coco_rle(c, height, width) for c in cells]
    pred_classes = np.array([c.cls for c in cells], dtype=np.int64)
    gt_classes = np.asarray(gt_classes, dtype=np.int64)
    per_class = {int(c): rle_score([r for r, g in zip(gt_rles, gt_classes) if g == c],
                                   [r for r, k in zip(pred_rles, pred_classes) if k == c])
                 for c in np.unique(gt_classes)}
    return rle_score(gt_rles, pred_rles), per_class


def score_image(annotations: list, height: int, width: int, cells: list):
    """Kaggle score of one image: its ground-truth ``annotations`` (COCO segmentations; crowd
    regions left out, as the competition has none) against its non-overlapping predicted
    ``cells`` (cells.paint_labels): (score, {class: score}) as score_cells."""
    anns = [a for a in annotations if not a.get("iscrowd", 0)]
    return score_cells(annotation_rles(anns, height, width),
                       [a["category_id"] for a in anns], cells, height, width)


class KaggleMetricEvaluator(DatasetEvaluator):
    """Scores detections above ``score_thresh`` (the competition scores every submitted mask,
    so low-score detections that AP tolerates count as false positives here). With several
    processes each scores its share of the images; the main process averages all of them in
    image-id order, so N processes give exactly the numbers of one."""

    def __init__(self, dataset_name: str, score_thresh: float = 0.5, distributed: bool = True):
        self._dataset_name = dataset_name
        self._classes = MetadataCatalog.get(dataset_name).thing_classes
        self._score_thresh = score_thresh
        self._distributed = distributed
        self._gt = None

    def reset(self):
        self._scores = []  # (image_id, score, {class: score})
        if self._gt is None:
            self._gt = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            record = self._gt[inp["image_id"]]
            height, width = record["height"], record["width"]
            # box-local: no (n, H, W) copies however many detections there are
            _, cells = paint_labels(cells_from_instances(out["instances"].to("cpu"),
                                                         self._score_thresh), (height, width))
            self._scores.append((inp["image_id"],
                                 *score_image(record["annotations"], height, width, cells)))

    def evaluate(self):
        scores = self._scores
        if self._distributed:
            comm.synchronize()
            scores = list(itertools.chain(*comm.gather(scores, dst=0)))
            if not comm.is_main_process():
                return {}
        scores.sort(key=lambda t: t[0])
        overall = [s for _, s, _ in scores]
        per_class = defaultdict(list)
        for _, _, by_class in scores:
            for c, s in by_class.items():
                per_class[c].append(s)
        result = {"score": float(np.mean(overall)) * 100 if overall else float("nan")}
        for c, name in enumerate(self._classes):
            if per_class.get(c):
                result[f"score-{name}"] = float(np.mean(per_class[c])) * 100
        return {"kaggle": result}
