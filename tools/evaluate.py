#!/usr/bin/env python
"""Score any results against any COCO ground truth, with the metrics training reports.

    tools/evaluate.py --gt GT.json --results RESULTS.json [--max-dets 1000] [--score-thresh 0.5]
    tools/evaluate.py --gt GT.json --results LABELS_FOLDER/

RESULTS is a COCO results file (from this project's coco_results.json or
coco_instances_results.json, or any other tool) or a folder of label images (16/32-bit TIFF or
PNG, 0 background, one id per cell; e.g. Cellpose's *_cp_masks.tif), matched to the ground
truth's images by file name. Label images carry no scores (every cell scores 1) and no classes
(a cell takes its image's class where the image holds one cell type; otherwise scoring is
class-agnostic).

Writes to --output (default: an "evaluation" folder beside RESULTS): per_class_segm.json/.csv,
per_class_bbox.json/.csv and results.json ({"bbox": .., "segm": .., "kaggle": ..}, the layout of
tools/train_net.py --eval-only); prints the tables. COCO AP is read at --max-dets (mask areas
define small / medium / large for segm, as in Detectron2); the Kaggle metric scores results above
--score-thresh, made non-overlapping.
"""
import argparse
import os
import sys

from cellseg_d2.evaluation.files import (
    ScoringError,
    agnostic,
    check_results,
    coco_metrics,
    images_mix_classes,
    kaggle_metric,
    load_ground_truth,
    load_json,
    results_from_labels,
)
from cellseg_d2.evaluation.per_class import format_per_class, save_per_class
from cellseg_d2.predict import InputError, check_output_dir, staged_dir
from cellseg_d2.utils import write_json

OUTPUTS = ("per_class_*.json", "per_class_*.csv", "results.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gt", required=True, help="COCO instances JSON (ground truth)")
    p.add_argument("--results", required=True, help="COCO results JSON or folder of label images")
    p.add_argument("--max-dets", type=int, default=1000,
                   help="detections per image that AP reads (default %(default)s)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="score above which a detection counts for the Kaggle metric")
    p.add_argument("--output", help="output folder (default: evaluation/ beside --results)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation")
    args = p.parse_args(argv)
    if args.max_dets < 1:
        p.error("--max-dets must be at least 1")
    results_path = os.path.abspath(args.results).rstrip(os.sep)
    output = args.output or os.path.join(os.path.dirname(results_path), "evaluation")
    try:
        check_output_dir(output, args.overwrite, produced=OUTPUTS)
        gt = load_ground_truth(args.gt)
        if os.path.isdir(args.results):
            results = results_from_labels(args.results, gt)
            if images_mix_classes(gt):
                print("note: images hold several cell types and label images carry none: "
                      "scoring class-agnostically", file=sys.stderr)
                gt, results = agnostic(gt, results)
        else:
            results = check_results(load_json(args.results, "results"), gt, args.results)
        names = [c["name"] for c in gt.loadCats(sorted(gt.getCatIds()))]
        report = {}
        with staged_dir(output) as stage:
            for task in ("bbox", "segm"):
                usable = [r for r in results if task == "segm" or "bbox" in r]
                if not usable:
                    continue
                report[task], table = coco_metrics(gt, usable, task, args.max_dets, names)
                save_per_class(table, stage, task)
                print(format_per_class(table, task))
                print(f"{task}: AP {report[task]['AP']:.2f}  AP50 {report[task]['AP50']:.2f}  "
                      f"AP75 {report[task]['AP75']:.2f}  (maxDets {args.max_dets})\n")
            report["kaggle"] = kaggle_metric(gt, results, args.score_thresh, names)
            write_json(os.path.join(stage, "results.json"), report)
        print("Kaggle metric: " + ", ".join(f"{k} {v:.2f}" for k, v in report["kaggle"].items()))
    except (ScoringError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"-> {output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
