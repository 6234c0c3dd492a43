#!/usr/bin/env python
"""Rank a dataset's images by their per-image Kaggle score (detections above
TEST.INSTANCE_SCORE_THRESH, made non-overlapping) and save the best and worst as
side-by-side panels: ground truth | prediction (Detectron2 Visualizer; the prediction panel
shows exactly the cells scored). Predictions are kept box-local, so memory does not grow with
the dataset. The output folder must be new, empty, or hold an earlier run of this tool
(replaced with --overwrite, exactly its own files).

    tools/visualize_samples.py --config-file CFG --weights model_final.pth \
        [--dataset synthetic_val] [--num 2] --output samples/
"""
import argparse
import csv
import os
import sys

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

import cellseg_d2  # noqa: F401
from cellseg_d2.cells import cells_from_instances, paint_labels
from cellseg_d2.checkpoint import FittingCheckpointer, check_weights
from cellseg_d2.config import SetupError, load_cfg
from cellseg_d2.data.datasets import DatasetMissingError
from cellseg_d2.data.image_io import read_image
from cellseg_d2.data.mapper import CellDatasetMapper
from cellseg_d2.evaluation.kaggle_metric import score_image
from cellseg_d2.modeling.test_time_augmentation import with_test_time_policy
from cellseg_d2.outputs import overlay, write_image
from cellseg_d2.run_folder import OutputFolderError, check_output_dir, staged_run
from cellseg_d2.utils import atomic_open

TOOL = "tools/visualize_samples.py"


def panel(record, cells, metadata, score):
    image = read_image(record["file_name"])
    left = Visualizer(image[:, :, ::-1], metadata,
                      instance_mode=ColorMode.IMAGE).draw_dataset_dict(record).get_image()
    right = overlay(image, cells, metadata)[:, :, ::-1]
    sep = np.full((left.shape[0], 8, 3), 255, np.uint8)
    out = np.concatenate([left, sep, right], axis=1)[:, :, ::-1].copy()
    for text, x in ((f"ground truth ({len(record['annotations'])})", 8),
                    (f"prediction ({len(cells)}), score {score:.3f}", left.shape[1] + 16)):
        cv2.putText(out, text, (x, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3)
        cv2.putText(out, text, (x, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", help="checkpoint; default MODEL.WEIGHTS")
    p.add_argument("--dataset", help="registered dataset (default: first of DATASETS.TEST)")
    p.add_argument("--num", type=int, default=2, help="how many best and worst images")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that holds an earlier run")
    p.add_argument("--device")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    try:
        cfg = load_cfg(args.config_file, args.opts, args.weights, args.device)
        check_weights(cfg.MODEL.WEIGHTS)
        check_output_dir(args.output, TOOL, args.overwrite)
        name = args.dataset or cfg.DATASETS.TEST[0]
        records = DatasetCatalog.get(name)
        model = build_model(cfg).eval()
        FittingCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        model = with_test_time_policy(cfg, model)
    except (SetupError, DatasetMissingError, KeyError, OutputFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    metadata = MetadataCatalog.get(name)
    mapper = CellDatasetMapper(cfg, is_train=False)
    scored = []
    with torch.no_grad():
        for record in tqdm(records, desc="scoring", unit="img"):
            h, w = record["height"], record["width"]
            inst = model([mapper(record)])[0]["instances"].to("cpu")
            _, cells = paint_labels(cells_from_instances(inst, cfg.TEST.INSTANCE_SCORE_THRESH),
                                    (h, w))
            scored.append((score_image(record["annotations"], h, w, cells)[0], record, cells))
    scored.sort(key=lambda t: -t[0])
    k = min(args.num, len(scored))
    picks = [("best", i + 1, scored[i]) for i in range(k)]
    picks += [("worst", i + 1, scored[-1 - i]) for i in range(k)]
    try:
        write_samples(args.output, picks, scored, metadata)
    except OutputFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {2 * k} panels and scores.csv to {args.output}/ "
          f"(best {scored[0][0]:.3f}, worst {scored[-1][0]:.3f})")
    return 0


def write_samples(output, picks, scored, metadata):
    with staged_run(output, TOOL) as stage:
        for kind, rank, (score, record, cells) in picks:
            stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
            write_image(os.path.join(stage, f"{kind}_{rank}_{stem}.png"),
                        panel(record, cells, metadata, score))
        with atomic_open(os.path.join(stage, "scores.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "kaggle_score", "gt_cells", "pred_cells"])
            for score, record, cells in scored:
                writer.writerow([os.path.basename(record["file_name"]), f"{score:.4f}",
                                 len(record["annotations"]), len(cells)])


if __name__ == "__main__":
    sys.exit(main())
