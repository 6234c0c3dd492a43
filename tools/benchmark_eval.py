"""tools/benchmark.py's evaluation cost: COCO metrics (Detectron2's path and this project's)
and the Kaggle metric per image at 100 / 1000 / 2000 detections."""
import math
import os
import sys
import tempfile
import time

import benchmark_common
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

import cellseg_d2  # noqa: F401
from cellseg_d2.config import load_cfg
from cellseg_d2.data.datasets import register_kaggle_coco
from cellseg_d2.data.mapper import CellDatasetMapper
from cellseg_d2.data.sartorius import convert_sartorius
from cellseg_d2.data.synthetic import generate_dataset
from cellseg_d2.engine import build_cell_evaluator


def eval_cost(args) -> dict:
    """Evaluation time per image at N detections (N in --eval-dets): COCO metrics by
    Detectron2's path (pycocotools: COCOeval_opt at 100, COCOevalMaxDets beyond) and by this
    project's (faster-coco-eval) on the same outputs, one run, with the largest difference
    between their numbers; and the Kaggle metric (box-local cells)."""
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        data = os.path.join(root, "synthetic")
        generate_dataset(data, images_per_type=args.eval_images, cell_types=("shsy5y",),
                         seed=1, progress=False)
        convert_sartorius(data, data, split=(0, args.eval_images, 0), progress=False)
        dataset = "benchmark_eval_synthetic"  # its own dataset: no process-wide data root
        if dataset in DatasetCatalog.list():
            DatasetCatalog.remove(dataset)
            MetadataCatalog.remove(dataset)
        register_kaggle_coco(dataset, "synthetic", "val", "", data_root=root)
        records = DatasetCatalog.get(dataset)
        for n in [int(v) for v in args.eval_dets.split(",")]:
            print(f"  evaluation at {n} detections/image ...", file=sys.stderr, flush=True)
            # Every detection counts for the Kaggle metric too (worst case: n overlapping masks).
            cfg = load_cfg(args.yolact_config, ["MODEL.YOLACT.SCORE_THRESH_TEST", "0.0",
                                                "TEST.INSTANCE_SCORE_THRESH", "-1.0",
                                                "TEST.DETECTIONS_PER_IMAGE", str(n),
                                                "MODEL.DEVICE", args.device])
            _, model = benchmark_common.build("yolact", args.yolact_config, args.yolact_weights,
                                              n, args.device)
            mapper = CellDatasetMapper(cfg, is_train=False)
            with torch.no_grad():
                outputs = [(r, model([mapper(r)])[0]) for r in records]
            row = {"detections_per_image": int(np.mean([len(o["instances"]) for _, o in outputs])),
                   "gt_cells_per_image": int(np.mean([len(r["annotations"]) for r in records])),
                   "images": len(outputs)}
            found = {}
            for path in ("detectron2", "cellseg_d2"):
                coco, kaggle = build_cell_evaluator(
                    cfg, dataset, os.path.join(root, f"eval_{n}_{path}"))._evaluators
                coco._use_faster = path == "cellseg_d2"
                for name, ev in [("coco", coco)] + [("kaggle", kaggle)] * (path == "cellseg_d2"):
                    ev.reset()
                    t = time.perf_counter()
                    for r, o in outputs:
                        ev.process([{"image_id": r["image_id"], "file_name": r["file_name"],
                                     "height": r["height"], "width": r["width"]}], [o])
                    found[(path, name)] = ev.evaluate()
                    row[f"{path}_{name}_s_per_image"] = (time.perf_counter() - t) / len(outputs)
            row["max_abs_difference"] = max(
                abs(a - b) for a, b in zip(_flat(found[("detectron2", "coco")]),
                                           _flat(found[("cellseg_d2", "coco")]))
                if not (math.isnan(a) and math.isnan(b)))
            rows.append(row)
    return {"rows": rows}


def _flat(results: dict) -> list:
    return [v for task in sorted(results) for _, v in sorted(results[task].items())]


def report(args) -> dict:
    print("\nmeasuring evaluation cost ...", file=sys.stderr, flush=True)
    result = eval_cost(args)
    print(f"\nEvaluation, seconds per image (shsy5y images, ~"
          f"{result['rows'][0]['gt_cells_per_image']} cells each), one run:")
    print(f"{'dets':>6} {'COCO d2':>8} {'COCO ours':>10} {'speed-up':>9} {'Kaggle':>7} "
          f"{'max |diff|':>11}")
    for e in result["rows"]:
        c0, c1 = e["detectron2_coco_s_per_image"], e["cellseg_d2_coco_s_per_image"]
        print(f"{e['detections_per_image']:>6} {c0:>8.3f} {c1:>10.3f} {c0 / c1:>8.1f}x "
              f"{e['cellseg_d2_kaggle_s_per_image']:>7.3f} {e['max_abs_difference']:>11.2g}")
    return result
