"""What the benchmark tools share (tools/benchmark.py and its --train-step and evaluation
parts): the model builder, one measurement in a fresh process, the machine's description."""
import json
import os
import platform
import subprocess
import sys

import torch

TOOLS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(TOOLS, "..", "configs")


def build_cfg(model_kind: str, config: str, weights: str, n_det: int, device: str):
    """The config measured: ``n_det`` detections per image kept, every score."""
    from cellseg_d2.config import load_cfg

    opts = ["TEST.DETECTIONS_PER_IMAGE", str(n_det), "MODEL.DEVICE", device]
    if model_kind == "yolact":
        opts += ["MODEL.YOLACT.SCORE_THRESH_TEST", "0.0"]
    else:
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                 "MODEL.RPN.POST_NMS_TOPK_TEST", str(max(1000, 2 * n_det))]
    return load_cfg(config, opts, weights=weights or "")


def build(model_kind: str, config: str, weights: str, n_det: int, device: str):
    """(cfg, model in eval mode with ``weights`` loaded and its test-time policy) of
    build_cfg."""
    from detectron2.modeling import build_model

    from cellseg_d2.checkpoint import FittingCheckpointer
    from cellseg_d2.modeling.test_time_augmentation import with_test_time_policy

    cfg = build_cfg(model_kind, config, weights, n_det, device)
    model = build_model(cfg).eval()
    if weights:
        FittingCheckpointer(model).load(weights)
    return cfg, with_test_time_policy(cfg, model)


def run_subprocess(args, extra, env=None) -> dict:
    """One measurement in a fresh process (tools/benchmark.py --worker EXTRA, with ``args``'
    common settings): its last stdout line, a JSON object."""
    cmd = [sys.executable, os.path.join(TOOLS, "benchmark.py"), "--worker", *extra]
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


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        pass
    return f"{cpu}, torch {torch.__version__}, Python {platform.python_version()}"
