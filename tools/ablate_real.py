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
found under OUTPUT. Run one process per seed (e.g. each pinned to a core with taskset). A row
stored there is reused only where it ran at today's test-time settings; otherwise its model is
evaluated again (a trained variant's into <variant>/evaluation), not retrained.

    tools/ablate_real.py --folds 4 [--variants recipe,no_rot] [--pretrain-iters ...] ...

--folds K cross-validates instead (how recipe choices are judged: the 8 fixed validation
images hold 2 astro and 1 shsy5y image): the images of --data are split into K folds
stratified by cell type (every image validated once; sartorius_recon's 4 folds hold 2-3 astro
and 1 shsy5y image each); one pretraining on synthetic images is shared (a variant whose
network has another shape, such as prototypes_64, pretrains its own with its overrides), then
each variant (default: the recipe) is fine-tuned on each fold's training images and its
detections on the fold's validation images are pooled and scored against all the images at
once: per-class AP, AP50, Kaggle, each class's recall at the prediction threshold
(TEST.INSTANCE_SCORE_THRESH) and per-image counts. Writes
OUTPUT/cv<K>_seed<N>/<variant>/cv.json and per_image.csv. A fold model already trained, or an
evaluation already made, is reused; an evaluation only where it ran at today's test-time
settings (the config's, with the variant's overrides): otherwise the model is evaluated again
(a trained variant's into fold<F>/evaluation).
"""
import argparse
import glob
import json
import os
import sys

import yaml

from cellseg_d2.config import SetupError, load_cfg
from cellseg_d2.data.sartorius import convert_sartorius, read_sartorius, write_splits
from cellseg_d2.data.synthetic import generate_dataset
from cellseg_d2.engine import native_bfloat16
from cellseg_d2.evaluation.calibration import held_out_calibration
from cellseg_d2.evaluation.files import load_ground_truth
from cellseg_d2.evaluation.pooled import cross_validation_report, pool_folds
from cellseg_d2.outputs import write_csv
from cellseg_d2.recipe import (
    CONFIGS,
    calibrate,
    prepare_data,
    schedule,
    seconds_per_iteration,
    train_net,
)
from cellseg_d2.utils import write_json

CLASSES = ("shsy5y", "astro", "cort")
with open(os.path.join(CONFIGS, "Base-YOLACT.yaml")) as f:
    BASE_ANCHORS = yaml.safe_load(f)["MODEL"]["ANCHOR_GENERATOR"]["SIZES"]
# name -> (what the variant undoes or changes, config overrides, cost key or None, pretrained:
# True from the shared synthetic pretraining, False from random weights, "own" from a synthetic
# pretraining of its own, with its overrides and the same iterations: a network of another
# shape, whose layers the shared one cannot fill)
TRAIN_VARIANTS = {
    "recipe": ("the recipe", [], None, True),
    # the recipe again from another training seed (the same folds and shared pretraining):
    # how far a fold moves by chance, the yardstick for every row beside it
    "seed_1": ("the recipe, training seed 1", ["SEED", "1"], None, True),
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
    # iterations are scarce at the held-out check's length (~745 at 3 s/it): 0.56x the pixels
    # buy ~1.8x the iterations in the same time (BENCHMARKS.md, fourth and fifth rounds)
    "crop_192": ("192 px crops instead of 256 (same wall time)", ["INPUT.CROP.SIZE", "[192, 192]"],
                 "crop_192", True),
    "anchors_1x": ("Base-YOLACT's anchors (sized for cells at the native scale)",
                   ["MODEL.ANCHOR_GENERATOR.SIZES", str(BASE_ANCHORS)], None, True),
    # the crop's pixels in fewer, larger crops: an iteration costs about the same, and a
    # large cell (an astrocyte is up to ~200 px across) is cut by the crop's edge less often
    "crop_384_b2": ("2 crops of 384 px per batch instead of 4 of 256 (same pixels)",
                    ["INPUT.CROP.SIZE", "[384, 384]", "SOLVER.IMS_PER_BATCH", "2"], None, True),
    "crop_512_b1": ("1 crop of 512 px per batch instead of 4 of 256 (same pixels)",
                    ["INPUT.CROP.SIZE", "[512, 512]", "SOLVER.IMS_PER_BATCH", "1"], None, True),
    # Detectron2's repeat-factor sampling (LVIS): images of the rarer types (Sartorius' 26
    # training images: shsy5y 3, astro 7, cort 16) repeated by sqrt(0.5 / their share)
    "class_balanced": ("images of rare types repeated (RepeatFactorTrainingSampler, 0.5)",
                       ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                        "DATALOADER.REPEAT_THRESHOLD", "0.5"], None, True),
    # masks trained and read past the box (a predicted box that stops short of an astrocyte's
    # process cuts its mask straight; the loss trains the window past the box as well)
    "mask_box_grow_0.2": ("masks trained and read over the box grown by 20% per side",
                          ["MODEL.YOLACT.MASK_BOX_GROW", "0.2"], None, True),
    # the recipe's anchors learn cell or background only (AGNOSTIC_DETECTION); this undoes it
    "typed_detection": ("detections trained per type (softmax over the classes) instead of "
                        "cell or background", ["MODEL.YOLACT.AGNOSTIC_DETECTION", "False"], None,
                        True),
    # the masks, not the anchors or boxes, are what fails on astrocytes (BENCHMARKS.md,
    # astrocytes third, fourth and seventh rounds): their loss weighted twice
    "mask_weight_2x": ("mask loss weighted 12.25 instead of 6.125",
                       ["MODEL.YOLACT.MASK_LOSS_WEIGHT", "12.25"], None, True),
    # BCE over a sprawling astrocyte's box is mostly background pixels; Dice weighs the overlap
    "mask_dice_1": ("mask loss BCE + 1 x Dice instead of BCE alone",
                    ["MODEL.YOLACT.MASK_DICE_WEIGHT", "1.0"], None, True),
    # the masks are linear combinations of the prototypes: twice as many to outline a sprawling
    # cell's processes (BENCHMARKS.md, astrocytes fourth round: the mask itself limits them)
    "prototypes_64": ("64 prototypes instead of 32", ["MODEL.YOLACT.NUM_PROTOTYPES", "64"], None,
                      "own"),
    "part_iou": ("background anchors centred on a cell, no larger than it, ignored",
                 ["MODEL.YOLACT.PART_IOU", "0.4"], None, True),
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
    "mask_thresh_0.3": ("mask threshold 0.3 instead of 0.4",
                        ["MODEL.YOLACT.MASK_THRESH_TEST", "0.3"]),
    "no_maskness": ("class scores alone (no x the mask's mean probability)",
                    ["MODEL.YOLACT.TEST_MASKNESS", "False"]),
    "no_test_flips": ("no test-time flips (one view instead of 4)",
                      ["MODEL.YOLACT.TEST_FLIPS", "[]"]),
    # astrocytes (twice the others' diameter) segmented again at a smaller scale
    "test_astro_1x": ("astro-voted images at 1x instead of 1.5x",
                      ["MODEL.YOLACT.TEST_RESCALE_BY_TYPE", "[1.3333, 0.6667, 1.0]"]),
    "test_astro_0.75x": ("astro-voted images at 0.75x instead of 1.5x",
                         ["MODEL.YOLACT.TEST_RESCALE_BY_TYPE", "[1.3333, 0.5, 1.0]"]),
    # and at a larger one: the fourth round's weaker one-core models gained there
    "test_astro_1.75x": ("astro-voted images at 1.75x instead of 1.5x",
                         ["MODEL.YOLACT.TEST_RESCALE_BY_TYPE", "[1.3333, 1.1667, 1.0]"]),
    "test_astro_2x": ("astro-voted images at 2x instead of 1.5x",
                      ["MODEL.YOLACT.TEST_RESCALE_BY_TYPE", "[1.3333, 1.3333, 1.0]"]),
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
    starting_weights("recipe", config, out, args.pretrain_iters, common, data_root)
    s_it["pretrain_ran"] = seconds_per_iteration(os.path.join(out, "pretrain", "metrics.json"))
    def current(name, cfg):
        """Today's test-time settings for a row, and whether its stored row ran at them (a
        row from before a test-time change of the recipe is evaluated again)."""
        wanted = test_time_settings(cfg)
        return wanted, name in rows and rows[name].get("settings") == wanted

    for name, (what, opts, _, _) in TRAIN_VARIANTS.items():
        if name not in args.variants and name != "recipe":
            continue
        cfg = load_cfg(config, [str(o) for o in common + opts])
        folder = os.path.join(out, name)
        trained = os.path.isfile(os.path.join(folder, "model_final.pth"))
        if trained:  # before its row is reused: the test variants read the recipe's model
            check_trained_with(folder, training_settings(cfg))
        wanted, fresh = current(name, cfg)
        if fresh:
            continue
        iters = variant_iters(name, args, s_it)
        if not trained:
            start = starting_weights(name, config, out, args.pretrain_iters, common, data_root)
            train_net(config, ["MODEL.WEIGHTS", start, *schedule(iters), "TEST.EVAL_PERIOD",
                               iters, "OUTPUT_DIR", folder, *common, *opts], data_root,
                      folder + ".log")
        if evaluated_with(folder) == wanted:  # at the end of its training
            metrics = final_metrics(folder)
        else:  # trained before a test-time change: its model evaluated again, not retrained
            metrics = evaluate(config, os.path.join(folder, "model_final.pth"), common + opts,
                               os.path.join(folder, "evaluation"), data_root)
        rows[name] = dict(metrics, what=what, iterations=iters, settings=wanted,
                          s_it=seconds_per_iteration(os.path.join(folder, "metrics.json")))
        print(name, rows[name], flush=True)
        write_json(done, {"s_it": s_it, "rows": rows})
    recipe_model = os.path.join(out, "recipe", "model_final.pth")
    for name, (what, opts) in TEST_VARIANTS.items():
        if name not in args.variants:
            continue
        wanted, fresh = current(name, load_cfg(config, [str(o) for o in common + opts]))
        if fresh:
            continue
        rows[name] = dict(evaluate(config, recipe_model, common + opts, os.path.join(out, name),
                                   data_root), what=what, iterations=args.finetune_iters,
                          settings=wanted)
        print(name, rows[name], flush=True)
        write_json(done, {"s_it": s_it, "rows": rows})


def starting_weights(name: str, config: str, out: str, pretrain_iters: int, common: list,
                     data_root: str) -> str:
    """The weights a training variant fine-tunes from ("" for random ones): the shared synthetic
    pretraining (the recipe's) or the variant's own, trained here the first time it is asked for."""
    _, opts, _, source = TRAIN_VARIANTS[name]
    if not source:
        return ""
    folder = os.path.join(out, "pretrain" if source is True else f"pretrain_{name}")
    weights = os.path.join(folder, "model_final.pth")
    if not os.path.isfile(weights):
        train_net(config, ["DATASETS.TRAIN", "('synthetic_train',)", "MODEL.WEIGHTS", "",
                           *schedule(pretrain_iters), "DATASETS.TEST", "()", "OUTPUT_DIR",
                           folder, *common, *opts], data_root, folder + ".log")
    return weights


def variant_iters(name: str, args, s_it: dict) -> int:
    """Fine-tuning iterations of a variant: the same wall time as the recipe's."""
    _, _, cost, from_pretrained = TRAIN_VARIANTS[name]
    iters = args.finetune_iters
    if cost:
        iters = max(1, round(iters * s_it["real"] / s_it[cost]))
    if not from_pretrained:
        iters += round(args.pretrain_iters * s_it["synthetic"] / s_it["real"])
    return iters


def cv_data(args, out: str) -> tuple:
    """Each fold's data root (real/: real_train, real_val), the pretraining root (synthetic/)
    and the ground truth of every image; written once, reused by a resumed run."""
    roots = []
    for f in range(args.folds):
        root = os.path.abspath(os.path.join(out, "data", f"fold{f}"))
        if not os.path.isfile(os.path.join(root, "real", "annotations", "val.json")):
            real = os.path.join(root, "real")
            write_splits(real, read_sartorius(args.data, real, seed=args.seed,
                                              folds=(args.folds, f), progress=False))
        roots.append(root)
    pre = os.path.abspath(os.path.join(out, "data", "pretrain"))
    synthetic = os.path.join(pre, "synthetic")
    if not os.path.isfile(os.path.join(synthetic, "annotations", "train.json")):
        generate_dataset(synthetic, images_per_type=args.synthetic_per_type,
                         seed=1000 + args.seed, progress=False)
        convert_sartorius(synthetic, synthetic, split=(3 * args.synthetic_per_type, 0, 0),
                          progress=False)
    everything = os.path.join(out, "data", "all")
    gt_path = os.path.join(everything, "annotations", "train.json")
    if not os.path.isfile(gt_path):
        write_splits(everything, read_sartorius(args.data, everything, split=(1, 0, 0),
                                                progress=False))
    return roots, pre, load_ground_truth(gt_path)


def run_cv(args):
    config = os.path.join(CONFIGS, "real_R18_cpu.yaml")
    out = os.path.join(args.output, f"cv{args.folds}_seed{args.seed}")
    os.makedirs(out, exist_ok=True)
    roots, pre_root, gt = cv_data(args, out)
    amp = native_bfloat16() if args.amp == "auto" else args.amp == "bfloat16"
    common = ["SEED", args.seed, "SOLVER.AMP.ENABLED", amp]
    no_eval = ["DATASETS.TEST", "()"]
    unknown = [v for v in args.variants if v not in TRAIN_VARIANTS and v not in TEST_VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant {unknown[0]!r}; training variants: "
                         f"{', '.join(TRAIN_VARIANTS)}; test-time: {', '.join(TEST_VARIANTS)}")
    # a test-time variant re-evaluates the recipe's fold models
    needs_recipe = any(v in TEST_VARIANTS for v in args.variants)
    variants = list(dict.fromkeys((["recipe"] if needs_recipe else []) + args.variants))
    trained = [v for v in variants if v in TRAIN_VARIANTS]
    s_it = {}
    if any(TRAIN_VARIANTS[v][2] or not TRAIN_VARIANTS[v][3] for v in trained):
        s_it["synthetic"] = calibrate(config, "('synthetic_train',)",
                                      os.path.join(out, "calibration_synthetic"),
                                      no_eval + common, pre_root)
        for name, dataset, opts in [("real", "('real_train',)", []),
                                    *[(v, "('real_train',)", TRAIN_VARIANTS[v][1])
                                      for v in trained if TRAIN_VARIANTS[v][2]]]:
            s_it[name] = calibrate(config, dataset, os.path.join(out, f"calibration_{name}"),
                                   no_eval + common + opts, roots[0])
    starting_weights("recipe", config, out, args.pretrain_iters, common, pre_root)
    thresh = args.score_thresh
    for name in variants:
        if name in TRAIN_VARIANTS:
            what, opts, _, _ = TRAIN_VARIANTS[name]
            iters = variant_iters(name, args, s_it)
        else:
            (what, opts), iters = TEST_VARIANTS[name], variant_iters("recipe", args, s_it)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        cfg = load_cfg(config, [str(o) for o in common + opts])
        wanted = test_time_settings(cfg)  # a test variant's opts are test-time keys only:
        trained_wanted = training_settings(cfg)  # its training settings are the recipe's
        fold_results, fold_images = [], []
        for f, root in enumerate(roots):
            folder = os.path.join(out, name, f"fold{f}")
            weights = os.path.join(out, name if name in TRAIN_VARIANTS else "recipe", f"fold{f}",
                                   "model_final.pth")
            if os.path.isfile(weights):
                check_trained_with(os.path.dirname(weights), trained_wanted)
            if name in TRAIN_VARIANTS:
                if not os.path.isfile(weights):  # evaluated at the end of its training
                    start = starting_weights(name, config, out, args.pretrain_iters, common,
                                             pre_root)
                    train_net(config, ["MODEL.WEIGHTS", start, *schedule(iters),
                                       "TEST.EVAL_PERIOD", iters, "OUTPUT_DIR", folder, *common,
                                       *opts], root, folder + ".log")
                if evaluated_with(folder) != wanted:
                    folder = os.path.join(folder, "evaluation")
            if evaluated_with(folder) != wanted:
                train_net(config, ["--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", folder,
                                   *common, *opts], root, folder + ".log")
            found = os.path.join(folder, "inference", "real_val", "coco_instances_results.json")
            with open(found) as fh:
                fold_results.append(json.load(fh))
            with open(os.path.join(root, "real", "annotations", "val.json")) as fh:
                fold_images.append([im["id"] for im in json.load(fh)["images"]])
            print(f"{name} fold {f}: {len(fold_results[-1])} detections", flush=True)
        report = cross_validation_report(gt, pool_folds(fold_results, fold_images), thresh)
        names = [c["name"] for c in gt.loadCats(sorted(gt.getCatIds()))]
        report["calibrated"] = held_out_calibration(gt, fold_results, fold_images, names)
        rows = report.pop("per_image")
        write_csv(os.path.join(out, name, "per_image.csv"), rows, list(rows[0]))
        write_json(os.path.join(out, name, "cv.json"),
                   dict(report, what=what, iterations=iters, folds=args.folds, seed=args.seed,
                        pretrain_iters=args.pretrain_iters, amp=amp))
        print(cv_summary(name, report), flush=True)


def test_time_settings(cfg) -> dict:
    """What, besides the weights, decides an evaluation: MODEL.YOLACT's test-time keys, the
    test scale and the detections kept per image."""
    y = cfg.MODEL.YOLACT
    settings = dict({k: y[k] for k in y if "TEST" in k},
                    scale=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
                    detections=cfg.TEST.DETECTIONS_PER_IMAGE)
    return json.loads(json.dumps(settings))  # as a row stored in JSON holds them


def training_settings(cfg) -> dict:
    """What, besides the data and the schedule, decides a trained model: MODEL and INPUT less
    their test-time keys, the starting weights and what training measures on its data (the
    cells' diameters)."""
    test = set(test_time_settings(cfg)) | {"WEIGHTS", "MIN_SIZE_TEST", "MAX_SIZE_TEST",
                                           "CELL_DIAMETER", "CELL_DIAMETER_BY_CLASS"}

    def strip(node):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in node.items()
                if k not in test}
    return json.loads(json.dumps({"MODEL": strip(cfg.MODEL), "INPUT": strip(cfg.INPUT)}))


def check_trained_with(folder: str, wanted: dict) -> None:
    """SystemExit (one line) where the model in ``folder`` was trained with other settings than
    today's: reusing it would report today's recipe with another's model."""
    def first_difference(a, b, path=""):
        for k in sorted(set(a) | set(b)):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                found = first_difference(a[k], b[k], f"{path}{k}.")
                if found:
                    return found
            elif a.get(k) != b.get(k):
                return path + k
        return None

    key = first_difference(wanted, training_settings(load_cfg(os.path.join(folder,
                                                                            "config.yaml"))))
    if key:
        raise SystemExit(f"error: {folder} was trained with other settings than today's ({key} "
                         f"differs): give a new --output, or move that folder away")


def evaluated_with(folder: str):
    """test_time_settings of the evaluation stored in ``folder``; None where there is none (or
    its config no longer loads)."""
    found = os.path.join(folder, "inference", "real_val", "coco_instances_results.json")
    config = os.path.join(folder, "config.yaml")
    if not (os.path.isfile(found) and os.path.isfile(config)):
        return None
    try:
        return test_time_settings(load_cfg(config))
    except SetupError:
        return None


def cv_summary(name: str, report: dict) -> str:
    segm, recall = report["segm"], report["recall_at_thresh"]
    found = report["agnostic_recall"][f"{report['thresh']:g}"]
    per_class = "  ".join(f"{c} AP {segm[f'AP-{c}']:.1f} / AP50 {segm[f'AP50-{c}']:.1f} / "
                          f"recall@{report['thresh']:g} {recall[c]:.0f}% (any type "
                          f"{found[c]:.0f}%)" for c in CLASSES)
    calibrated = "  ".join(f"{c} recall {v['recall']:.0f}% / precision {v['precision']:.0f}% "
                           f"at {'/'.join(f'{t:g}' for t in v['thresholds'])}"
                           for c, v in report["calibrated"].items())
    return (f"{name}: pooled segm AP {segm['AP']:.1f}, AP50 {segm['AP50']:.1f}, Kaggle "
            f"{report['kaggle']['score']:.1f}; {per_class}\n  at each fold's thresholds chosen on "
            f"the other folds: {calibrated}")


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
    p.add_argument("--folds", type=int, help="cross-validate over K folds (see above)")
    p.add_argument("--amp", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="--folds: precision (auto: bfloat16 autocast where the CPU has it natively)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="--folds: the prediction threshold the recall is read at")
    args = p.parse_args(argv)
    args.variants = (args.variants.split(",") if args.variants
                     else ["recipe"] if args.folds else [*TRAIN_VARIANTS, *TEST_VARIANTS])
    if args.table:
        print(table(args.output))
    elif args.folds:
        run_cv(args)
    else:
        run_seed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
