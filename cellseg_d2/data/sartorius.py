"""Sartorius Kaggle layout (``train.csv`` + ``train/<id>.png``) to COCO instance JSON."""
from __future__ import annotations

import csv
import os
from collections import OrderedDict, defaultdict

import cv2
import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from ..utils import write_json
from .image_io import ImageReadError, decoded_size
from .rle import RLEError, rle_decode

# Stable category ids: do not reorder, trained models depend on it.
SARTORIUS_CLASSES = ("shsy5y", "astro", "cort")
SARTORIUS_CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "cell"}
                        for i, n in enumerate(SARTORIUS_CLASSES)]
REQUIRED_COLUMNS = ("id", "annotation", "width", "height", "cell_type")
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = (578, 22, 6)


class ConversionError(ValueError):
    pass


def read_train_csv(csv_path: str) -> "OrderedDict[str, dict]":
    """Group ``train.csv`` rows by image id, validating every field but the RLE (decoded later).

    Returns {image_id: {"width", "height", "cell_type", "rows": [(row_number, annotation)]}}.
    Row numbers are 1-based file line numbers (the header is line 1).
    """
    if not os.path.isfile(csv_path):
        raise ConversionError(f"{csv_path}: file not found")
    images: "OrderedDict[str, dict]" = OrderedDict()
    # utf-8-sig: Excel saves a byte-order mark before the header; csv handles CRLF itself.
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                                  f"(header is {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path} row {line} (id={row.get('id')!r})"
            if None in row or any(row[c] is None for c in REQUIRED_COLUMNS):
                raise ConversionError(f"{where}: wrong number of fields")
            image_id = row["id"].strip()
            if not image_id:
                raise ConversionError(f"{where}: empty id")
            try:
                width, height = int(row["width"]), int(row["height"])
            except ValueError:
                raise ConversionError(f"{where}: width/height must be integers, got "
                                      f"{row['width']!r}x{row['height']!r}") from None
            if width <= 0 or height <= 0:
                raise ConversionError(f"{where}: width/height must be positive")
            cell_type = row["cell_type"].strip()
            if cell_type not in SARTORIUS_CLASSES:
                raise ConversionError(f"{where}: unknown cell_type {cell_type!r} "
                                      f"(expected one of {', '.join(SARTORIUS_CLASSES)})")
            entry = images.setdefault(image_id, {"width": width, "height": height,
                                                 "cell_type": cell_type, "rows": []})
            if (entry["width"], entry["height"], entry["cell_type"]) != (width, height, cell_type):
                raise ConversionError(f"{where}: width/height/cell_type differ from earlier rows "
                                      f"of the same image")
            entry["rows"].append((line, row["annotation"]))
    if not images:
        raise ConversionError(f"{csv_path}: no annotation rows")
    return images


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background regions of a binary mask (hollow astro annotations)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)


def mask_to_polygons(mask: np.ndarray) -> list:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    # pycocotools needs >= 3 points; keep a tiny mask as its pixel square instead of dropping it.
    if not polys:
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        polys = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    return [[float(v) for v in p] for p in polys]


def split_images(cell_types: dict, split=DEFAULT_SPLIT, seed: int = 0) -> dict:
    """Deterministic split stratified by cell type.

    ``split`` is three numbers for train/val/test: image counts when they are integers summing
    to the number of images, otherwise proportions. Each split's size is shared out over the
    cell types in proportion to their image counts (largest remainder), so every split keeps the
    class mix. Returns {"train": [...ids], "val": [...], "test": [...]}.
    """
    ids = sorted(cell_types)
    n = len(ids)
    split = [float(s) for s in split]
    if len(split) != 3 or any(s < 0 for s in split) or sum(split) <= 0:
        raise ConversionError(f"split must be three non-negative numbers, got {split}")
    if all(s.is_integer() for s in split) and int(sum(split)) == n:
        sizes = [int(s) for s in split]
    else:
        quotas = [s / sum(split) * n for s in split]
        sizes = _largest_remainder(quotas, n)
    by_type = defaultdict(list)
    for image_id in ids:
        by_type[cell_types[image_id]].append(image_id)
    types = sorted(by_type)
    rng = np.random.default_rng(seed)
    for t in types:
        by_type[t] = [by_type[t][i] for i in rng.permutation(len(by_type[t]))]
    remaining = {t: len(by_type[t]) for t in types}
    out = {}
    # val and test first (small, must be stratified); train takes what is left.
    for name, size in (("test", sizes[2]), ("val", sizes[1])):
        quotas = [size * len(by_type[t]) / n for t in types]
        per_type = _largest_remainder(quotas, size, caps=[remaining[t] for t in types])
        out[name] = []
        for t, k in zip(types, per_type):
            start = len(by_type[t]) - remaining[t]
            out[name] += by_type[t][start:start + k]
            remaining[t] -= k
    out["train"] = [i for t in types for i in by_type[t][len(by_type[t]) - remaining[t]:]]
    return {k: sorted(v) for k, v in out.items()}


def kfold_parts(cell_types: dict, folds: int, seed: int = 0) -> list:
    """``folds`` splits in which every image is validated exactly once, stratified by cell
    type: each type's images, shuffled (seeded), are dealt over the folds in turn, each type
    starting where the one before stopped, so every fold holds each type's share (+-1) and the
    folds' sizes differ by at most one. Returns [{"train": [...], "val": [...], "test": []}]."""
    if not 2 <= folds <= len(cell_types):
        raise ConversionError(f"cross-validation needs 2 to {len(cell_types)} folds for "
                              f"{len(cell_types)} images, got {folds}")
    by_type = defaultdict(list)
    for image_id in sorted(cell_types):
        by_type[cell_types[image_id]].append(image_id)
    rng = np.random.default_rng(seed)
    fold_of, k = {}, 0
    for t in sorted(by_type):
        for i in rng.permutation(len(by_type[t])):
            fold_of[by_type[t][i]] = k % folds
            k += 1
    ids = sorted(cell_types)
    return [{"train": [i for i in ids if fold_of[i] != f],
             "val": [i for i in ids if fold_of[i] == f], "test": []} for f in range(folds)]


def _largest_remainder(quotas, total, caps=None):
    caps = caps or [total] * len(quotas)
    counts = [min(int(np.floor(q)), c) for q, c in zip(quotas, caps)]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - np.floor(quotas[i])), i))
    while sum(counts) < total:
        progressed = False
        for i in order:
            if sum(counts) < total and counts[i] < caps[i]:
                counts[i] += 1
                progressed = True
        if not progressed:
            break
    return counts


def image_record(image_id: str, info: dict, image_dir: str, out_dir: str, num: int) -> dict:
    path = os.path.join(image_dir, f"{image_id}.png")
    try:
        height, width = decoded_size(path)
    except ImageReadError as e:
        raise ConversionError(f"image id={image_id!r}: {e}") from None
    if (height, width) != (info["height"], info["width"]):
        raise ConversionError(f"{path}: image is {width}x{height} but train.csv says "
                              f"{info['width']}x{info['height']}")
    return {"id": num, "file_name": os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir)),
            "width": width, "height": height, "kaggle_id": image_id, "cell_type": info["cell_type"]}


def annotations_for_image(info: dict, image_num: int, first_ann_id: int, csv_path: str,
                          fill: bool = False, polygons: bool = False) -> list:
    category_id = SARTORIUS_CLASSES.index(info["cell_type"]) + 1
    anns = []
    for line, annotation in info["rows"]:
        where = f"{csv_path} row {line}"
        try:
            mask = rle_decode(annotation, info["height"], info["width"], where=where)
        except RLEError as e:
            raise ConversionError(str(e)) from None
        if fill:
            mask = fill_holes(mask)
        rle = mask_util.encode(np.asfortranarray(mask))
        ann = {"id": first_ann_id + len(anns), "image_id": image_num, "category_id": category_id,
               "iscrowd": 0, "area": float(mask_util.area(rle)),
               "bbox": [float(v) for v in mask_util.toBbox(rle)]}
        if polygons:
            ann["segmentation"] = mask_to_polygons(mask)
        else:
            ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        anns.append(ann)
    return anns


def convert_sartorius(data_dir: str, out_dir: str, split=DEFAULT_SPLIT, seed: int = 0,
                      fill: bool = False, polygons: bool = False, csv_name: str = "train.csv",
                      image_subdir: str = "train", progress: bool = True) -> dict:
    """Convert a Kaggle-layout folder into ``out_dir/annotations/{train,val,test}.json``.

    ``file_name`` in the JSON is relative to ``out_dir``, so register ``out_dir`` as image root.
    Everything is validated before any JSON is written; each JSON is written atomically.
    Returns {split: coco_dict}.
    """
    result = read_sartorius(data_dir, out_dir, split, seed, fill, polygons, csv_name,
                            image_subdir, progress)
    write_splits(out_dir, result)
    return result


def split_coco(images: dict, anns: dict, cell_types: dict, split, seed: int, what: str,
               source: str) -> dict:
    """{split: COCO dict} of ``images`` ({id: image record}) and their ``anns`` ({id: [ann]}),
    split by split_images on ``cell_types``; annotation ids 1..n within each split."""
    parts = split_images(cell_types, split, seed)
    result = {}
    for name in SPLITS:
        chosen = parts[name]
        split_anns = [a for i in chosen for a in anns[i]]
        for n, a in enumerate(split_anns, start=1):
            a["id"] = n
        result[name] = {"info": {"description": f"{what} ({name} split)", "source": source,
                                 "split_seed": seed},
                        "categories": SARTORIUS_CATEGORIES,
                        "images": [images[i] for i in chosen], "annotations": split_anns}
    return result


def write_splits(out_dir: str, result: dict) -> None:
    """``out_dir/annotations/<split>.json`` for each of SPLITS in ``result``."""
    for name in SPLITS:
        write_json(os.path.join(out_dir, "annotations", f"{name}.json"), result[name])


def read_sartorius(data_dir: str, out_dir: str, split=DEFAULT_SPLIT, seed: int = 0,
                   fill: bool = False, polygons: bool = False, csv_name: str = "train.csv",
                   image_subdir: str = "train", progress: bool = True, folds=None) -> dict:
    """What convert_sartorius writes ({split: coco dict}, file names relative to ``out_dir``),
    every row and image read and checked; nothing is written. With ``folds`` = (k, f) the
    splits are fold f of kfold_parts(k, ``seed``) instead of ``split``."""
    csv_path = os.path.join(data_dir, csv_name)
    image_dir = os.path.join(data_dir, image_subdir)
    images = read_train_csv(csv_path)
    cell_types = {k: v["cell_type"] for k, v in images.items()}
    parts = (kfold_parts(cell_types, folds[0], seed)[folds[1]] if folds else
             split_images(cell_types, split, seed))
    ordered = sorted(images)
    numbers = {image_id: i + 1 for i, image_id in enumerate(ordered)}
    records, anns = {}, {}
    next_ann = 1
    for image_id in tqdm(ordered, desc="converting", unit="img", disable=not progress):
        info = images[image_id]
        records[image_id] = image_record(image_id, info, image_dir, out_dir, numbers[image_id])
        anns[image_id] = annotations_for_image(info, numbers[image_id], next_ann, csv_path,
                                               fill, polygons)
        next_ann += len(anns[image_id])
    result = {}
    for name in SPLITS:
        result[name] = {
            "info": {"description": f"Sartorius cell instance segmentation ({name} split)",
                     "source": os.path.abspath(data_dir), "split_seed": seed},
            "categories": SARTORIUS_CATEGORIES,
            "images": [records[i] for i in parts[name]],
            "annotations": [a for i in parts[name] for a in anns[i]],
        }
    return result


def class_statistics(coco: dict) -> list:
    """Per-class rows: images, instances, mean/max instances per image, mean area."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_image = defaultdict(lambda: defaultdict(int))
    area = defaultdict(float)
    for a in coco["annotations"]:
        per_image[a["category_id"]][a["image_id"]] += 1
        area[a["category_id"]] += a["area"]
    image_class = {}
    for cid, counts in per_image.items():
        for img in counts:
            image_class.setdefault(img, cid)
    rows = []
    for cid in sorted(names):
        counts = list(per_image[cid].values())
        n_inst = sum(counts)
        n_img = len(counts)
        rows.append({"class": names[cid], "images": n_img, "instances": n_inst,
                     "mean_per_image": n_inst / n_img if n_img else 0.0,
                     "max_per_image": max(counts) if counts else 0,
                     "mean_area": area[cid] / n_inst if n_inst else 0.0})
    return rows


def format_statistics(rows: list, title: str = "") -> str:
    from tabulate import tabulate

    table = [[r["class"], r["images"], r["instances"], f"{r['mean_per_image']:.1f}",
              r["max_per_image"], f"{r['mean_area']:.1f}"] for r in rows]
    text = tabulate(table, headers=["class", "images", "instances", "mean/img", "max/img",
                                    "mean area px"], tablefmt="pipe")
    return f"{title}\n{text}" if title else text
