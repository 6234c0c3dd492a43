#!/usr/bin/env python
"""Train a real-cell model on a CPU within a wall-time budget (`make train-real`).

    tools/train_real.py [--data ../shared/data/sartorius_recon] [--minutes 60]
                        [--output output/real_cpu] [--overwrite] [--arch yolact|maskrcnn]

1. reads and checks --data (the Kaggle layout: train.csv + train/*.png; a training folder of
   images/ + labels/ + cell_types.csv, as the napari plugin's "Save as training data" writes
   it; or a COCO instances JSON with categories named shsy5y / astro / cort and image paths
   relative to it; duplicate ids, an image listed twice, unknown images or categories are one
   error, images without annotations are left out, counted) before anything is written, then
   converts it into
   OUTPUT/data/real with a seeded split stratified by cell type (--split; by default 26,8,0,
   which on sartorius_recon is exactly sartorius_recon_{train,val});
2. generates fresh synthetic images of the three cell types (the project's generator);
3. measures this machine's seconds per iteration on each stage's data (6 iterations each, each
   calibration stopped after 4% of the budget; with --precision auto on a CPU with native
   bfloat16, the real images' in float32 and in bfloat16 autocast, and trains in the faster;
   without it, float32) and shares the remaining time (--pretrain-share of it to pretraining;
   re-planned after pretraining) between pretraining on the synthetic images and fine-tuning
   on the real training images; each stage has a wall-time limit (SOLVER.MAX_SECONDS), so
   the budget holds; a budget too small for one iteration of each stage after the
   calibrations is refused, naming the budget that would do (cellseg_d2/budget.py);
4. evaluates on the real validation images and prints the per-class table.

--synthetic-only makes a starting model for a user who has no annotations yet (`make
synthetic-model`): step 3's pretraining alone, for the whole budget, written to OUTPUT
(default output/synthetic_start), and evaluated on every image of --data where it exists.

OUTPUT must be new, empty, or hold an earlier run of this tool (replaced with --overwrite,
exactly its own files; `make train-real` passes it).

OUTPUT holds Detectron2's usual config.yaml, model_final.pth, metrics.json and
inference/real_val/; pretrain/ holds the synthetic stage. Evaluate the model later with
CELLSEG_DATASETS=OUTPUT/data tools/train_net.py --config-file OUTPUT/config.yaml --eval-only
MODEL.WEIGHTS OUTPUT/model_final.pth.
"""
import argparse
import os
import sys
import time

from cellseg_d2 import budget as budget_plan
from cellseg_d2.data.sartorius import ConversionError
from cellseg_d2.recipe import (
    ARCHS,
    CONFIGS,
    CalibrationError,
    read_data,
    read_data_extra,
    train,
)
from cellseg_d2.run_folder import OutputFolderError, check_output_dir, run_in_place

TOOL = "tools/train_real.py"
TOOLS = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(TOOLS, "..", "..", "shared", "data", "sartorius_recon")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="Kaggle-layout folder (train.csv, train/), a training folder (images/, "
                        "labels/, cell_types.csv: the napari plugin's 'Save as training data') "
                        "or COCO instances JSON")
    p.add_argument("--output", help="default output/real_cpu (output/real_<arch>_cpu)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run of this tool in --output (exactly its files)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="yolact")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-time budget, all included")
    p.add_argument("--split", default="26,8,0", help="train,val,test of --data (see "
                   "tools/convert_sartorius.py)")
    p.add_argument("--keep-empty", action="store_true",
                   help="keep the images of a --data JSON that have no annotation (default: "
                        "left out, with their number printed)")
    p.add_argument("--pretrain-share", type=float, default=0.35,
                   help="share of the training time spent on synthetic images")
    p.add_argument("--synthetic-per-type", type=int, default=30)
    p.add_argument("--extra", default="",
                   help="folder of image + label image pairs (Usiigaci's setN/raw.tif + "
                        "instances_ids.png, or Cellpose's <name>.tif + <name>_masks.png) added to "
                        "the pretraining as --extra-type cells; '' for none")
    p.add_argument("--extra-type", default="astro", help="cell type of the --extra cells")
    p.add_argument("--extra-scale", type=float, default=0.67,
                   help="rescaling of the --extra images (0.67: Usiigaci's fibroblasts to the "
                        "median area of Sartorius' astrocytes)")
    p.add_argument("--precision", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="training arithmetic; auto: float32, unless the CPU computes bfloat16 "
                        "natively (AVX512-BF16 / AMX): then the real images' iteration is timed "
                        "in both and bfloat16 autocast (SOLVER.AMP.ENABLED) taken if it is at "
                        "least 5%% faster (evaluation is float32)")
    p.add_argument("--eval-reserve", type=float,
                   help="seconds kept for the final evaluation (default: 180 for yolact, 300 "
                        "for maskrcnn, more on machines slower than 3 s/it)")
    p.add_argument("--synthetic-only", action="store_true",
                   help="a starting model for a user with no annotations yet: the synthetic "
                        "pretraining alone for the whole budget (default output "
                        "output/synthetic_start), evaluated on all of --data's images where "
                        "--data is there (after the budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both stages")
    args = p.parse_args(argv)
    start = time.time()
    budget = args.minutes * 60

    def elapsed():
        return time.time() - start

    out = args.output or ("output/synthetic_start" if args.synthetic_only else
                          "output/real_cpu" if args.arch == "yolact" else
                          f"output/real_{args.arch}_cpu")
    config_name, eval_reserve = ARCHS[args.arch]
    config = os.path.join(CONFIGS, config_name)
    data_root = os.path.abspath(os.path.join(out, "data"))
    if args.extra and args.pretrain_share <= 0:
        print("error: --extra joins the synthetic pretraining, which --pretrain-share 0 turns off",
              file=sys.stderr)
        return 1
    if not os.path.exists(args.data) and not args.synthetic_only:
        default = os.path.abspath(args.data) == os.path.abspath(DEFAULT_DATA)
        print(f"error: {args.data}: not found" + (
            " (the default training data, which only this project's machines hold): pass "
            "--data FOLDER (Kaggle layout, a training folder saved from the napari plugin, or "
            "a COCO JSON; make train-real DATA=FOLDER), or make a starting model from "
            "synthetic images alone with --synthetic-only (make synthetic-model)"
            if default else ""), file=sys.stderr)
        return 1
    extra = (args.extra, args.extra_type, args.extra_scale) if args.extra else None
    if args.synthetic_only and not os.path.exists(args.data):
        print(f"note: {args.data} not found: the model will not be evaluated on real images")
    try:  # everything the run reads is checked before anything is written
        if args.synthetic_only:  # --data, if there, is validation only: all of its images
            inputs = (read_data(args.data, data_root, [0, 1, 0], args.seed, args.keep_empty,
                                extra) if os.path.exists(args.data) else
                      {"real": None, "empty": 0, "extra": read_data_extra(extra)})
        else:
            inputs = read_data(args.data, data_root, [float(v) for v in args.split.split(",")],
                               args.seed, args.keep_empty, extra)
        check_output_dir(out, TOOL, args.overwrite)
    except (ConversionError, OutputFolderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if inputs["empty"]:
        print(f"note: {inputs['empty']} image(s) of {args.data} have no annotation and are left "
              f"out of training and validation (--keep-empty keeps them)")
    with run_in_place(out, TOOL):
        try:
            return train(args, inputs, out, config, data_root, eval_reserve, budget, elapsed)
        except (CalibrationError, budget_plan.BudgetError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
