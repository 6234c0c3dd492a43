#!/usr/bin/env python
"""Inference speed and memory: YOLACT against Detectron2's Mask R-CNN, side by side.

Both models are built with the same backbone depth, FPN width and input size (configs
synthetic_R18_cpu.yaml and maskrcnn_R18_cpu.yaml by default) and run on 704x520 synthetic images
with N cells (N in --cells). Both are made to return exactly N instances per image (score
thresholds 0, TEST.DETECTIONS_PER_IMAGE = N), so the per-instance work (NMS, mask assembly,
pasting masks at full resolution) is what a model that finds every cell would do, with or
without trained weights. Each (model, N) runs in its own process so its peak RSS is its own.

Reports images/s (median over --repeats after --warmup), peak RSS (CPU) or peak CUDA memory,
YOLACT's stage breakdown, the YOLACT / Mask R-CNN ratios, and the cost of evaluation
(COCOEvaluator + Kaggle metric) with 1000 detections per image. Table on stdout, JSON to --json.

--train-step measures YOLACT training iterations instead (2 images each, fresh synthetic
images of all three types, the Trainer's own loader, model and optimizer), side by side with
glibc's default malloc and with cellseg_d2.utils.keep_freed_memory (what tools/train_net.py
does), each with DATALOADER.NUM_WORKERS 0 and 1.
"""
import argparse
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

TOOLS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(TOOLS, "..", "configs")


def synth_images(n_cells: int, count: int, seed: int = 0) -> list:
    from cellseg_d2.data.synthetic import synthesize_image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        cell_type = "shsy5y" if n_cells > 120 else "cort"
        base = 340 if cell_type == "shsy5y" else 34
        image, label = synthesize_image(rng, cell_type, density=n_cells / base)
        images.append((np.repeat(image[:, :, None], 3, axis=2), int(label.max())))
    return images


def build(model_kind: str, config: str, weights: str, n_det: int, device: str):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from cellseg_d2.setup_cfg import load_cfg

    opts = ["TEST.DETECTIONS_PER_IMAGE", str(n_det), "MODEL.DEVICE", device]
    if model_kind == "yolact":
        opts += ["MODEL.YOLACT.SCORE_THRESH_TEST", "0.0"]
    else:
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                 "MODEL.RPN.POST_NMS_TOPK_TEST", str(max(1000, 2 * n_det))]
    cfg = load_cfg(config, opts)
    model = build_model(cfg).eval()
    if weights:
        DetectionCheckpointer(model).load(weights)
    return cfg, model


def stage_times(model, inputs: list, sync) -> dict:
    """Seconds per image in each of YOLACT's labelled stages ("yolact.*" record_function
    ranges), from one torch.profiler pass over ``inputs`` (CPU time of the ranges)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for inp in inputs:
            model([inp])
        sync()
    return {e.key[len("yolact."):]: e.cpu_time_total / 1e6 / len(inputs)
            for e in prof.key_averages() if e.key.startswith("yolact.")}


def worker(args) -> dict:
    """One (model, N) measurement; prints a JSON line."""
    torch.set_num_threads(args.threads)
    import cellseg_d2  # noqa: F401

    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    config = args.yolact_config if args.model == "yolact" else args.maskrcnn_config
    weights = args.yolact_weights if args.model == "yolact" else args.maskrcnn_weights
    cfg, model = build(args.model, config, weights, args.n, device)
    images = synth_images(args.n, args.images, seed=args.n)
    from detectron2.data import transforms as T

    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    times, counts, inputs = [], [], []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for r in range(args.warmup + args.repeats):
            image, _ = images[r % len(images)]
            sync()
            t = time.perf_counter()
            # What DefaultPredictor does: resize, to tensor, forward at the original size.
            resized = resize.get_transform(image).apply_image(image)
            inp = {"image": torch.as_tensor(resized.transpose(2, 0, 1).astype("float32")).to(device),
                   "height": image.shape[0], "width": image.shape[1]}
            inst = model([inp])[0]["instances"]
            sync()
            if r >= args.warmup:
                times.append(time.perf_counter() - t)
                counts.append(len(inst))
                inputs.append(inp)
    out = {"model": args.model, "cells": args.n,
           "cells_in_images": [c for _, c in images], "instances": int(np.median(counts)),
           "median_s": statistics.median(times), "images_per_s": 1 / statistics.median(times),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.model == "yolact":  # after the timed runs: the profiler's overhead stays out of them
        out["stages_s"] = stage_times(model, inputs, sync)
    return out


def eval_cost(args) -> dict:
    """Evaluation time per image at N detections (N in --eval-dets), Detectron2's path
    (pycocotools: COCOeval_opt at 100, COCOevalMaxDets beyond; Kaggle metric on dense masks)
    against this project's (faster-coco-eval; box-local Kaggle metric), same outputs, one run;
    with the largest difference between their numbers."""
    import tempfile

    from detectron2.data import DatasetCatalog

    import cellseg_d2  # noqa: F401
    from cellseg_d2.data.mapper import CellDatasetMapper
    from cellseg_d2.data.sartorius import convert_sartorius
    from cellseg_d2.data.synthetic import generate_dataset
    from cellseg_d2.engine import build_cell_evaluator
    from cellseg_d2.setup_cfg import load_cfg

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        data = os.path.join(root, "synthetic")
        generate_dataset(data, images_per_type=args.eval_images, cell_types=("shsy5y",),
                         seed=1, progress=False)
        convert_sartorius(data, data, split=(0, args.eval_images, 0), progress=False)
        os.environ["CELLSEG_DATASETS"] = root
        records = DatasetCatalog.get("synthetic_val")
        for n in [int(v) for v in args.eval_dets.split(",")]:
            print(f"  evaluation at {n} detections/image ...", file=sys.stderr, flush=True)
            # Every detection counts for the Kaggle metric too (worst case: n overlapping masks).
            cfg = load_cfg(args.yolact_config, ["MODEL.YOLACT.SCORE_THRESH_TEST", "0.0",
                                                "TEST.INSTANCE_SCORE_THRESH", "-1.0",
                                                "TEST.DETECTIONS_PER_IMAGE", str(n),
                                                "MODEL.DEVICE", args.device])
            _, model = build("yolact", args.yolact_config, args.yolact_weights, n, args.device)
            mapper = CellDatasetMapper(cfg, is_train=False)
            with torch.no_grad():
                outputs = [(r, model([mapper(r)])[0]) for r in records]
            row = {"detections_per_image": int(np.mean([len(o["instances"]) for _, o in outputs])),
                   "gt_cells_per_image": int(np.mean([len(r["annotations"]) for r in records])),
                   "images": len(outputs)}
            found = {}
            for path in ("detectron2", "cellseg_d2"):
                coco, kaggle = build_cell_evaluator(
                    cfg, "synthetic_val", os.path.join(root, f"eval_{n}_{path}"))._evaluators
                coco._use_faster = path == "cellseg_d2"
                if path == "detectron2":
                    kaggle.process = functools.partial(kaggle_dense_process, kaggle)
                for name, ev in (("coco", coco), ("kaggle", kaggle)):
                    ev.reset()
                    t = time.perf_counter()
                    for r, o in outputs:
                        ev.process([{"image_id": r["image_id"], "file_name": r["file_name"],
                                     "height": r["height"], "width": r["width"]}], [o])
                    found[(path, name)] = ev.evaluate()
                    row[f"{path}_{name}_s_per_image"] = (time.perf_counter() - t) / len(outputs)
            row["max_abs_difference"] = max(
                abs(a - b) for name in ("coco", "kaggle")
                for a, b in zip(_flat(found[("detectron2", name)]), _flat(found[("cellseg_d2", name)]))
                if not (math.isnan(a) and math.isnan(b)))
            rows.append(row)
    return {"rows": rows}


def _flat(results: dict) -> list:
    return [v for task in sorted(results) for _, v in sorted(results[task].items())]


def kaggle_dense_process(self, inputs, outputs):
    """KaggleMetricEvaluator.process as it was before box-local cells: overlaps removed and
    masks encoded from the dense (n, H, W) stack."""
    from cellseg_d2.data.mapper import annotation_rles
    from cellseg_d2.evaluation.box_rle import encode_instance_masks
    from cellseg_d2.evaluation.kaggle_metric import remove_overlaps, rle_score

    for inp, out in zip(inputs, outputs):
        record = self._gt[inp["image_id"]]
        anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        gt_rles = annotation_rles(anns, record["height"], record["width"])
        gt_classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        inst = out["instances"].to("cpu")
        inst = inst[inst.scores > self._score_thresh]
        boxes = inst.pred_boxes.tensor
        masks, keep = remove_overlaps(inst.pred_masks, inst.scores.numpy(), boxes)
        pred_rles = encode_instance_masks(masks, boxes[torch.from_numpy(keep)])
        classes = inst.pred_classes.numpy()[keep]
        per_class = {int(c): rle_score([r for r, g in zip(gt_rles, gt_classes) if g == c],
                                       [r for r, k in zip(pred_rles, classes) if k == c])
                     for c in np.unique(gt_classes)}
        self._scores.append((inp["image_id"], rle_score(gt_rles, pred_rles), per_class))


def train_step_worker(args) -> dict:
    """Median training iteration (data + forward + backward + step) for one setting."""
    if args.malloc == "kept":
        from cellseg_d2.utils import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("error: --train-step needs glibc malloc (Linux)")
    torch.set_num_threads(args.threads)
    from detectron2.modeling import build_model

    import cellseg_d2  # noqa: F401
    from cellseg_d2.engine import Trainer
    from cellseg_d2.setup_cfg import load_cfg

    cfg = load_cfg(args.yolact_config, ["DATASETS.TRAIN", "('synthetic_train',)",
                                        "DATALOADER.NUM_WORKERS", str(args.workers),
                                        "SOLVER.IMS_PER_BATCH", "2", "MODEL.DEVICE", args.device])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    steps, data = [], []
    for r in range(args.warmup + args.repeats):
        t = time.perf_counter()
        batch = next(loader)
        t_data = time.perf_counter()
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if r >= args.warmup:
            steps.append(time.perf_counter() - t)
            data.append(t_data - t)
    return {"malloc": args.malloc, "workers": args.workers, "median_s": statistics.median(steps),
            "median_data_s": statistics.median(data),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def train_step(args) -> dict:
    import tempfile

    from cellseg_d2.data.sartorius import convert_sartorius
    from cellseg_d2.data.synthetic import generate_dataset

    rows = []
    with tempfile.TemporaryDirectory() as root:
        data = os.path.join(root, "synthetic")
        generate_dataset(data, images_per_type=4, seed=2, progress=False)
        convert_sartorius(data, data, split=(12, 0, 0), progress=False)
        env = dict(os.environ, CELLSEG_DATASETS=root)
        for workers in (0, 1):
            for malloc in ("default", "kept"):
                print(f"measuring training steps: malloc {malloc}, {workers} loader workers ...",
                      file=sys.stderr, flush=True)
                rows.append(run_subprocess(args, ["--model", "train", "--malloc", malloc,
                                                  "--workers", str(workers)], env))
    base = next(r for r in rows if r["malloc"] == "default" and r["workers"] == 1)
    for r in rows:
        r["speedup"] = base["median_s"] / r["median_s"]
    return {"machine": machine(), "device": args.device, "threads": args.threads,
            "repeats": args.repeats, "warmup": args.warmup, "config": args.yolact_config,
            "train_step": rows}


def run_subprocess(args, extra, env=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", *extra]
    for k in ("threads", "repeats", "warmup", "images", "device", "yolact_config",
              "maskrcnn_config", "yolact_weights", "maskrcnn_weights"):
        v = getattr(args, k)
        if v not in (None, ""):
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: benchmark worker {' '.join(extra)} failed:\n"
                         f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(args, model, n) -> dict:
    return run_subprocess(args, ["--model", model, "--n", str(n)])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        pass
    return f"{cpu}, torch {torch.__version__}, Python {platform.python_version()}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", default="50,200,800", help="cells per image (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--images", type=int, default=3, help="distinct images per N")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--yolact-config", default=os.path.join(CONFIGS, "synthetic_R18_cpu.yaml"))
    p.add_argument("--maskrcnn-config", default=os.path.join(CONFIGS, "maskrcnn_R18_cpu.yaml"))
    p.add_argument("--yolact-weights", default="")
    p.add_argument("--maskrcnn-weights", default="")
    p.add_argument("--eval-images", type=int, default=4, help="images for the evaluation cost")
    p.add_argument("--eval-dets", default="100,1000,2000",
                   help="detections per image for the evaluation cost (default %(default)s)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--eval-only", action="store_true", help="measure only the evaluation cost")
    p.add_argument("--train-step", action="store_true",
                   help="measure training iterations (malloc and loader settings) instead")
    p.add_argument("--whole-well", metavar="SIZES",
                   help="measure tools/predict.py on square mosaics of these sides (e.g. "
                        "1024,2048,4096,8192) instead; see tools/benchmark_whole_well.py")
    p.add_argument("--config", default=os.path.join("output", "demo", "config.yaml"),
                   help="--whole-well: the model's config (default: make demo's)")
    p.add_argument("--weights", default=os.path.join("output", "demo", "model_final.pth"),
                   help="--whole-well: its weights (default: make demo's)")
    p.add_argument("--json", help="default: output/benchmark.json, "
                                  "output/benchmark_train.json with --train-step")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--malloc", choices=("default", "kept"), help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.eval_only and args.skip_eval:
        p.error("--eval-only and --skip-eval leave nothing to measure")
    if args.worker:
        print(json.dumps(train_step_worker(args) if args.model == "train" else worker(args)))
        return 0
    if args.train_step:
        return report_train_step(args)
    if args.whole_well:
        return report_whole_well(args)
    args.json = args.json or "output/benchmark.json"

    cells = [] if args.eval_only else [int(c) for c in args.cells.split(",")]
    rows = []
    for n in cells:
        for model in ("yolact", "maskrcnn"):
            print(f"measuring {model} at {n} cells/image ...", file=sys.stderr, flush=True)
            rows.append(run_worker(args, model, n))
    report = {"machine": machine(), "device": args.device, "threads": args.threads,
              "repeats": args.repeats, "warmup": args.warmup, "results": rows, "ratios": {}}
    print(f"\n{report['machine']}; device {args.device}; {args.threads} threads; median of "
          f"{args.repeats} after {args.warmup} warm-up\n")
    print(f"{'cells':>6} {'model':>9} {'inst':>5} {'img/s':>7} {'ms/img':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['cells']:>6} {r['model']:>9} {r['instances']:>5} {r['images_per_s']:>7.2f} "
              f"{r['median_s'] * 1000:>8.0f} {r['peak_rss_mb']:>12.0f}")
    print("\nYOLACT / Mask R-CNN (same run):")
    for n in cells:
        y = next(r for r in rows if r["cells"] == n and r["model"] == "yolact")
        m = next(r for r in rows if r["cells"] == n and r["model"] == "maskrcnn")
        ratio = y["images_per_s"] / m["images_per_s"]
        report["ratios"][str(n)] = {"speed": ratio, "peak_rss": y["peak_rss_mb"] / m["peak_rss_mb"]}
        print(f"  {n:>4} cells: {ratio:.2f}x images/s, peak RSS {y['peak_rss_mb']:.0f} vs "
              f"{m['peak_rss_mb']:.0f} MB")
    print("\nYOLACT stage breakdown (ms per image):")
    stages = ["backbone+fpn", "protonet", "head", "nms", "masks", "postprocess"]
    print(f"{'cells':>6} " + " ".join(f"{s:>13}" for s in stages))
    for r in rows:
        if r["model"] == "yolact":
            print(f"{r['cells']:>6} " + " ".join(f"{r['stages_s'].get(s, 0) * 1000:>13.1f}"
                                                 for s in stages))
    if not args.skip_eval:
        print("\nmeasuring evaluation cost ...", file=sys.stderr, flush=True)
        report["evaluation"] = eval_cost(args)
        print(f"\nEvaluation, seconds per image (shsy5y images, ~"
              f"{report['evaluation']['rows'][0]['gt_cells_per_image']} cells each), one run:")
        print(f"{'dets':>6} {'COCO d2':>8} {'COCO ours':>10} {'speed-up':>9} {'Kaggle dense':>13} "
              f"{'Kaggle ours':>12} {'speed-up':>9} {'max |diff|':>11}")
        for e in report["evaluation"]["rows"]:
            c0, c1 = e["detectron2_coco_s_per_image"], e["cellseg_d2_coco_s_per_image"]
            k0, k1 = e["detectron2_kaggle_s_per_image"], e["cellseg_d2_kaggle_s_per_image"]
            print(f"{e['detections_per_image']:>6} {c0:>8.3f} {c1:>10.3f} {c0 / c1:>8.1f}x "
                  f"{k0:>13.3f} {k1:>12.3f} {k0 / k1:>8.1f}x {e['max_abs_difference']:>11.2g}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    from cellseg_d2.utils import write_json

    write_json(args.json, report)
    print(f"\nJSON: {args.json}")
    return 0


def report_whole_well(args) -> int:
    import benchmark_whole_well

    from cellseg_d2.utils import write_json

    if not os.path.isfile(args.weights):
        raise SystemExit(f"error: {args.weights}: no such checkpoint (run `make demo` first, or "
                         f"pass --config and --weights of a trained model)")
    report = benchmark_whole_well.report(args)
    report.update({"machine": machine(), "config": args.config, "weights": args.weights})
    path = args.json or "output/benchmark_whole_well.json"
    write_json(path, report)
    print(f"\nJSON: {path}")
    return 0


def report_train_step(args) -> int:
    from cellseg_d2.utils import write_json

    report = train_step(args)
    print(f"\n{report['machine']}; device {args.device}; {args.threads} threads; "
          f"{os.path.basename(args.yolact_config)}; median of {args.repeats} iterations "
          f"(2 images) after {args.warmup} warm-up\n")
    print(f"{'malloc':>8} {'workers':>8} {'s/it':>6} {'data s':>7} {'peak RSS MB':>12} "
          f"{'vs default, 1 worker':>21}")
    for r in report["train_step"]:
        print(f"{r['malloc']:>8} {r['workers']:>8} {r['median_s']:>6.2f} "
              f"{r['median_data_s']:>7.2f} {r['peak_rss_mb']:>12.0f} {r['speedup']:>20.2f}x")
    path = args.json or "output/benchmark_train.json"
    write_json(path, report)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
