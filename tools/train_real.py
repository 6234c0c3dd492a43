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
import json
import os
import statistics
import subprocess
import sys
import time

from detectron2.evaluation.testing import flatten_results_dict

from cellseg_d2 import budget as budget_plan
from cellseg_d2.data.coco_input import read_coco_export
from cellseg_d2.data.label_images import read_label_images, write_label_images
from cellseg_d2.data.sartorius import (
    ConversionError,
    convert_sartorius,
    read_sartorius,
    write_splits,
)
from cellseg_d2.data.synthetic import generate_dataset
from cellseg_d2.data.training_folder import is_training_folder, read_training_folder
from cellseg_d2.engine import native_bfloat16
from cellseg_d2.run_folder import OutputFolderError, check_output_dir, run_in_place
from cellseg_d2.utils import write_json

TOOL = "tools/train_real.py"
TOOLS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(TOOLS, "..", "configs")
DEFAULT_DATA = os.path.join(TOOLS, "..", "..", "shared", "data", "sartorius_recon")
# Each architecture's recipe config and the seconds kept for its final evaluation on ~8 images
# with up to 1000 detections, with its test-time augmentation, and start-up: YOLACT's 4 views
# took ~1 min on 2 cores (76 s on one core with its shsy5y image run again at 2x, 23 s of it; a
# folder of only shsy5y images would take ~3x); Mask R-CNN's mask head runs per detection, and
# its 2 views took 3.4 min on one core. The reserve grows on machines slower than
# RESERVE_S_PER_IT (float32 seconds per real-image iteration).
ARCHS = {"yolact": ("real_R18_cpu.yaml", 180), "maskrcnn": ("real_maskrcnn_R18_cpu.yaml", 300)}
RESERVE_S_PER_IT = 3.0
CALIBRATION_ITERS = 6  # per stage
PRECISION_NAMES = {False: "float32", True: "bfloat16 autocast"}  # by SOLVER.AMP.ENABLED


class CalibrationError(RuntimeError):
    pass


def train_net(config, opts, data_root, log_path, timeout=None):
    """Run tools/train_net.py; its log goes to log_path, errors to the terminal. With
    ``timeout`` (seconds) a run still going then is stopped and subprocess.TimeoutExpired
    raised."""
    env = dict(os.environ, CELLSEG_DATASETS=data_root)
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, os.path.join(TOOLS, "train_net.py"),
                               "--config-file", config, *map(str, opts)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read().splitlines()[-5:]
        raise RuntimeError(f"train_net failed (log: {log_path}):\n" + "\n".join(tail))


def seconds_per_iteration(metrics_file: str) -> float:
    """Median seconds per iteration in a metrics.json, over the iterations trained (not those
    skipped past SOLVER.MAX_SECONDS)."""
    with open(metrics_file) as f:
        rows = [json.loads(line) for line in f]
    stop = min((r["time_limit_iter"] for r in rows if "time_limit_iter" in r), default=None)
    times = [r["time"] for r in rows
             if r.get("time") is not None and (stop is None or r.get("iteration", 0) < stop)]
    return statistics.median(times) if times else float("nan")


def calibrate(config, dataset, folder, opts, data_root, timeout=None) -> float:
    """Median seconds per training iteration on ``dataset`` (a DATASETS.TRAIN value)
    (CALIBRATION_ITERS iterations). A run that takes longer than ``timeout`` seconds is
    stopped and counted as timeout / CALIBRATION_ITERS seconds per iteration (at least that)."""
    try:
        train_net(config, ["DATASETS.TRAIN", dataset, "MODEL.WEIGHTS", "",
                           *schedule(CALIBRATION_ITERS), "OUTPUT_DIR", folder, *opts],
                  data_root, folder + ".log", timeout=timeout)
        s_it = seconds_per_iteration(os.path.join(folder, "metrics.json"))
    except subprocess.TimeoutExpired:
        s_it = timeout / CALIBRATION_ITERS
    for f in os.listdir(folder) if os.path.isdir(folder) else ():  # keep what it measured
        if f not in ("metrics.json", "config.yaml"):
            os.remove(os.path.join(folder, f))
    if s_it != s_it:
        raise CalibrationError(f"the calibration run logged no iteration time (log: "
                               f"{folder}.log)")
    return s_it


def read_data(data, data_root, split, seed, keep_empty=False, extra=None) -> dict:
    """Everything prepare_data writes, read and checked first (a bad row, entry or image is
    one ConversionError): {"real": {split: coco}, "empty": images left out, "extra": ...}."""
    real_dir = os.path.join(data_root, "real")
    if data.lower().endswith(".json"):
        real, empty = read_coco_export(data, real_dir, split=split, seed=seed,
                                       keep_empty=keep_empty)
    elif is_training_folder(data):
        real, empty = read_training_folder(data, real_dir, split=split, seed=seed), 0
    else:
        real, empty = read_sartorius(data, real_dir, split=split, seed=seed, progress=False), 0
    return {"real": real, "empty": empty, "extra": read_data_extra(extra)}


def read_data_extra(extra):
    return read_label_images(*extra) if extra else None


def write_data(inputs: dict, data_root, seed, synthetic_per_type) -> None:
    """read_data's conversions -> data_root/real (real_train, real_val, ...) and data_root/extra
    (extra_train); freshly generated images -> data_root/synthetic (synthetic_train)."""
    if inputs["real"]:
        write_splits(os.path.join(data_root, "real"), inputs["real"])
    synthetic = os.path.join(data_root, "synthetic")
    generate_dataset(synthetic, images_per_type=synthetic_per_type, seed=1000 + seed,
                     progress=False)
    convert_sartorius(synthetic, synthetic, split=(3 * synthetic_per_type, 0, 0), progress=False)
    if inputs["extra"]:
        write_label_images(os.path.join(data_root, "extra"), inputs["extra"])


def prepare_data(data, data_root, split, seed, synthetic_per_type, extra=None):
    """``data`` (Kaggle folder or COCO JSON) and ``extra`` ((folder, cell type, scale) of label
    images, or None) read, checked and written under data_root (read_data, write_data)."""
    write_data(read_data(data, data_root, split, seed, extra=extra), data_root, seed,
               synthetic_per_type)


def schedule(iters: int) -> list:
    steps = f"({int(iters * 0.8)}, {int(iters * 0.95)})" if iters >= 20 else "()"
    return ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", steps,
            "SOLVER.WARMUP_ITERS", min(30, iters // 4)]


def choose_precision(choice: str, native: bool, time_both) -> tuple:
    """(bfloat16 autocast?, why, {amp: s/it} or None): --precision auto times both (``time_both()`` ->
    {amp: s/it}) only where the CPU has native bfloat16, and takes bfloat16 if at least 5%
    faster; without native bfloat16 it is float32 without trying (emulated bfloat16 is ~30x
    slower)."""
    if choice == "float32":
        return False, "--precision float32", None
    if choice == "bfloat16":
        why = "--precision bfloat16" + ("" if native else
                                        " (this CPU has no native bfloat16: emulated, slow)")
        return True, why, None
    if not native:
        return False, ("this CPU has no native bfloat16 (no AVX512-BF16 / AMX in its flags): "
                       "float32, bfloat16 not tried"), None
    timed = time_both()
    amp = timed[True] < 0.95 * timed[False]
    return amp, (f"{timed[False]:.2f} s/it in float32, {timed[True]:.2f} s/it with bfloat16 "
                 f"autocast"), timed


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


def train(args, inputs, out, config, data_root, eval_reserve, budget, elapsed):
    write_data(inputs, data_root, args.seed, args.synthetic_per_type)
    print(f"[{elapsed():5.0f} s] data: {args.data} -> {data_root}/real, "
          f"{3 * args.synthetic_per_type} synthetic images" +
          (f", {args.extra} -> {data_root}/extra" if args.extra else ""))
    pretrain_sets = str(("synthetic_train", "extra_train") if args.extra else ("synthetic_train",))

    no_eval = ["DATASETS.TEST", "()"]  # the stages before the last are not evaluated
    # Each stage is timed on its own data: synthetic crops hold more cells than real ones
    # and cost Mask R-CNN (whose mask head runs per cell) about twice as much per iteration.
    def stage_opts(amp: bool) -> list:
        return ["SEED", args.seed, "SOLVER.AMP.ENABLED", amp, *args.opts]

    # A calibration gets at most 4% of the budget (a minute at least): a CPU far slower than
    # expected (or emulating bfloat16) costs that, not the budget.
    limit = max(60.0, 0.04 * budget)
    startups = []

    def timed_calibration(stage, dataset, amp, name):
        begun = elapsed()
        s_it = calibrate(config, dataset, os.path.join(out, name), no_eval + stage_opts(amp),
                         data_root, timeout=limit)
        startups.append(max(0.0, elapsed() - begun - CALIBRATION_ITERS * s_it))
        return s_it

    stages = (("synthetic", pretrain_sets),) if args.synthetic_only else \
        (("synthetic", pretrain_sets), ("real", "('real_train',)"))[
            0 if args.pretrain_share > 0 else 1:]
    timed_stage, timed_sets = stages[-1]  # the precision is chosen on the last stage's data
    amp, why, timed = choose_precision(args.precision, native_bfloat16(), lambda: {
        a: timed_calibration(timed_stage, timed_sets, a, f"calibration_{timed_stage}_amp_{a}")
        for a in (False, True)})
    print(f"[{elapsed():5.0f} s] {why}: training in {PRECISION_NAMES[amp]}")
    s_it = {timed_stage: timed[amp]} if timed else {}
    s_it.update({stage: timed_calibration(stage, dataset, amp, f"calibration_{stage}")
                 for stage, dataset in stages if stage not in s_it})
    startup = statistics.median(startups)  # a stage's start-up: loading, building, first data
    float32_s_it = timed[False] if timed else s_it[timed_stage]
    if args.eval_reserve is not None:
        eval_reserve = args.eval_reserve
    else:
        eval_reserve *= max(1.0, float32_s_it / RESERVE_S_PER_IT)
    common = stage_opts(amp)
    if args.synthetic_only:
        return train_synthetic_only(args, inputs, out, config, data_root, budget, elapsed, s_it,
                                    startup, pretrain_sets, common, amp, why)
    spent = elapsed() + eval_reserve
    pre, fine = budget_plan.plan(budget - spent, s_it, startup, args.pretrain_share, spent)
    timed_on = f"{s_it['synthetic']:.2f} s/it on synthetic, " if pre else ""
    print(f"[{elapsed():5.0f} s] {timed_on}{s_it['real']:.2f} s/it on real images on this "
          f"machine ({startup:.0f} s start-up per stage, {eval_reserve:.0f} s kept for the "
          f"evaluation): {pre} iterations on synthetic images, {fine} on the real ones")

    weights, stopped = "", {}
    if pre:
        # The time limit stops a pretraining far slower than calibrated (a busy machine).
        train_net(config, ["DATASETS.TRAIN", pretrain_sets, "MODEL.WEIGHTS", "", *schedule(pre),
                           *no_eval, "OUTPUT_DIR", os.path.join(out, "pretrain"),
                           "SOLVER.MAX_SECONDS", max(1, round(1.25 * pre * s_it["synthetic"])),
                           *common], data_root, os.path.join(out, "pretrain.log"))
        weights = os.path.join(out, "pretrain", "model_final.pth")
        stopped["pretrain"] = time_limit_iter(os.path.join(out, "pretrain", "metrics.json"))
        # Re-planned with the time actually left and the pretraining's measured speed.
        drift = seconds_per_iteration(os.path.join(out, "pretrain", "metrics.json")) \
            / s_it["synthetic"]
        fine = budget_plan.replan(budget - elapsed() - eval_reserve, s_it["real"], drift, startup)
        print(f"[{elapsed():5.0f} s] pretrained -> {weights}; {fine} iterations on the "
              f"real images")
    # The fine-tune stops where the budget (less the evaluation) ends, should it run slower
    # than planned; its last checkpoint and evaluation still follow.
    limit_s = max(1, round(budget - elapsed() - eval_reserve - startup))
    train_net(config, ["MODEL.WEIGHTS", weights, *schedule(fine), "TEST.EVAL_PERIOD", fine,
                       "OUTPUT_DIR", out, "SOLVER.MAX_SECONDS", limit_s, *common],
              data_root, os.path.join(out, "finetune.log"))
    stopped["finetune"] = time_limit_iter(os.path.join(out, "metrics.json"))
    report(out, elapsed(), s_it, pre, fine, args, amp, why,
           {k: v for k, v in stopped.items() if v is not None})
    return 0


def train_synthetic_only(args, inputs, out, config, data_root, budget, elapsed, s_it, startup,
                         pretrain_sets, common, amp, why):
    """--synthetic-only: the pretraining stage for the whole budget, written to OUTPUT itself
    (a model folder like any other); then, past the budget, evaluated on every image of --data
    where --data is there (the model's measured worth on real cells, not part of making it)."""
    evaluate = inputs["real"] is not None
    pre = budget_plan.plan_synthetic_only(budget - elapsed(), s_it["synthetic"], startup,
                                          elapsed())
    print(f"[{elapsed():5.0f} s] {s_it['synthetic']:.2f} s/it on synthetic images on this "
          f"machine: {pre} iterations" + (f", then evaluated on the {args.data} images (after "
                                           f"the budget)" if evaluate else ""))
    limit_s = max(1, round(budget - elapsed() - startup))
    train_net(config, ["DATASETS.TRAIN", pretrain_sets, "MODEL.WEIGHTS", "", *schedule(pre),
                       "DATASETS.TEST", "()", "OUTPUT_DIR", out, "SOLVER.MAX_SECONDS", limit_s,
                       *common], data_root, os.path.join(out, "train.log"))
    stopped = time_limit_iter(os.path.join(out, "metrics.json"))
    stopped = {} if stopped is None else {"training": stopped}
    trained_s = elapsed()
    if not evaluate:
        print(f"wall time {trained_s / 60:.1f} min ({pre} iterations at "
              f"{s_it['synthetic']:.2f} s/it, {PRECISION_NAMES[amp]}); no --data to evaluate on; "
              f"model: {out}/model_final.pth, config: {out}/config.yaml")
        write_json(os.path.join(out, "train_real.json"), summary(
            args, trained_s, s_it, amp, why, pre, 0, stopped))
        return 0
    # Detectron2's evaluation of the saved model, as `tools/train_net.py --eval-only` runs it;
    # its metrics are appended to metrics.json like a final evaluation's.
    evaluation = os.path.join(out, "evaluation")
    train_net(os.path.join(out, "config.yaml"),
              ["--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
               "DATASETS.TEST", "('real_val',)", "OUTPUT_DIR", evaluation], data_root,
              os.path.join(out, "evaluation.log"))
    print(f"[{elapsed():5.0f} s] trained in {trained_s / 60:.1f} min, evaluated in "
          f"{(elapsed() - trained_s) / 60:.1f} min more")
    report(out, trained_s, s_it, pre, 0, args, amp, why, stopped, evaluation)
    return 0


def summary(args, wall, s_it, amp, why, pre, fine, stopped) -> dict:
    return {"data": os.path.abspath(args.data), "arch": args.arch,
            "synthetic_only": args.synthetic_only, "minutes_budget": args.minutes,
            "wall_s": round(wall, 1), "s_per_it": {k: round(v, 3) for k, v in s_it.items()},
            "precision": PRECISION_NAMES[amp], "precision_why": why, "pretrain_iters": pre,
            "finetune_iters": fine, "time_limit_iter": stopped, "seed": args.seed}


def time_limit_iter(metrics_file: str):
    """The iteration where SOLVER.MAX_SECONDS stopped a run (None if it did not)."""
    with open(metrics_file) as f:
        rows = [json.loads(line) for line in f]
    return next((int(r["time_limit_iter"]) for r in rows if "time_limit_iter" in r), None)


def final_metrics(folder: str) -> dict:
    """The last evaluation's flat metrics ("segm/AP", "kaggle/score", ...) in a training's
    metrics.json, or an --eval-only run's inference/results.json."""
    results = os.path.join(folder, "inference", "results.json")
    if os.path.isfile(results):
        with open(results) as f:
            return flatten_results_dict(json.load(f))
    with open(os.path.join(folder, "metrics.json")) as f:
        return [json.loads(line) for line in f if "segm/AP" in line][-1]


def report(out, wall, s_it, pre, fine, args, amp, why, stopped, evaluation=None):
    """Print and write (train_real.json) the run's per-class table, from its final evaluation
    (in ``out``, or the --eval-only run in ``evaluation``)."""
    evaluation = evaluation or out
    with open(os.path.join(evaluation, "inference", "real_val", "per_class_segm.json")) as f:
        table = json.load(f)
    final = final_metrics(evaluation)
    print(f"\nreal_val (mask AP at up to 1000 detections, %): segm AP {final['segm/AP']:.1f}, "
          f"bbox AP {final['bbox/AP']:.1f}, Kaggle {final['kaggle/score']:.1f}")
    print(f"{'class':8s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'Kaggle':>7s}")
    for name, v in table.items():
        kaggle = final.get(f"kaggle/score-{name}", float("nan"))
        print(f"{name:8s} {v['AP']:6.1f} {v['AP50']:6.1f} {v['AP75']:6.1f} {kaggle:7.1f}")
    stages = " + ".join(
        ([f"{pre} iterations at {s_it['synthetic']:.2f} s/it"] if pre else []) +
        ([f"{fine} at {s_it['real']:.2f} s/it"] if fine else ["on synthetic images only"]))
    print(f"wall time {wall / 60:.1f} min ({stages}, as calibrated, {PRECISION_NAMES[amp]}); "
          f"model: {out}/model_final.pth, config: {out}/config.yaml")
    for stage, it in stopped.items():
        print(f"note: the {stage} reached its time limit at iteration {it}: the rest was skipped")
    write_json(os.path.join(out, "train_real.json"), dict(
        summary(args, wall, s_it, amp, why, pre, fine, stopped), segm_per_class=table,
        metrics={k: v for k, v in final.items() if "/" in k}))


if __name__ == "__main__":
    sys.exit(main())
