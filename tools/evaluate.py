#!/usr/bin/env python
"""Score any results against any COCO ground truth, with the metrics training reports.

    tools/evaluate.py --gt GT.json --results RESULTS.json [--max-dets 1000] [--score-thresh 0.5]
    tools/evaluate.py --gt GT.json --results LABELS_FOLDER/

RESULTS is a COCO results file (this project's coco_results.json, Detectron2's
coco_instances_results.json, any other tool's; masks as RLE or polygons) or a folder of label
images (16/32-bit TIFF or PNG, 0 background, one id per cell; e.g. Cellpose's *_cp_masks.tif).
Results are matched to the ground truth's images by file name wherever they name their images
(predict's images.json beside the results file, or a COCO-style {"images", "annotations"}
file; label images by their file names), else by image id (said in a note). Label images carry
no scores (every cell scores 1) and no classes (a cell takes its image's class where the image
holds one cell type; otherwise scoring is class-agnostic). Both files are checked first: a
duplicate or non-integer id, an unknown image or category, a mask not of its image's size is
one error line naming the entry.

--protocol livecell scores as LIVECell's paper does (Edlund et al. 2021): AP at up to 2000
detections, small / medium / large split at 324 / 961 px^2 instead of COCO's 32^2 / 96^2, AR at
100, 500 and 2000 detections, class-agnostic overall (COCOeval's useCats 0), each class (cell
type) over the images holding it.

Writes to --output (default: an "evaluation" folder beside RESULTS): per_class_segm.json/.csv,
per_class_bbox.json/.csv and results.json ({"bbox": .., "segm": .., "kaggle": ..}, the layout of
tools/train_net.py --eval-only); prints the tables. COCO AP is read at --max-dets (mask areas
define small / medium / large for segm, as in Detectron2; a warning says when an image has more
detections than that); the Kaggle metric scores results above --score-thresh, made
non-overlapping.
"""
import argparse
import os
import sys

from cellseg_d2.evaluation.files import (
    ScoringError,
    agnostic,
    coco_metrics,
    images_mix_classes,
    kaggle_metric,
    load_ground_truth,
    many_detections,
    results_file,
    results_from_labels,
)
from cellseg_d2.evaluation.per_class import (
    COCO_AREA_BANDS,
    LIVECELL_AREA_BANDS,
    format_per_class,
    save_per_class,
)
from cellseg_d2.run_folder import OutputFolderError, check_output_dir, staged_run
from cellseg_d2.utils import write_json

TOOL = "tools/evaluate.py"
# protocol: (the first two maxDets, default last, small / medium / large limits in px^2,
# class-agnostic)
PROTOCOLS = {"coco": ((1, 10), 1000, COCO_AREA_BANDS, False),
             "livecell": ((100, 500), 2000, LIVECELL_AREA_BANDS, True)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gt", required=True, help="COCO instances JSON (ground truth)")
    p.add_argument("--results", required=True, help="COCO results JSON or folder of label images")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="coco",
                   help="area bands and detection counts (default %(default)s; see above)")
    p.add_argument("--max-dets", type=int,
                   help="detections per image that AP reads (default 1000; livecell 2000)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="score above which a detection counts for the Kaggle metric")
    p.add_argument("--output", help="output folder (default: evaluation/ beside --results)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation")
    args = p.parse_args(argv)
    first_dets, default_dets, bands, agnostic_protocol = PROTOCOLS[args.protocol]
    max_dets = args.max_dets or default_dets
    if max_dets < 1:
        p.error("--max-dets must be at least 1")
    all_dets = (*first_dets, max_dets)
    if sorted(all_dets) != list(all_dets):
        p.error(f"--max-dets must be at least {first_dets[-1]} with --protocol {args.protocol}")
    results_path = os.path.abspath(args.results).rstrip(os.sep)
    output = args.output or os.path.join(os.path.dirname(results_path), "evaluation")

    def note(line):
        print(line, file=sys.stderr)

    try:
        check_output_dir(output, TOOL, args.overwrite)
        gt = load_ground_truth(args.gt)
        if os.path.isdir(args.results):
            results = results_from_labels(args.results, gt)
            if images_mix_classes(gt):
                note("note: images hold several cell types and label images carry none: "
                     "scoring class-agnostically")
                gt, results = agnostic(gt, results)
        else:
            results = results_file(args.results, gt, report=note,
                                   class_agnostic=agnostic_protocol)
        warning = many_detections(results, gt, max_dets)
        if warning:
            note(warning)
        names = [c["name"] for c in gt.loadCats(sorted(gt.getCatIds()))]
        report = {}
        with staged_run(output, TOOL) as stage:
            for task in ("bbox", "segm"):
                usable = [r for r in results if task == "segm" or "bbox" in r]
                if not usable:
                    continue
                report[task], table = coco_metrics(gt, usable, task, all_dets, names, bands,
                                                   agnostic_protocol)
                save_per_class(table, stage, task)
                print(format_per_class(table, task))
                recall = "  ".join(f"AR@{m} {report[task][f'AR@{m}']:.2f}" for m in all_dets)
                print(f"{task}: AP {report[task]['AP']:.2f}  AP50 {report[task]['AP50']:.2f}  "
                      f"AP75 {report[task]['AP75']:.2f}  (maxDets {max_dets}, {args.protocol} "
                      f"area bands {bands[0]} / {bands[1]} px^2)  {recall}\n")
            report["kaggle"] = kaggle_metric(gt, results, args.score_thresh, names)
            write_json(os.path.join(stage, "results.json"), report)
        print("Kaggle metric: " + ", ".join(f"{k} {v:.2f}" for k, v in report["kaggle"].items()))
    except (ScoringError, OutputFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"-> {output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
