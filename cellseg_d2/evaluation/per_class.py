"""COCOEvaluator with a full per-class table (AP, AP50, AP75, APs, APm, APl per class), scored
by faster-coco-eval at any maxDets, with COCO's or LIVECell's area bands, per class or
class-agnostically (LIVECell's protocol).

COCOEvaluator itself reports per-class AP only, and at maxDets other than 100 it falls back to
pycocotools' Python evaluateImg (COCOevalMaxDets), seconds per image at ~1000 detections.
faster-coco-eval's C++ COCOeval gives the same precision arrays (tests/test_coco_eval.py) and
reads AP at the last maxDets, as COCOevalMaxDets does; so does the per-class table here.
"""
import csv
import json
import os

import numpy as np
from detectron2.evaluation import COCOEvaluator, coco_evaluation
from detectron2.structures import Instances
from detectron2.utils.logger import create_small_table
from pycocotools.cocoeval import Params
from tabulate import tabulate

from ..utils import atomic_open, write_json
from .box_rle import encode_instance_masks

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_AREA_BANDS = (32**2, 96**2)  # small < 32^2 <= medium < 96^2 <= large (px^2)
LIVECELL_AREA_BANDS = (18**2, 31**2)  # LIVECell's (Edlund et al. 2021): 324, 961


def area_ranges(bands=COCO_AREA_BANDS) -> list:
    """COCOeval.params.areaRng (all, small, medium, large) for the two band limits."""
    small, large = bands
    return [[0, 1e5**2], [0, small], [small, large], [large, 1e5**2]]


def recall_metrics(stats, max_dets) -> dict:
    """{"AR@<maxDets>": %} from COCOeval.stats (AR at each maxDets: entries 6-8)."""
    return {f"AR@{m}": float(stats[6 + i] * 100) if stats[6 + i] >= 0 else float("nan")
            for i, m in enumerate(max_dets)}


def per_class_metrics(precision: np.ndarray, iou_thrs: np.ndarray, class_names) -> dict:
    """{class: {metric: value in %}} from COCOeval.eval["precision"] (T, R, K, A, M).
    Area index 0 all, 1 small, 2 medium, 3 large; the last maxDets is used; NaN where no GT."""
    def mean(p):
        p = p[p > -1]
        return float(np.mean(p) * 100) if p.size else float("nan")

    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    table = {}
    for k, name in enumerate(class_names):
        table[name] = {
            "AP": mean(precision[:, :, k, 0, -1]),
            "AP50": mean(precision[t50, :, k, 0, -1]),
            "AP75": mean(precision[t75, :, k, 0, -1]),
            "APs": mean(precision[:, :, k, 1, -1]),
            "APm": mean(precision[:, :, k, 2, -1]),
            "APl": mean(precision[:, :, k, 3, -1]),
        }
    return table


def format_per_class(table: dict, iou_type: str) -> str:
    rows = [[name] + [f"{v[m]:.2f}" for m in METRICS] for name, v in table.items()]
    return f"Per-class {iou_type} (%):\n" + tabulate(rows, headers=["class", *METRICS],
                                                      tablefmt="pipe")


def save_per_class(table: dict, output_dir: str, iou_type: str) -> None:
    write_json(os.path.join(output_dir, f"per_class_{iou_type}.json"), table)
    with atomic_open(os.path.join(output_dir, f"per_class_{iou_type}.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *METRICS])
        for name, v in table.items():
            writer.writerow([name] + [f"{v[m]:.4f}" for m in METRICS])


def instances_to_coco_json(instances, image_id: int) -> list:
    """Detectron2's instances_to_coco_json, with masks encoded from their boxes (box_rle)."""
    fields = {k: v for k, v in instances.get_fields().items() if k != "pred_masks"}
    results = coco_evaluation.instances_to_coco_json(
        Instances(instances.image_size, **fields), image_id)
    if instances.has("pred_masks"):
        rles = encode_instance_masks(instances.pred_masks, instances.pred_boxes.tensor)
        for r, rle in zip(results, rles):
            r["segmentation"] = rle
    return results


def _cocoeval(gt, dt, iou_type, max_dets, area_bands, use_cats=True, img_ids=None):
    from faster_coco_eval import COCOeval_faster

    e = COCOeval_faster(gt, dt, iou_type, print_function=lambda *a, **k: None)
    e.params.maxDets = list(max_dets)
    e.params.areaRng = area_ranges(area_bands)
    e.params.useCats = int(use_cats)
    if img_ids is not None:
        e.params.imgIds = list(img_ids)
    e.evaluate()
    e.accumulate()
    return e


def evaluate_coco(coco_gt, coco_results: list, iou_type: str, max_dets=(1, 10, 100),
                  img_ids=None, area_bands=COCO_AREA_BANDS, use_cats: bool = True):
    """faster-coco-eval's COCOeval on ``coco_results`` (COCO results dicts) against
    ``coco_gt`` (a pycocotools or faster-coco-eval COCO), evaluated, accumulated and
    summarised; ``stats[:6]`` and ``eval["precision"]`` are read at ``max_dets[-1]``, small /
    medium / large split at ``area_bands`` (px^2); with ``use_cats`` False, class-agnostic
    (COCOeval's useCats 0, as LIVECell's evaluation)."""
    from faster_coco_eval import COCO

    # loadRes adds keys to each result: give it copies (their masks are only read)
    drop = ("bbox",) if iou_type == "segm" else ()  # mask areas define small / medium / large
    coco_results = [{k: v for k, v in r.items() if k not in drop} for r in coco_results]
    gt = coco_gt if isinstance(coco_gt, COCO) else COCO(coco_gt.dataset)
    e = _cocoeval(gt, gt.loadRes(coco_results), iou_type, max_dets, area_bands, use_cats, img_ids)
    e.summarize()
    return e


def per_class_agnostic(coco_eval, class_names) -> dict:
    """The per-class table of a class-agnostic evaluation: each class scored class-agnostically
    over the images that hold it (LIVECell's per-cell-type numbers: one type per image)."""
    gt, p = coco_eval.cocoGt, coco_eval.params
    table = {}
    for cat, name in zip(sorted(gt.getCatIds()), class_names):
        images = sorted({a["image_id"] for a in gt.loadAnns(gt.getAnnIds(catIds=[cat]))}
                        & set(p.imgIds))
        if not images:
            table[name] = {m: float("nan") for m in METRICS}
            continue
        bands = (p.areaRng[1][1], p.areaRng[2][1])
        e = _cocoeval(gt, coco_eval.cocoDt, p.iouType, p.maxDets, bands, False, images)
        table[name] = per_class_metrics(e.eval["precision"], e.params.iouThrs, [name])[name]
    return table


class CellCOCOEvaluator(COCOEvaluator):
    """Adds "<metric>-<class>" entries for every metric, and "AR@<maxDets>" for each maxDets,
    and writes per_class_{bbox,segm}.{json,csv} in the output folder. Scores with
    faster-coco-eval (module docstring) at ``max_dets`` (three values, AP read at the last;
    default (1, 10, max_dets_per_image)) with small / medium / large split at ``area_bands``
    (COCO's 32^2 / 96^2 by default; LIVECell's protocol: 324 / 961 at (100, 500, 2000)).
    Masks are RLE-encoded from their boxes (much faster with ~1000 detections per image);
    results are identical to Detectron2's encoding."""

    _use_faster = True  # False: Detectron2's own path (pycocotools), for comparisons

    def __init__(self, *args, max_dets=None, area_bands=COCO_AREA_BANDS, class_agnostic=False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if max_dets:
            self._max_dets_per_image = list(max_dets)
        self._area_bands = tuple(area_bands)
        self._class_agnostic = class_agnostic

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            prediction = {"image_id": inp["image_id"]}
            if "instances" in out:
                prediction["instances"] = instances_to_coco_json(
                    out["instances"].to(self._cpu_device), inp["image_id"])
            if "proposals" in out:
                prediction["proposals"] = out["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def _eval_predictions(self, predictions, img_ids=None):
        """COCOEvaluator's, scored by evaluate_coco (faster-coco-eval at every maxDets, the area
        bands, per class or class-agnostic): results mapped back to the dataset's category
        ids, written to coco_instances_results.json, then each task evaluated."""
        if not self._use_faster:
            return super()._eval_predictions(predictions, img_ids)
        coco_results = [r for p in predictions for r in p.get("instances", ())]
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        unknown = set(tasks) - {"bbox", "segm"}
        if unknown:
            raise ValueError(f"CellCOCOEvaluator scores bbox and segm, not {sorted(unknown)}")
        to_dataset = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if to_dataset:
            reverse = {v: k for k, v in to_dataset.items()}
            for r in coco_results:
                if r["category_id"] not in reverse:
                    raise ValueError(f"a prediction has class {r['category_id']}, but the "
                                     f"dataset has {len(reverse)} classes")
                r["category_id"] = reverse[r["category_id"]]
        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {path}")
            with atomic_open(path, "w") as f:
                json.dump(coco_results, f)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        for task in sorted(tasks):
            coco_eval = evaluate_coco(
                self._coco_api, coco_results, task, self._max_dets_per_image, img_ids,
                self._area_bands, not self._class_agnostic) if coco_results else None
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes"))

    def _no_detection_precision(self):
        """COCOeval's precision array (and IoU thresholds) when the model detects nothing at
        all: 0 where ground truth exists (class, area range), -1 (no value) elsewhere.
        Detectron2 reports NaN then, and pycocotools cannot score an empty results list."""
        params = Params(iouType="segm")  # the thresholds and area ranges COCOeval would use
        cat_ids = sorted(self._coco_api.getCatIds())
        params.areaRng = area_ranges(self._area_bands)
        precision = -np.ones((len(params.iouThrs), len(params.recThrs), len(cat_ids),
                              len(params.areaRng), 1))
        for a in self._coco_api.dataset["annotations"]:
            if a.get("iscrowd", 0):
                continue
            k = cat_ids.index(a["category_id"])
            for r, (lo, hi) in enumerate(params.areaRng):
                if lo <= a["area"] <= hi:
                    precision[:, :, k, r, :] = 0
        return precision, params.iouThrs

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None:
            precision, iou_thrs = self._no_detection_precision()
            self._logger.warning(f"No {iou_type} detections: AP is 0 where there are cells")
            any_class = precision.max(axis=2, keepdims=True)
            results = per_class_metrics(any_class, iou_thrs, ["all"])["all"]
        else:
            results = super()._derive_coco_results(
                coco_eval, iou_type, None if self._class_agnostic else class_names)
            results.update(recall_metrics(coco_eval.stats, self._max_dets_per_image))
        if class_names is None:
            return results
        if coco_eval is None:
            table = per_class_metrics(precision, iou_thrs, class_names)
        elif self._class_agnostic:
            table = per_class_agnostic(coco_eval, class_names)
        else:
            table = per_class_metrics(coco_eval.eval["precision"], coco_eval.params.iouThrs,
                                      class_names)
        self._logger.info(format_per_class(table, iou_type))
        if self._output_dir:
            save_per_class(table, self._output_dir, iou_type)
        for name, values in table.items():
            for metric, value in values.items():
                results[f"{metric}-{name}"] = value
        self._logger.debug(create_small_table({k: v for k, v in results.items() if "-" not in k}))
        return results
