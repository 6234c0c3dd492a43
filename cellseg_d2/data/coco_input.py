"""A user's own annotated images as a COCO instances JSON (what CVAT, Label Studio or a
conversion from Cellpose labels export), split into the project's train / val / test layout."""
from __future__ import annotations

import json
import os
from collections import Counter

import pycocotools.mask as mask_util

from ..utils import write_json
from .image_io import ImageReadError, decoded_size
from .mapper import annotation_rles
from .sartorius import SARTORIUS_CATEGORIES, SARTORIUS_CLASSES, SPLITS, ConversionError, split_images


def read_json(path: str, what: str, error=ConversionError):
    """The JSON in ``path``; a missing or malformed file is one ``error`` naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not a JSON file ({e})") from None


def read_coco(path: str, what: str = "COCO JSON", error=ConversionError) -> dict:
    """A COCO instances file: a dict with 'images', 'annotations' and 'categories' lists."""
    data = read_json(path, what, error)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise error(f"{path}: not a COCO instances file (no {key!r} list)")
    return data


def convert_coco(json_path: str, out_dir: str, split, seed: int = 0) -> dict:
    """Write ``out_dir/annotations/{train,val,test}.json`` from a COCO JSON whose categories are
    named after the project's classes (shsy5y, astro, cort; any case) and whose image
    ``file_name``s are relative to the JSON's folder (or absolute). Images are split stratified
    by the class most of their cells have; every image is decoded in full first, so an
    unreadable one is one error naming it and nothing is written. Returns {split: coco dict}."""
    data = read_coco(json_path)
    to_ours = {}
    for c in data["categories"]:
        name = str(c.get("name", "")).lower()
        if name not in SARTORIUS_CLASSES:
            raise ConversionError(f"{json_path}: category {c.get('name')!r} (id {c.get('id')}) is "
                                  f"not one of {', '.join(SARTORIUS_CLASSES)}")
        to_ours[c["id"]] = SARTORIUS_CLASSES.index(name) + 1
    base = os.path.dirname(os.path.abspath(json_path))
    images = {}
    for i, im in enumerate(data["images"]):
        if "id" not in im or "file_name" not in im:
            raise ConversionError(f"{json_path}: images[{i}] needs 'id' and 'file_name'")
        path = os.path.join(base, im["file_name"])
        try:
            height, width = decoded_size(path)
        except ImageReadError as e:
            raise ConversionError(f"{json_path}: images[{i}]: {e}") from None
        if (im.get("height", height), im.get("width", width)) != (height, width):
            raise ConversionError(f"{path}: image is {width}x{height} but {json_path} says "
                                  f"{im['width']}x{im['height']}")
        images[im["id"]] = {"id": im["id"], "height": height, "width": width,
                            "file_name": os.path.relpath(path, os.path.abspath(out_dir))}
    anns, classes = {i: [] for i in images}, {i: Counter() for i in images}
    for k, a in enumerate(data["annotations"]):
        where = f"{json_path}: annotations[{k}] (id {a.get('id')})"
        if a.get("image_id") not in images:
            raise ConversionError(f"{where}: image_id {a.get('image_id')!r} is not an image")
        if a.get("category_id") not in to_ours:
            raise ConversionError(f"{where}: category_id {a.get('category_id')!r} is not a category")
        if "segmentation" not in a:
            raise ConversionError(f"{where}: no 'segmentation' (instance masks are needed)")
        im = images[a["image_id"]]
        try:
            rle = annotation_rles([a], im["height"], im["width"])[0]
        except Exception as e:  # pycocotools raises several types for malformed masks
            raise ConversionError(f"{where}: unreadable segmentation ({e})") from None
        cat = to_ours[a["category_id"]]
        anns[a["image_id"]].append({
            "image_id": a["image_id"], "category_id": cat, "iscrowd": int(a.get("iscrowd", 0)),
            "segmentation": a["segmentation"], "area": float(mask_util.area(rle)),
            "bbox": [float(v) for v in mask_util.toBbox(rle)]})
        classes[a["image_id"]][cat] += 1
    cell_type = {i: SARTORIUS_CLASSES[(c.most_common(1)[0][0] if c else 1) - 1]
                 for i, c in classes.items()}
    parts = split_images(cell_type, split, seed)
    result = {}
    for name in SPLITS:
        chosen = parts[name]
        split_anns = [a for i in chosen for a in anns[i]]
        for n, a in enumerate(split_anns, start=1):
            a["id"] = n
        result[name] = {"info": {"description": f"{os.path.basename(json_path)} ({name} split)",
                                 "source": os.path.abspath(json_path), "split_seed": seed},
                        "categories": SARTORIUS_CATEGORIES,
                        "images": [images[i] for i in chosen], "annotations": split_anns}
    for name in SPLITS:
        write_json(os.path.join(out_dir, "annotations", f"{name}.json"), result[name])
    return result
