"""Whole-well benchmark (tools/benchmark.py --whole-well): tools/predict.py on square mosaics
of synthetic shsy5y images (the densest type, ~340 cells per 704x520), each run in its own
process: wall time, s per megapixel, peak RSS (wait4), cells found against cells present
(matched at mask IoU > 0.5). Then the seam check: mask AP of a 2x2 mosaic against the mean AP
of its four images predicted one at a time."""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))


def mosaic(size: int, seed: int):
    from cellseg_d2.data.synthetic import synthesize_mosaic

    rng = np.random.default_rng(seed)
    image, label, tiles = synthesize_mosaic(rng, math.ceil(size / 520), math.ceil(size / 704),
                                            ("shsy5y",))
    return image[:size, :size], label[:size, :size], tiles


def matched_cells(gt: np.ndarray, pred: np.ndarray) -> int:
    """Ground-truth cells with a predicted cell at mask IoU > 0.5 (one at most: both are
    non-overlapping label images)."""
    both = (gt > 0) & (pred > 0)
    base = int(pred.max()) + 1
    pairs, inter = np.unique(gt[both].astype(np.int64) * base + pred[both], return_counts=True)
    g, p = pairs // base, pairs % base
    area_g = np.bincount(gt.ravel())
    area_p = np.bincount(pred.ravel())
    return int(np.sum(inter / (area_g[g] + area_p[p] - inter) > 0.5))


def run_predict(args, inputs: str, out: str, *extra) -> dict:
    cmd = [sys.executable, os.path.join(TOOLS, "predict.py"), "--config-file", args.config,
           "--weights", args.weights, "--input", inputs, "--output", out, *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: predict.py failed:\n{stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def mask_ap(gt_labels: dict, dets: dict) -> float:
    """Class-agnostic mask AP (IoU .50:.95, every detection) of ``dets`` ({key: [(score,
    Cell)]}) against ``gt_labels`` ({key: label image}), all keys scored as one dataset."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from cellseg_d2.cells import cells_from_label, coco_rle

    images, anns, results = [], [], []
    for image_id, (key, gt) in enumerate(sorted(gt_labels.items()), start=1):
        h, w = gt.shape
        images.append({"id": image_id, "height": h, "width": w})
        for c in cells_from_label(gt):
            x0, y0, x1, y1 = c.bounds
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "iscrowd": 0, "area": c.area, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "segmentation": coco_rle(c, h, w)})
        results += [{"image_id": image_id, "category_id": 1, "score": score,
                     "segmentation": coco_rle(c, h, w)} for score, c in dets.get(key, [])]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}]}
    coco.createIndex()
    if not results:
        return 0.0
    per_image = max(np.bincount([r["image_id"] for r in results]).max(), 100)
    e = COCOeval(coco, coco.loadRes(results), "segm")
    e.params.maxDets = [1, 10, int(per_image)]
    e.evaluate()
    e.accumulate()
    p = e.eval["precision"][:, :, 0, 0, -1]
    return float(p[p > -1].mean()) if (p > -1).any() else 0.0


def scored_cells(results: list, image_id: int, height: int, width: int, window=None) -> list:
    """(score, Cell) of one image's COCO results, cut to ``window`` (x, y, w, h) if given."""
    import pycocotools.mask as mask_util

    from cellseg_d2.cells import tight

    out = []
    x, y, w, h = window or (0, 0, width, height)
    for r in results:
        if r["image_id"] != image_id:
            continue
        rle = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode("ascii"))
        cut = tight(mask_util.decode(rle)[y:y + h, x:x + w].astype(bool), 0, 0)
        if cut is not None:
            from cellseg_d2.cells import Cell

            out.append((r["score"], Cell(cut[1], cut[2], cut[0], r["score"], 0, np.zeros(4))))
    return out


def report(args) -> dict:
    sizes = [int(s) for s in args.whole_well.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            print(f"measuring a {size}x{size} mosaic ...", file=sys.stderr, flush=True)
            image, gt, _ = mosaic(size, seed=size)
            path = os.path.join(tmp, f"well{size}.png")
            cv2.imwrite(path, image)
            out = os.path.join(tmp, f"out{size}")
            r = run_predict(args, path, out, "--save-tif", "--save-png", "--save-rois")
            import tifffile

            pred = tifffile.imread(os.path.join(out, "labels", f"well{size}.tif"))
            present = len(np.unique(gt)) - 1
            r.update({"size": size, "megapixels": size * size / 1e6, "cells_present": present,
                      "cells_found": int(pred.max()), "matched": matched_cells(gt, pred)})
            r["s_per_mp"] = r["wall_s"] / r["megapixels"]
            del r["stdout"]
            rows.append(r)
        print("measuring the seam check ...", file=sys.stderr, flush=True)
        seams = seam_check(args, tmp)
    slope = (np.polyfit([r["megapixels"] for r in rows], [r["wall_s"] for r in rows], 1)[0]
             if len(rows) > 1 else float("nan"))
    print(f"\n{'size':>6} {'MP':>6} {'wall s':>8} {'s/MP':>6} {'peak RSS MB':>12} "
          f"{'present':>8} {'found':>7} {'matched':>8}")
    for r in rows:
        print(f"{r['size']:>6} {r['megapixels']:>6.1f} {r['wall_s']:>8.1f} {r['s_per_mp']:>6.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['cells_present']:>8} {r['cells_found']:>7} "
              f"{r['matched']:>8}")
    print(f"\nmarginal time: {slope:.1f} s per megapixel (slope of wall time over area)")
    print(f"seams (2x2 mosaic of 704x520 images, mask AP on the same 4 images): predicted as "
          f"the mosaic {seams['mosaic_ap']:.4f}, one at a time {seams['alone_ap']:.4f}; mean of "
          f"per-image AP {seams['mosaic_mean_ap']:.4f} vs {seams['alone_mean_ap']:.4f}")
    for t in seams["per_image"]:
        print(f"  {t['cell_type']:7s} mosaic {t['from_mosaic']:.4f}  alone {t['alone']:.4f}")
    return {"whole_well": rows, "s_per_mp_marginal": slope, "seams": seams}


def seams_only(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return seam_check(args, tmp)


def seam_check(args, tmp: str) -> dict:
    """A 2x2 mosaic of synthetic 704x520 images predicted whole, and each image predicted
    alone; the mosaic's prediction is cut back into the four images, so both are scored on the
    same ground truth: per image and as one 4-image dataset."""
    from cellseg_d2.data.synthetic import synthesize_mosaic

    rng = np.random.default_rng(7)
    image, gt, tiles = synthesize_mosaic(rng, 2, 2)
    folder = os.path.join(tmp, "seams")
    os.makedirs(folder)
    cv2.imwrite(os.path.join(folder, "mosaic.png"), image)
    labels = {}
    for k, (x, y, _) in enumerate(tiles):
        cv2.imwrite(os.path.join(folder, f"tile{k}.png"), image[y:y + 520, x:x + 704])
        labels[f"tile{k}"] = gt[y:y + 520, x:x + 704]
    out = os.path.join(tmp, "seams_out")
    run_predict(args, folder, out, "--score-thresh", "0")  # AP ranks every detection
    with open(os.path.join(out, "coco_results.json")) as f:
        results = json.load(f)
    with open(os.path.join(out, "images.json")) as f:
        ids = {im["output_name"]: im["id"] for im in json.load(f)}
    h, w = gt.shape
    alone = {f"tile{k}": scored_cells(results, ids[f"tile{k}"], 520, 704) for k in range(4)}
    cut = {f"tile{k}": scored_cells(results, ids["mosaic"], h, w, (x, y, 704, 520))
           for k, (x, y, _) in enumerate(tiles)}
    per_tile = [{"cell_type": t[2], "alone": mask_ap({k: labels[k]}, {k: alone[k]}),
                 "from_mosaic": mask_ap({k: labels[k]}, {k: cut[k]})}
                for k, t in zip(sorted(labels), tiles)]
    return {"per_image": per_tile, "alone_ap": mask_ap(labels, alone),
            "mosaic_ap": mask_ap(labels, cut),
            "alone_mean_ap": float(np.mean([t["alone"] for t in per_tile])),
            "mosaic_mean_ap": float(np.mean([t["from_mosaic"] for t in per_tile]))}
