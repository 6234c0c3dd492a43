"""tools/benchmark.py --train-step: YOLACT training iterations with glibc's default malloc and
with cellseg_d2.utils.keep_freed_memory, each with 0 and 1 loader workers, and in bfloat16
autocast (SOLVER.AMP.ENABLED on a CPU) with the training's own setting, side by side."""
import os
import resource
import statistics
import sys
import time

import benchmark_common
import torch


def train_step_worker(args) -> dict:
    """Median training iteration (data + forward + backward + step) for one setting."""
    if args.malloc == "kept":
        from cellseg_d2.utils import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("error: --train-step needs glibc malloc (Linux)")
    torch.set_num_threads(args.threads)
    from detectron2.modeling import build_model

    import cellseg_d2  # noqa: F401
    from cellseg_d2.config import load_cfg
    from cellseg_d2.engine import Trainer

    amp = args.precision == "bfloat16"
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
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            losses = model(batch)  # as cellseg_d2.engine.CPUAutocastTrainer
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if r >= args.warmup:
            steps.append(time.perf_counter() - t)
            data.append(t_data - t)
    return {"malloc": args.malloc, "workers": args.workers, "precision": args.precision,
            "median_s": statistics.median(steps),
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
        # tools/train_net.py's own setting (kept, 0 workers) also in bfloat16 autocast.
        settings = [(m, w, "float32") for w in (0, 1) for m in ("default", "kept")]
        for malloc, workers, precision in settings + [("kept", 0, "bfloat16")]:
            print(f"measuring training steps: malloc {malloc}, {workers} loader workers, "
                  f"{precision} ...", file=sys.stderr, flush=True)
            rows.append(benchmark_common.run_subprocess(args, [
                "--model", "train", "--malloc", malloc, "--workers", str(workers),
                "--precision", precision], env))
    base = next(r for r in rows if r["malloc"] == "default" and r["workers"] == 1)
    for r in rows:
        r["speedup"] = base["median_s"] / r["median_s"]
    return {"machine": benchmark_common.machine(), "device": args.device, "threads": args.threads,
            "repeats": args.repeats, "warmup": args.warmup, "config": args.yolact_config,
            "train_step": rows}


def report_train_step(args) -> int:
    from cellseg_d2.utils import write_json

    report = train_step(args)
    print(f"\n{report['machine']}; device {args.device}; {args.threads} threads; "
          f"{os.path.basename(args.yolact_config)}; median of {args.repeats} iterations "
          f"(2 images) after {args.warmup} warm-up\n")
    print(f"{'malloc':>8} {'workers':>8} {'precision':>9} {'s/it':>6} {'data s':>7} "
          f"{'peak RSS MB':>12} {'vs default, 1 worker':>21}")
    for r in report["train_step"]:
        print(f"{r['malloc']:>8} {r['workers']:>8} {r['precision']:>9} {r['median_s']:>6.2f} "
              f"{r['median_data_s']:>7.2f} {r['peak_rss_mb']:>12.0f} {r['speedup']:>20.2f}x")
    path = args.json or "output/benchmark_train.json"
    write_json(path, report)
    print(f"\nJSON: {path}")
    return 0
