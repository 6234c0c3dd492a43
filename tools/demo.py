#!/usr/bin/env python
"""The main job on the embedded default: synthetic Sartorius-like data, end to end.

1. generate synthetic images in the Kaggle layout (datasets/synthetic/train/, train.csv);
2. convert them with the real converter (datasets/synthetic/annotations/{train,val}.json) and
   load them through Detectron2's DatasetCatalog (synthetic_train / synthetic_val);
3. train a small YOLACT on the CPU for a few minutes (configs/synthetic_R18_cpu.yaml);
4. evaluate on synthetic_val: COCO bbox/segm with a per-class table, Kaggle metric;
5. plot the loss and mAP curves, save the best and worst validation images as GT | prediction
   panels, and run tools/predict.py on the validation images.

--output (output/demo) must be new, empty, or hold an earlier run of the demo (replaced with
--overwrite, exactly its own files; `make demo` passes it).
"""
import argparse
import json
import os
import subprocess
import sys

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog

import cellseg_d2  # noqa: F401  (registers datasets)
from cellseg_d2.config import schedule_opts
from cellseg_d2.data.datasets import datasets_root
from cellseg_d2.data.sartorius import class_statistics, convert_sartorius, format_statistics
from cellseg_d2.data.segmentation import annotation_rles
from cellseg_d2.data.synthetic import generate_dataset
from cellseg_d2.run_folder import OutputFolderError, check_output_dir, run_in_place

TOOLS = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(TOOLS, "..", "configs", "synthetic_R18_cpu.yaml")
TOOL = "tools/demo.py"


def dataset_summary(name: str) -> str:
    dicts = DatasetCatalog.get(name)
    classes = MetadataCatalog.get(name).thing_classes
    coco_like = {"categories": [{"id": i, "name": c} for i, c in enumerate(classes)],
                 "annotations": [{"image_id": d["image_id"], "category_id": a["category_id"],
                                  "area": float(mask_util.area(rle))}
                                 for d in dicts for a, rle in zip(
                                     d["annotations"],
                                     annotation_rles(d["annotations"], d["height"], d["width"]))]}
    return format_statistics(class_statistics(coco_like), f"\n{name}: {len(dicts)} images")


def run(step: str, args: list) -> None:
    shown = [os.path.relpath(a) if a.startswith("/") else a for a in args]
    print(f"\n=== {step}\n$ python {' '.join(shown)}", flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images-per-type", type=int, default=8)
    p.add_argument("--iters", type=int, default=120, help="training iterations (default 120)")
    p.add_argument("--output", default="output/demo")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run of the demo in --output (exactly its files)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    args = p.parse_args(argv)
    try:
        check_output_dir(args.output, TOOL, args.overwrite)
    except OutputFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with run_in_place(args.output, TOOL):
        return demo(args, args.output)


def demo(args, out):
    root = os.path.join(datasets_root(), "synthetic")
    print(f"=== [1/5] synthetic data -> {root}")
    generate_dataset(root, images_per_type=args.images_per_type, seed=args.seed)
    convert_sartorius(root, root, split=(0.75, 0.25, 0), seed=args.seed)
    for name in ("synthetic_train", "synthetic_val"):
        print(dataset_summary(name))

    schedule = schedule_opts(args.iters, (0.8,), max_warmup=50, warmup_divisor=3)
    train_opts = [*map(str, schedule), "SOLVER.CHECKPOINT_PERIOD", str(args.iters),
                  "TEST.EVAL_PERIOD", str(args.iters // 2), "SEED", str(args.seed), "OUTPUT_DIR", out]
    run("[2/5] train + evaluate YOLACT R18 (CPU)",
        [os.path.join(TOOLS, "train_net.py"), "--config-file", CONFIG, *train_opts])
    weights = os.path.join(out, "model_final.pth")
    val_list = os.path.join(out, "val_images.txt")
    with open(val_list, "w") as f:
        f.writelines(d["file_name"] + "\n" for d in DatasetCatalog.get("synthetic_val"))
    run("[3/5] loss and mAP plots", [os.path.join(TOOLS, "plot_metrics.py"), out])
    run("[4/5] best and worst validation images",
        [os.path.join(TOOLS, "visualize_samples.py"), "--config-file", CONFIG, "--weights", weights,
         "--dataset", "synthetic_val", "--output", os.path.join(out, "samples"), "--overwrite"])
    run("[5/5] predict on the validation images",
        [os.path.join(TOOLS, "predict.py"), "--config-file", CONFIG, "--weights", weights,
         "--input", val_list, "--output", os.path.join(out, "predictions"), "--overwrite"])

    eval_dir = os.path.join(out, "inference", "synthetic_val")
    print("\n=== outputs")
    for path, what in [
        (root, "synthetic data: train/*.png, train.csv, annotations/{train,val}.json"),
        (weights, "trained checkpoint"),
        (os.path.join(out, "metrics.json"), "training/evaluation metrics (TensorBoard events beside it)"),
        (os.path.join(eval_dir, "per_class_segm.csv"), "per-class mask AP (also .json; per_class_bbox.*)"),
        (os.path.join(out, "loss.png"), "loss graph"),
        (os.path.join(out, "map.png"), "mAP graph"),
        (os.path.join(out, "samples"), "best_*/worst_* GT | prediction panels, scores.csv"),
        (os.path.join(out, "predictions"),
         "overlays/, labels/*.tif, coco_results.json, submission.csv, cells.csv, counts.csv"),
    ]:
        print(f"  {path:55s} {what}")
    with open(os.path.join(eval_dir, "per_class_segm.json")) as f:
        table = json.load(f)
    print("\nper-class mask AP (%): " + ", ".join(f"{k} {v['AP']:.1f}" for k, v in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
