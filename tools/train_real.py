#!/usr/bin/env python
"""Train a real-cell model on a CPU within a wall-time budget (`make train-real`).

    tools/train_real.py [--data ../shared/data/sartorius_recon] [--minutes 60]
                        [--output output/real_cpu] [--arch yolact|maskrcnn]

1. converts --data (the Kaggle layout: train.csv + train/*.png; or a COCO instances JSON with
   categories named shsy5y / astro / cort and image paths relative to it) into
   OUTPUT/data/real with a seeded split stratified by cell type (--split; by default 26,8,0,
   which on sartorius_recon is exactly sartorius_recon_{train,val});
2. generates fresh synthetic images of the three cell types (the project's generator);
3. measures this machine's seconds per iteration on each stage's data (6 iterations each;
   with --precision auto, the real images' in float32 and in bfloat16 autocast, and trains in
   the faster) and shares the remaining time (--pretrain-share of it to pretraining;
   re-planned after pretraining, so the budget holds) between pretraining on the synthetic
   images and fine-tuning on the real training images;
4. evaluates on the real validation images and prints the per-class table.

OUTPUT holds Detectron2's usual config.yaml, model_final.pth, metrics.json and
inference/real_val/; pretrain/ holds the synthetic stage. Evaluate the model later with
CELLSEG_DATASETS=OUTPUT/data tools/train_net.py --config-file OUTPUT/config.yaml --eval-only
MODEL.WEIGHTS OUTPUT/model_final.pth.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from cellseg_d2.data.coco_input import convert_coco
from cellseg_d2.data.label_images import convert_label_images
from cellseg_d2.data.sartorius import ConversionError, convert_sartorius
from cellseg_d2.data.synthetic import generate_dataset
from cellseg_d2.utils import write_json

TOOLS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(TOOLS, "..", "configs")
# Each architecture's recipe config and the seconds kept for its final evaluation on ~8 images
# with up to 1000 detections, with its test-time augmentation, and start-up: YOLACT's 4 views
# took ~1 min on 2 cores (76 s on one core with its shsy5y image run again at 2x, 23 s of it; a
# folder of only shsy5y images would take ~3x); Mask R-CNN's mask head runs per detection, and
# its 2 views took 3.4 min on one core.
ARCHS = {"yolact": ("real_R18_cpu.yaml", 180), "maskrcnn": ("real_maskrcnn_R18_cpu.yaml", 300)}
CALIBRATION_ITERS = 6  # per stage
PRECISION_NAMES = {False: "float32", True: "bfloat16 autocast"}  # by SOLVER.AMP.ENABLED


def train_net(config, opts, data_root, log_path):
    """Run tools/train_net.py; its log goes to log_path, errors to the terminal."""
    env = dict(os.environ, CELLSEG_DATASETS=data_root)
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, os.path.join(TOOLS, "train_net.py"),
                               "--config-file", config, *map(str, opts)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read().splitlines()[-5:]
        raise RuntimeError(f"train_net failed (log: {log_path}):\n" + "\n".join(tail))


def seconds_per_iteration(metrics_file: str) -> float:
    with open(metrics_file) as f:
        times = [json.loads(line).get("time") for line in f]
    times = [t for t in times if t is not None]
    return statistics.median(times) if times else float("nan")


def calibrate(config, dataset, folder, opts, data_root) -> float:
    """Median seconds per training iteration on ``dataset`` (a DATASETS.TRAIN value)
    (CALIBRATION_ITERS iterations)."""
    train_net(config, ["DATASETS.TRAIN", dataset, "MODEL.WEIGHTS", "",
                       *schedule(CALIBRATION_ITERS), "OUTPUT_DIR", folder, *opts],
              data_root, folder + ".log")
    s_it = seconds_per_iteration(os.path.join(folder, "metrics.json"))
    for f in os.listdir(folder):  # keep only what it measured
        if f != "metrics.json":
            os.remove(os.path.join(folder, f))
    return s_it


def prepare_data(data, data_root, split, seed, synthetic_per_type, extra=None):
    """``data`` (Kaggle folder or COCO JSON) -> data_root/real (real_train, real_val, ...),
    freshly generated images -> data_root/synthetic (synthetic_train) and, if ``extra`` is
    (folder, cell type, scale), its label images -> data_root/extra (extra_train)."""
    if data.lower().endswith(".json"):
        convert_coco(data, os.path.join(data_root, "real"), split=split, seed=seed)
    else:
        convert_sartorius(data, os.path.join(data_root, "real"), split=split, seed=seed,
                          progress=False)
    synthetic = os.path.join(data_root, "synthetic")
    generate_dataset(synthetic, images_per_type=synthetic_per_type, seed=1000 + seed,
                     progress=False)
    convert_sartorius(synthetic, synthetic, split=(3 * synthetic_per_type, 0, 0), progress=False)
    if extra:
        convert_label_images(extra[0], os.path.join(data_root, "extra"), extra[1], extra[2])


def schedule(iters: int) -> list:
    steps = f"({int(iters * 0.8)}, {int(iters * 0.95)})" if iters >= 20 else "()"
    return ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", steps,
            "SOLVER.WARMUP_ITERS", min(30, iters // 4)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=os.path.join(TOOLS, "..", "..", "shared", "data",
                                                  "sartorius_recon"),
                   help="Kaggle-layout folder (train.csv, train/) or COCO instances JSON")
    p.add_argument("--output", help="default output/real_cpu (output/real_<arch>_cpu)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="yolact")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-time budget, all included")
    p.add_argument("--split", default="26,8,0", help="train,val,test of --data (see "
                   "tools/convert_sartorius.py)")
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
                   help="training arithmetic; auto: the real images' iteration is timed in "
                        "both and bfloat16 autocast (SOLVER.AMP.ENABLED) taken if it is at least "
                        "5%% faster, as on CPUs with AVX512-BF16 / AMX (evaluation is float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both stages")
    args = p.parse_args(argv)
    start = time.time()
    out = args.output or ("output/real_cpu" if args.arch == "yolact" else
                          f"output/real_{args.arch}_cpu")
    config_name, eval_reserve = ARCHS[args.arch]
    config = os.path.join(CONFIGS, config_name)
    data_root = os.path.abspath(os.path.join(out, "data"))
    if args.extra and args.pretrain_share <= 0:
        print("error: --extra joins the synthetic pretraining, which --pretrain-share 0 turns off",
              file=sys.stderr)
        return 1
    if os.path.isdir(out):  # this tool's own folder: replaced whole
        print(f"replacing {out} from an earlier run")
        shutil.rmtree(out)
    os.makedirs(out)
    try:
        prepare_data(args.data, data_root, [float(v) for v in args.split.split(",")], args.seed,
                     args.synthetic_per_type,
                     (args.extra, args.extra_type, args.extra_scale) if args.extra else None)
    except (ConversionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[{time.time() - start:5.0f} s] data: {args.data} -> {data_root}/real, "
          f"{3 * args.synthetic_per_type} synthetic images" +
          (f", {args.extra} -> {data_root}/extra" if args.extra else ""))
    pretrain_sets = str(("synthetic_train", "extra_train") if args.extra else ("synthetic_train",))

    no_eval = ["DATASETS.TEST", "()"]  # the stages before the last are not evaluated
    # Each stage is timed on its own data: synthetic crops hold more cells than real ones
    # and cost Mask R-CNN (whose mask head runs per cell) about twice as much per iteration.
    def stage_opts(amp: bool) -> list:
        return ["SEED", args.seed, "SOLVER.AMP.ENABLED", amp, *args.opts]

    s_it = {}
    if args.precision == "auto":
        timed = {amp: calibrate(config, "('real_train',)",
                                os.path.join(out, f"calibration_real_amp_{amp}"),
                                no_eval + stage_opts(amp), data_root)
                 for amp in (False, True)}
        amp = timed[True] < 0.95 * timed[False]
        s_it["real"] = timed[amp]
        print(f"[{time.time() - start:5.0f} s] {timed[False]:.2f} s/it in float32, "
              f"{timed[True]:.2f} s/it with bfloat16 autocast: training in "
              f"{PRECISION_NAMES[amp]}")
    else:
        amp = args.precision == "bfloat16"
    common = stage_opts(amp)
    stages = (("synthetic", pretrain_sets), ("real", "('real_train',)"))
    s_it.update({stage: calibrate(config, dataset, os.path.join(out, f"calibration_{stage}"),
                                  no_eval + common, data_root)
                 for stage, dataset in stages if stage not in s_it})
    left = args.minutes * 60 - (time.time() - start) - eval_reserve
    pre = (max(1, int(left * args.pretrain_share / (s_it["synthetic"] * 1.04)))
           if args.pretrain_share > 0 else 0)  # 4%: each stage's start-up
    fine = max(1, int((left - pre * s_it["synthetic"]) / (s_it["real"] * 1.04)))
    print(f"[{time.time() - start:5.0f} s] {s_it['synthetic']:.2f} s/it on synthetic, "
          f"{s_it['real']:.2f} s/it on real images on this machine: {pre} iterations on "
          f"synthetic images, {fine} on the real ones")

    weights = ""
    if pre:
        train_net(config, ["DATASETS.TRAIN", pretrain_sets, "MODEL.WEIGHTS", "", *schedule(pre),
                           *no_eval, "OUTPUT_DIR", os.path.join(out, "pretrain"), *common],
                  data_root, os.path.join(out, "pretrain.log"))
        weights = os.path.join(out, "pretrain", "model_final.pth")
        # Re-plan with the time actually left, and the real images' s/it scaled by how far the
        # pretraining's own s/it was from its calibration (both were timed in the same
        # conditions; a longer run on a busy machine drifts the same way). Faster than
        # calibrated counts down to 0.9x: bfloat16 iterations speed up over the first ~50 (to
        # ~0.8x the 6 calibrated on one core), float32 ones drift by +-5%.
        drift = seconds_per_iteration(os.path.join(out, "pretrain", "metrics.json")) \
            / s_it["synthetic"]
        drift = drift if drift == drift else 1.0  # NaN: pretraining too short to log a time
        left = args.minutes * 60 - (time.time() - start) - eval_reserve
        fine = max(1, int(left / (s_it["real"] * max(drift, 0.9) * 1.02)))
        print(f"[{time.time() - start:5.0f} s] pretrained -> {weights}; {fine} iterations on the "
              f"real images")
    train_net(config, ["MODEL.WEIGHTS", weights, *schedule(fine), "TEST.EVAL_PERIOD", fine,
                       "OUTPUT_DIR", out, *common], data_root, os.path.join(out, "finetune.log"))
    wall = time.time() - start
    report(out, wall, s_it, pre, fine, args, amp)
    return 0


def report(out, wall, s_it, pre, fine, args, amp):
    with open(os.path.join(out, "inference", "real_val", "per_class_segm.json")) as f:
        table = json.load(f)
    with open(os.path.join(out, "metrics.json")) as f:
        final = [json.loads(line) for line in f if "segm/AP" in line][-1]
    print(f"\nreal_val (mask AP at up to 1000 detections, %): segm AP {final['segm/AP']:.1f}, "
          f"bbox AP {final['bbox/AP']:.1f}, Kaggle {final['kaggle/score']:.1f}")
    print(f"{'class':8s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'Kaggle':>7s}")
    for name, v in table.items():
        kaggle = final.get(f"kaggle/score-{name}", float("nan"))
        print(f"{name:8s} {v['AP']:6.1f} {v['AP50']:6.1f} {v['AP75']:6.1f} {kaggle:7.1f}")
    print(f"wall time {wall / 60:.1f} min ({pre} iterations at {s_it['synthetic']:.2f} s/it + "
          f"{fine} at {s_it['real']:.2f} s/it, as calibrated, "
          f"{PRECISION_NAMES[amp]}); "
          f"model: {out}/model_final.pth, config: {out}/config.yaml")
    write_json(os.path.join(out, "train_real.json"), {
        "data": os.path.abspath(args.data), "arch": args.arch, "minutes_budget": args.minutes,
        "wall_s": round(wall, 1), "s_per_it": {k: round(v, 3) for k, v in s_it.items()},
        "precision": PRECISION_NAMES[amp], "pretrain_iters": pre,
        "finetune_iters": fine, "seed": args.seed, "segm_per_class": table,
        "metrics": {k: v for k, v in final.items() if "/" in k}})


if __name__ == "__main__":
    sys.exit(main())
