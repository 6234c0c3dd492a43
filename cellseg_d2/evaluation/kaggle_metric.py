"""The Sartorius competition metric.

Per image: predictions are made non-overlapping (pixels go to the higher-scored prediction;
emptied predictions are dropped); for each IoU threshold t in 0.50:0.05:0.95 a prediction and a
ground truth match when IoU > t; TP = ground truths with exactly one match, FN = ground truths
with none, FP = predictions with none; the image scores mean_t TP / (TP + FP + FN). The metric
is the mean over images. Per class: the same restricted to that class's ground truths and
predictions, over the images that contain the class.
"""
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from ..data.mapper import decode_masks

THRESHOLDS = np.arange(0.5, 0.96, 0.05)


def remove_overlaps(masks, scores):
    """masks (n, H, W) bool, any order; returns (kept masks in score order, kept indices)."""
    masks = torch.as_tensor(masks)
    if len(masks) == 0:
        return masks, np.zeros(0, dtype=np.int64)
    order = torch.as_tensor(np.argsort(-np.asarray(scores), kind="stable"))
    ordered = masks[order].bool()
    taken = torch.cumsum(ordered.to(torch.uint8), dim=0) > 1  # covered by a better one
    ordered = ordered & ~taken
    keep = ordered.flatten(1).any(dim=1)
    return ordered[keep], order[keep].numpy()


def _rles(masks) -> list:
    m = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    return mask_util.encode(m)


def image_score(gt_masks, pred_masks) -> float:
    """Kaggle score of one image; pred_masks must already be non-overlapping."""
    n_gt, n_pred = len(gt_masks), len(pred_masks)
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0
    iou = mask_util.iou(_rles(pred_masks), _rles(gt_masks), [0] * n_gt).T  # (gt, pred)
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


class KaggleMetricEvaluator(DatasetEvaluator):
    def __init__(self, dataset_name: str):
        self._dataset_name = dataset_name
        self._classes = MetadataCatalog.get(dataset_name).thing_classes
        self._gt = None

    def reset(self):
        self._overall = []
        self._per_class = defaultdict(list)
        if self._gt is None:
            self._gt = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            record = self._gt[inp["image_id"]]
            anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
            gt_masks = decode_masks(anns, record["height"], record["width"])
            gt_classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
            inst = out["instances"].to("cpu")
            masks, keep = remove_overlaps(inst.pred_masks, inst.scores.numpy())
            classes = inst.pred_classes.numpy()[keep]
            masks = masks.numpy()
            self._overall.append(image_score(gt_masks, masks))
            for c in np.unique(gt_classes):
                self._per_class[int(c)].append(
                    image_score(gt_masks[gt_classes == c], masks[classes == c]))

    def evaluate(self):
        result = {"score": float(np.mean(self._overall)) * 100 if self._overall else float("nan")}
        for c, name in enumerate(self._classes):
            if self._per_class.get(c):
                result[f"score-{name}"] = float(np.mean(self._per_class[c])) * 100
        return {"kaggle": result}
