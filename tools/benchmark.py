#!/usr/bin/env python
"""Inference speed and memory: YOLACT against Detectron2's Mask R-CNN, side by side.

Both models are built with the same backbone depth, FPN width and input size (configs
synthetic_R18_cpu.yaml and maskrcnn_R18_cpu.yaml by default) and run on 704x520 synthetic images
with N cells (N in --cells). Both are made to return exactly N instances per image (score
thresholds 0, TEST.DETECTIONS_PER_IMAGE = N), so the per-instance work (NMS, mask assembly,
pasting masks at full resolution) is what a model that finds every cell would do, with or
without trained weights. Each (model, N) runs in its own process so its peak RSS is its own.

Reports images/s (median over --repeats after --warmup), peak RSS (CPU) or peak CUDA memory,
YOLACT's stage breakdown (its torch.profiler ranges, one profiled pass after the timed runs),
the YOLACT / Mask R-CNN ratios, and the cost of evaluation per image at --eval-dets detections
(tools/benchmark_eval.py). Table on stdout, JSON to --json.

--train-step measures YOLACT training iterations instead (tools/benchmark_train.py: 2 images
each, the Trainer's own loader, model and optimizer, with and without
cellseg_d2.utils.keep_freed_memory, 0 and 1 loader workers, float32 and bfloat16 autocast);
--whole-well, tools/predict.py on square mosaics (tools/benchmark_whole_well.py).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from benchmark_common import CONFIGS, build_cfg, machine, run_subprocess


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


def stage_times(predictor, images: list, sync) -> dict:
    """Seconds per image in each of YOLACT's labelled stages ("yolact.*" record_function
    ranges), from one torch.profiler pass over ``images`` (CPU time of the ranges)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for image in images:
            predictor(image)
        sync()
    return {e.key[len("yolact."):]: e.cpu_time_total / 1e6 / len(images)
            for e in prof.key_averages() if e.key.startswith("yolact.")}


def worker(args) -> dict:
    """One (model, N) measurement, through the predictor users run (predict.CellPredictor:
    resized by the training scale, forward, outputs at the image's size); prints a JSON line."""
    torch.set_num_threads(args.threads)
    import cellseg_d2  # noqa: F401
    from cellseg_d2.predict import CellPredictor

    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    config = args.yolact_config if args.model == "yolact" else args.maskrcnn_config
    weights = args.yolact_weights if args.model == "yolact" else args.maskrcnn_weights
    predictor = CellPredictor(build_cfg(args.model, config, weights, args.n, device))
    images = synth_images(args.n, args.images, seed=args.n)
    times, counts, timed = [], [], []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for r in range(args.warmup + args.repeats):
        image, _ = images[r % len(images)]
        sync()
        t = time.perf_counter()
        inst = predictor(image)["instances"]
        sync()
        if r >= args.warmup:
            times.append(time.perf_counter() - t)
            counts.append(len(inst))
            timed.append(image)
    out = {"model": args.model, "cells": args.n,
           "cells_in_images": [c for _, c in images], "instances": int(np.median(counts)),
           "median_s": statistics.median(times), "images_per_s": 1 / statistics.median(times),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.model == "yolact":  # after the timed runs: the profiler's overhead stays out of them
        out["stages_s"] = stage_times(predictor, timed, sync)
    return out


def run_worker(args, model, n) -> dict:
    return run_subprocess(args, ["--model", model, "--n", str(n)])


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
                   help="measure training iterations (malloc, loader and precision settings) "
                        "instead")
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
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.eval_only and args.skip_eval:
        p.error("--eval-only and --skip-eval leave nothing to measure")
    if args.worker:
        if args.model == "train":
            import benchmark_train

            print(json.dumps(benchmark_train.train_step_worker(args)))
        else:
            print(json.dumps(worker(args)))
        return 0
    if args.train_step:
        import benchmark_train

        return benchmark_train.report_train_step(args)
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
        import benchmark_eval

        report["evaluation"] = benchmark_eval.report(args)
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


if __name__ == "__main__":
    sys.exit(main())
