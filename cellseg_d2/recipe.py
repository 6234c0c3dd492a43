"""The real-cell recipe behind `make train-real` (tools/train_real.py): its data read and checked
before anything is written, the machine's seconds per iteration calibrated on each stage's
data, the budget shared between synthetic pretraining and fine-tuning (budget.py), each stage
a tools/train_net.py run with its own time limit, and the per-class report."""
import json
import os
import statistics
import subprocess
import sys

from detectron2.evaluation.testing import flatten_results_dict

from . import budget as budget_plan
from .config import load_cfg, schedule_opts
from .data.coco_input import read_coco_export
from .data.label_images import read_label_images, write_label_images
from .data.sartorius import (
    convert_sartorius,
    read_sartorius,
    write_splits,
)
from .data.synthetic import generate_dataset
from .data.training_folder import is_training_folder, read_training_folder
from .engine import native_bfloat16
from .evaluation.calibration import best_thresholds, calibrated
from .evaluation.files import kaggle_metric, load_ground_truth
from .utils import atomic_open, write_json

# the training entry point each stage runs (a separate process: its own time limit and log)
TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")
CONFIGS = os.path.join(TOOLS, "..", "configs")
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
    """A stage's schedule: steps at 80% and 95% (none under 20 iterations), warm-up a quarter
    of it, at most 30 iterations."""
    return schedule_opts(iters, (0.8, 0.95), max_warmup=30, warmup_divisor=4,
                         min_iters_for_steps=20)


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
    points = operating_points(out, data_root) if args.arch == "yolact" else None
    report(out, elapsed(), s_it, pre, fine, args, amp, why,
           {k: v for k, v in stopped.items() if v is not None}, points=points)
    return 0


def operating_points(out: str, data_root: str) -> dict:
    """Each class's threshold where its F1 on the validation images is best
    (evaluation.calibration), from the final evaluation's detections, written into the model's
    config (MODEL.YOLACT.TEST_SCORE_THRESH_BY_CLASS): predictions with the model call cells
    there. Returns {class: {"thresh", "f1", "precision", "recall", "kaggle"}} on those images,
    recall and Kaggle at the thresholds (a class without validation cells keeps 0.5)."""
    gt = load_ground_truth(os.path.join(data_root, "real", "annotations", "val.json"))
    with open(os.path.join(out, "inference", "real_val", "coco_instances_results.json")) as f:
        results = json.load(f)
    cats = sorted(gt.getCatIds())
    names = [c["name"] for c in gt.loadCats(cats)]
    best = best_thresholds(gt, results, names)
    thresholds = [best[n]["thresh"] if best[n] else 0.5 for n in names]
    config = os.path.join(out, "config.yaml")
    cfg = load_cfg(config)
    cfg.MODEL.YOLACT.TEST_SCORE_THRESH_BY_CLASS = thresholds
    with atomic_open(config, "w") as f:
        f.write(cfg.dump())
    kaggle = kaggle_metric(gt, calibrated(results, dict(zip(cats, thresholds))), 0.5, names)
    return {n: dict(best[n] or {"thresh": 0.5}, kaggle=kaggle.get(f"score-{n}"))
            for n in names} | {"all": {"kaggle": kaggle["score"]}}


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


def report(out, wall, s_it, pre, fine, args, amp, why, stopped, evaluation=None, points=None):
    """Print and write (train_real.json) the run's per-class table, from its final evaluation
    (in ``out``, or the --eval-only run in ``evaluation``); with ``points`` (operating_points),
    each class's threshold and its Kaggle score and recall there."""
    evaluation = evaluation or out
    with open(os.path.join(evaluation, "inference", "real_val", "per_class_segm.json")) as f:
        table = json.load(f)
    final = final_metrics(evaluation)
    kaggle = points["all"]["kaggle"] if points else final["kaggle/score"]
    print(f"\nreal_val (mask AP at up to 1000 detections, %): segm AP {final['segm/AP']:.1f}, "
          f"bbox AP {final['bbox/AP']:.1f}, Kaggle {kaggle:.1f}")
    extra = f" {'thresh':>7s} {'recall':>7s}" if points else ""
    print(f"{'class':8s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'Kaggle':>7s}{extra}")
    for name, v in table.items():
        row = f"{name:8s} {v['AP']:6.1f} {v['AP50']:6.1f} {v['AP75']:6.1f}"
        if points:  # Kaggle and recall (IoU 0.5) at the class's threshold
            p = points[name]
            row += f" {nan_if_none(p['kaggle']):7.1f} {p['thresh']:7.2f} " \
                   f"{100 * nan_if_none(p.get('recall')):6.0f}%"
        else:
            row += f" {final.get(f'kaggle/score-{name}', float('nan')):7.1f}"
        print(row)
    if points:
        print("(Kaggle and recall at each class's threshold, chosen on these images where its "
              "F1 is best: written into config.yaml, MODEL.YOLACT.TEST_SCORE_THRESH_BY_CLASS)")
    stages = " + ".join(
        ([f"{pre} iterations at {s_it['synthetic']:.2f} s/it"] if pre else []) +
        ([f"{fine} at {s_it['real']:.2f} s/it"] if fine else ["on synthetic images only"]))
    print(f"wall time {wall / 60:.1f} min ({stages}, as calibrated, {PRECISION_NAMES[amp]}); "
          f"model: {out}/model_final.pth, config: {out}/config.yaml")
    for stage, it in stopped.items():
        print(f"note: the {stage} reached its time limit at iteration {it}: the rest was skipped")
    write_json(os.path.join(out, "train_real.json"), dict(
        summary(args, wall, s_it, amp, why, pre, fine, stopped), segm_per_class=table,
        metrics={k: v for k, v in final.items() if "/" in k}, operating_points=points))


def nan_if_none(v) -> float:
    return float("nan") if v is None else v
