#!/usr/bin/env python
"""Cluster benchmark: tools/predict.py in-process against --cluster local:1 and local:2 on the
same inputs (a folder of 704x520 images, a square 16-bit tiled TIFF well), in one run:
wall time, images/s, megapixels/s, the client's peak RSS and each worker's, Dask's overhead
per task; every cluster run's outputs compared with the in-process run's, file for file.

    tools/benchmark_cluster.py --model output/real_cpu [--images 8] [--well 4096]
        [--workers 1,2] [--output output/benchmark_cluster.json]

The model's test-time flips are turned off (one view per tile): this measures the
distribution of the work, not the model's accuracy.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
OVERRIDES = ["MODEL.YOLACT.TEST_FLIPS", "[]"]


def make_inputs(folder: str, n_images: int, well: int) -> tuple:
    import cv2
    import tifffile

    from cellseg_d2.data.synthetic import synthesize_mosaic

    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    pixels = 0
    for i in range(n_images):
        image, _, _ = synthesize_mosaic(rng, 1, 1, (("shsy5y", "astro", "cort")[i % 3],))
        cv2.imwrite(os.path.join(folder, f"field{i:02d}.png"), image)
        pixels += image.shape[0] * image.shape[1]
    if well:
        image, _, _ = synthesize_mosaic(rng, -(-well // 520), -(-well // 704), ("shsy5y",))
        tifffile.imwrite(os.path.join(folder, "well.tif"),
                         image[:well, :well].astype(np.uint16) * 200 + 3000, tile=(512, 512),
                         compression="zlib")
        pixels += well * well
    return n_images + bool(well), pixels


def run(model: str, inputs: str, out: str, cluster: int = 0) -> dict:
    """One prediction through the package's API (what tools/predict.py runs), timed."""
    import torch
    from detectron2.data import MetadataCatalog

    from cellseg_d2.cluster import ClusterSegmentation, connect
    from cellseg_d2.config import load_cfg
    from cellseg_d2.data.image_io import read_image
    from cellseg_d2.predict import list_images, predict_files
    from cellseg_d2.tiling import CellSegmenter

    cfg = load_cfg(os.path.join(model, "config.yaml"), OVERRIDES,
                   os.path.join(model, "model_final.pth"))
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    files = list_images(inputs)
    save = ("tif", "rois")
    t = time.perf_counter()
    row = {}
    if not cluster:
        torch.set_num_threads(1)
        segmenter = CellSegmenter.from_config(cfg)
        predict_files(segmenter, files, read_image, out, metadata, save=save, progress=False)
    else:
        segmenter = CellSegmenter.from_config(cfg, with_model=False)
        with connect(f"local:{cluster}") as client:
            work = ClusterSegmentation(client, segmenter, 1)
            predict_files(segmenter, files, read_image, out, metadata, save=save,
                          progress=False, cluster=work)
            rss = client.run(peak_rss_mb)
            row["worker_peak_rss_mb"] = sorted(rss.values())
            row["task_overhead_ms"] = overhead(client)
    row["wall_s"] = round(time.perf_counter() - t, 1)
    return row


def peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM: of its own memory since exec; getrusage's ru_maxrss
    carries a forked parent's peak over into its children)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kb / 1024)


def overhead(client, n: int = 200) -> float:
    """Median round trip of an empty task, submitted and gathered one at a time (ms)."""
    times = []
    for i in range(n):
        t = time.perf_counter()
        client.submit(int, i, pure=False).result()
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1000, 2)


def same_outputs(a: str, b: str) -> bool:
    def files(root):
        return {os.path.relpath(os.path.join(d, f), root): os.path.join(d, f)
                for d, _, names in os.walk(root) for f in names if f != ".cellseg_d2_run.json"}

    fa, fb = files(a), files(b)
    return fa.keys() == fb.keys() and all(open(fa[k], "rb").read() == open(fb[k], "rb").read()
                                          for k in fa)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (config.yaml + model_final.pth)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--well", type=int, default=4096, help="side of the well image, px (0: none)")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--output", default="output/benchmark_cluster.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs")
        n, pixels = make_inputs(inputs, args.images, args.well)
        rows = {}
        for workers in [0, *map(int, args.workers.split(","))]:
            name = "in-process (1 thread)" if not workers else f"local:{workers}"
            out = os.path.join(tmp, f"out{workers}")
            rows[name] = run(args.model, inputs, out, workers)
            rows[name]["images_per_s"] = round(n / rows[name]["wall_s"], 3)
            rows[name]["mp_per_s"] = round(pixels / 1e6 / rows[name]["wall_s"], 3)
            if workers:
                rows[name]["outputs_equal_in_process"] = same_outputs(os.path.join(tmp, "out0"),
                                                                      out)
            print(name, rows[name], flush=True)
        client_rss = peak_rss_mb()
    result = {"images": n, "megapixels": round(pixels / 1e6, 2), "well_px": args.well,
              "runs": rows, "client_peak_rss_mb": round(client_rss), "overrides": OVERRIDES,
              "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": ")}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
