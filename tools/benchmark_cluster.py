#!/usr/bin/env python
"""Cluster benchmark: tools/predict.py in-process against --cluster local:N on the same inputs,
each run in a fresh process: wall time, images/s, megapixels/s, the peak RSS of the client and
of each worker (VmHWM), Dask's overhead per task; every cluster run's outputs compared with
the in-process run's, file for file.

    tools/benchmark_cluster.py --model output/real_cpu [--images 8] [--well 4096]
        [--sparse-well 0] [--workers 1,2] [--save tif,rois] [--output output/benchmark_cluster.json]

Inputs: --images synthetic 704x520 fields; --well a square 16-bit tiled TIFF of that side,
synthetic cells everywhere; --sparse-well a square 16-bit tiled TIFF of that side written
tile by tile (never whole in memory, a few MB on disk), zero but for a 3x3 mosaic of
synthetic fields: the size of a whole well, the work of a few fields (its zero tiles are not
run: tiling.is_uniform), so that memory can be measured at a size this machine cannot
segment in full.

The model's test-time flips are turned off (one view per tile): this measures the
distribution of the work and its memory, not the model's accuracy.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
OVERRIDES = ["MODEL.YOLACT.TEST_FLIPS", "[]"]
TIFF_TILE = 512


def make_inputs(folder: str, n_images: int, well: int, sparse: int) -> tuple:
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
                         image[:well, :well].astype(np.uint16) * 200 + 3000,
                         tile=(TIFF_TILE, TIFF_TILE), compression="zlib")
        pixels += well * well
    if sparse:
        fields, _, _ = synthesize_mosaic(rng, 3, 3, ("cort", "shsy5y", "astro"))
        fields = fields.astype(np.uint16) * 200 + 3000
        y0, x0 = sparse // 3, sparse // 3  # where the fields lie

        def tiles():
            for y in range(0, sparse, TIFF_TILE):
                for x in range(0, sparse, TIFF_TILE):
                    tile = np.zeros((min(TIFF_TILE, sparse - y), min(TIFF_TILE, sparse - x)),
                                    np.uint16)
                    fy0, fx0 = max(y, y0), max(x, x0)
                    fy1 = min(y + tile.shape[0], y0 + fields.shape[0])
                    fx1 = min(x + tile.shape[1], x0 + fields.shape[1])
                    if fy1 > fy0 and fx1 > fx0:
                        tile[fy0 - y:fy1 - y, fx0 - x:fx1 - x] = \
                            fields[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
                    yield tile

        tifffile.imwrite(os.path.join(folder, "sparse_well.tif"), tiles(),
                         shape=(sparse, sparse), dtype=np.uint16,
                         tile=(TIFF_TILE, TIFF_TILE), compression="zlib",
                         bigtiff=sparse * sparse * 2 > 2**32 - 2**28)
        pixels += sparse * sparse
    return len(os.listdir(folder)), pixels


def run_one(model: str, inputs: str, out: str, cluster: int, save: tuple) -> dict:
    """One prediction through the package's API (what tools/predict.py runs), timed, in this
    process (run_fresh starts one per configuration)."""
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
    t = time.perf_counter()
    row = {}
    if not cluster:
        torch.set_num_threads(1)
        segmenter = CellSegmenter.from_config(cfg)
        counts, _ = predict_files(segmenter, files, read_image, out, metadata, save=save,
                                  progress=False)
    else:
        segmenter = CellSegmenter.from_config(cfg, with_model=False)
        with connect(f"local:{cluster}") as client:
            work = ClusterSegmentation(client, segmenter, 1)
            counts, _ = predict_files(segmenter, files, read_image, out, metadata, save=save,
                                      progress=False, cluster=work)
            row["worker_peak_rss_mb"] = sorted(client.run(peak_rss_mb).values())
            row["task_overhead_ms"] = overhead(client)
    row["wall_s"] = round(time.perf_counter() - t, 1)
    row["client_peak_rss_mb"] = peak_rss_mb()
    row["cells"] = sum(c["cells"] for c in counts)
    return row


def run_fresh(args, inputs: str, out: str, workers: int) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(workers),
                           "--model", args.model, "--inputs", inputs, "--out", out,
                           "--save", args.save], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run with {workers} workers failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    p.add_argument("--sparse-well", type=int, default=0,
                   help="side of the sparse well image, px (0: none)")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--save", default="tif,rois", help="the outputs written (predict's --save-*)")
    p.add_argument("--output", default="output/benchmark_cluster.json")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one run in this process
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.model, args.inputs, args.out, args.one,
                                 tuple(args.save.split(",")))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs")
        n, pixels = make_inputs(inputs, args.images, args.well, args.sparse_well)
        rows = {}
        for workers in [0, *(int(w) for w in args.workers.split(",") if w)]:
            name = "in-process (1 thread)" if not workers else f"local:{workers}"
            out = os.path.join(tmp, f"out{workers}")
            rows[name] = run_fresh(args, inputs, out, workers)
            rows[name]["images_per_s"] = round(n / rows[name]["wall_s"], 3)
            rows[name]["mp_per_s"] = round(pixels / 1e6 / rows[name]["wall_s"], 3)
            if workers:
                rows[name]["outputs_equal_in_process"] = same_outputs(os.path.join(tmp, "out0"),
                                                                      out)
            print(name, rows[name], flush=True)
    result = {"images": n, "megapixels": round(pixels / 1e6, 2), "well_px": args.well,
              "sparse_well_px": args.sparse_well, "save": args.save, "runs": rows,
              "overrides": OVERRIDES,
              "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0]
              .split(":", 1)[1].strip()}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
