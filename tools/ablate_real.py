#!/usr/bin/env python
"""Measure the levers of the real-cell recipe one at a time (tools/train_real.py's recipe).

    tools/ablate_real.py --seed 0 [--pretrain-iters 100] [--finetune-iters 150]
                         [--output output/ablation] [--data ../shared/data/sartorius_recon]

For one training seed: pretrains the recipe on fresh synthetic images, then fine-tunes each
variant (the recipe with one lever undone) on the real training images and evaluates it on
the real validation images (split seed 0: sartorius_recon_val). Variants that change the cost
of an iteration (no crops, native scale, no pretraining) get the recipe's wall time, converted
with seconds per iteration measured in this run. Test-time levers re-evaluate the recipe's
model. Writes OUTPUT/seed<N>/ablation.json; `--table` prints the markdown table of every seed
found under OUTPUT. Run one process per seed (e.g. each pinned to a core with taskset).
"""
import argparse
import glob
import json
import os
import sys

import yaml
from train_real import CONFIGS, calibrate, prepare_data, schedule, seconds_per_iteration, train_net

from cellseg_d2.utils import write_json

CLASSES = ("shsy5y", "astro", "cort")
with open(os.path.join(CONFIGS, "Base-YOLACT.yaml")) as f:
    BASE_ANCHORS = yaml.safe_load(f)["MODEL"]["ANCHOR_GENERATOR"]["SIZES"]
# name -> (what the variant undoes or changes, config overrides, cost key or None, pretrained)
TRAIN_VARIANTS = {
    "recipe": ("the recipe", [], None, True),
    "no_pretrain": ("no synthetic pretraining (random init, same wall time)", [], None, False),
    "no_crop": ("whole images instead of 256 px crops (same wall time)",
                ["INPUT.CROP.ENABLED", "False"], "no_crop", True),
    "no_rot": ("horizontal flip only (no vertical flip, no transpose)",
               ["INPUT.TRANSPOSE", "False", "INPUT.VERTICAL_FLIP", "False"], None, True),
    "multiscale": ("1.25-1.75x training scale instead of a fixed 1.5x",
                   ["INPUT.TRAIN_SCALE", "(1.25, 1.75)"], None, True),
    "native_scale": ("native scale (0.75-1.25x train, 1x test; 384 px crops) instead of 1.5x",
                     ["INPUT.TRAIN_SCALE", "(0.75, 1.25)", "INPUT.CROP.SIZE", "[384, 384]",
                      "INPUT.MIN_SIZE_TEST", "520", "INPUT.MAX_SIZE_TEST", "704"],
                     "native_scale", True),
    "crop_384": ("384 px crops instead of 256 (same wall time)", ["INPUT.CROP.SIZE", "[384, 384]"],
                 "crop_384", True),
    "anchors_1x": ("Base-YOLACT's anchors (sized for cells at the native scale)",
                   ["MODEL.ANCHOR_GENERATOR.SIZES", str(BASE_ANCHORS)], None, True),
}
# Test-time levers: the recipe's model evaluated with other settings.
TEST_VARIANTS = {
    "nms_0.3": ("Fast NMS IoU 0.3 instead of 0.5", ["MODEL.YOLACT.NMS_THRESH_TEST", "0.3"]),
    "nms_0.7": ("Fast NMS IoU 0.7 instead of 0.5", ["MODEL.YOLACT.NMS_THRESH_TEST", "0.7"]),
    # Every image is tested at the training scale (config.inference_scale); a second pass at
    # 1.3333x that for every voted type is a 2x test.
    "test_2x": ("2x test scale instead of 1.5x",
                ["MODEL.YOLACT.TEST_RESCALE_BY_TYPE", "[1.3333, 1.3333, 1.3333]"]),
    "mask_thresh_0.5": ("mask threshold 0.5 instead of 0.4",
                        ["MODEL.YOLACT.MASK_THRESH_TEST", "0.5"]),
    "no_test_flips": ("no test-time flips (one view instead of 4)",
                      ["MODEL.YOLACT.TEST_FLIPS", "[]"]),
}


def metrics_row(flat: dict) -> dict:
    row = {"AP": flat["segm/AP"], "kaggle": flat.get("kaggle/score", float("nan"))}
    row.update({c: flat[f"segm/AP-{c}"] for c in CLASSES})
    return row


def final_metrics(folder: str) -> dict:
    with open(os.path.join(folder, "metrics.json")) as f:
        return metrics_row([json.loads(line) for line in f if "segm/AP" in line][-1])


def evaluate(config, weights, opts, folder, data_root) -> dict:
    train_net(config, ["--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", folder, *opts],
              data_root, folder + ".log")
    with open(os.path.join(folder, "inference", "results.json")) as f:
        results = json.load(f)
    results = results.get("real_val", results)
    flat = {f"{task}/{k}": v for task, d in results.items() for k, v in d.items()}
    return metrics_row(flat)


def run_seed(args):
    config = os.path.join(CONFIGS, "real_R18_cpu.yaml")
    out = os.path.join(args.output, f"seed{args.seed}")
    data_root = os.path.abspath(os.path.join(args.output, f"data{args.seed}"))
    os.makedirs(out, exist_ok=True)
    if not os.path.isdir(os.path.join(data_root, "real")):
        prepare_data(args.data, data_root, (26, 8, 0), 0, args.synthetic_per_type)
    common = ["SEED", args.seed]
    no_eval = ["DATASETS.TEST", "()"]
    done = os.path.join(out, "ablation.json")  # an interrupted run resumes from it
    s_it, rows = {}, {}
    if os.path.isfile(done):
        with open(done) as f:
            saved = json.load(f)
        s_it, rows = saved["s_it"], saved["rows"]
    costly = [(name, "('real_train',)", v[1]) for name, v in TRAIN_VARIANTS.items()
              if v[2] and name in args.variants]
    for name, dataset, opts in [("synthetic", "('synthetic_train',)", []),
                                ("real", "('real_train',)", []), *costly]:
        if name in s_it:
            continue
        s_it[name] = calibrate(config, dataset, os.path.join(out, f"calibration_{name}"),
                               no_eval + common + opts, data_root)
    print(f"s/it: {s_it}", flush=True)
    pretrained = os.path.join(out, "pretrain", "model_final.pth")
    if not os.path.isfile(pretrained):
        train_net(config, ["DATASETS.TRAIN", "('synthetic_train',)", "MODEL.WEIGHTS", "",
                           *schedule(args.pretrain_iters), *no_eval,
                           "OUTPUT_DIR", os.path.join(out, "pretrain"), *common],
                  data_root, os.path.join(out, "pretrain.log"))
    s_it["pretrain_ran"] = seconds_per_iteration(os.path.join(out, "pretrain", "metrics.json"))
    for name, (what, opts, cost, from_pretrained) in TRAIN_VARIANTS.items():
        if (name not in args.variants and name != "recipe") or name in rows:
            continue
        iters = args.finetune_iters
        if cost:
            iters = max(1, round(iters * s_it["real"] / s_it[cost]))
        if not from_pretrained:
            iters += round(args.pretrain_iters * s_it["synthetic"] / s_it["real"])
        folder = os.path.join(out, name)
        if not os.path.isfile(os.path.join(folder, "model_final.pth")):
            train_net(config, ["MODEL.WEIGHTS", pretrained if from_pretrained else "",
                               *schedule(iters), "TEST.EVAL_PERIOD", iters, "OUTPUT_DIR", folder,
                               *common, *opts], data_root, folder + ".log")
        rows[name] = dict(final_metrics(folder), what=what, iterations=iters,
                          s_it=seconds_per_iteration(os.path.join(folder, "metrics.json")))
        print(name, rows[name], flush=True)
        write_json(done, {"s_it": s_it, "rows": rows})
    recipe_model = os.path.join(out, "recipe", "model_final.pth")
    for name, (what, opts) in TEST_VARIANTS.items():
        if name not in args.variants or name in rows:
            continue
        rows[name] = dict(evaluate(config, recipe_model, opts, os.path.join(out, name),
                                   data_root), what=what, iterations=args.finetune_iters)
        print(name, rows[name], flush=True)
        write_json(done, {"s_it": s_it, "rows": rows})


def table(output: str) -> str:
    runs = {}
    for path in sorted(glob.glob(os.path.join(output, "seed*", "ablation.json"))):
        with open(path) as f:
            runs[os.path.basename(os.path.dirname(path))] = json.load(f)["rows"]
    seeds = list(runs)
    lines = [f"| variant | iterations | {' | '.join(('segm AP',) + CLASSES + ('Kaggle',))} "
             f"| segm AP - recipe |", "|---|---:|" + "---:|" * 6]
    for name in runs[seeds[0]]:  # in the order they ran
        got = [runs[s][name] for s in seeds if name in runs[s]]
        cells = [" / ".join(f"{r[k]:.1f}" for r in got) for k in ("AP", *CLASSES, "kaggle")]
        delta = " / ".join(f"{r['AP'] - runs[s]['recipe']['AP']:+.1f}"
                           for s, r in zip(seeds, got))
        iters = " / ".join(str(r["iterations"]) for r in got)
        lines.append(f"| {got[0]['what']} | {iters} | {' | '.join(cells)} | {delta} |")
    return f"seeds: {', '.join(seeds)} (values per seed, separated by /)\n\n" + "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "shared", "data", "sartorius_recon"))
    p.add_argument("--output", default="output/ablation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-iters", type=int, default=100)
    p.add_argument("--finetune-iters", type=int, default=150)
    p.add_argument("--synthetic-per-type", type=int, default=30)
    p.add_argument("--variants", help="comma-separated subset of the variants (default: all)")
    p.add_argument("--table", action="store_true", help="print the table of finished seeds")
    args = p.parse_args(argv)
    args.variants = (args.variants.split(",") if args.variants
                     else [*TRAIN_VARIANTS, *TEST_VARIANTS])
    if args.table:
        print(table(args.output))
    else:
        run_seed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
