"""A user's own annotated images as a COCO instances JSON (what CVAT, Label Studio or a
conversion from Cellpose labels export), split into the project's train / val / test layout."""
from __future__ import annotations

import json
import os
from collections import Counter

import pycocotools.mask as mask_util

from .coco_checks import check_annotations, check_categories, check_images, to_rle
from .image_io import ImageReadError, decoded_size
from .sartorius import (
    SARTORIUS_CLASSES,
    ConversionError,
    split_coco,
    write_splits,
)


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
    """A COCO instances file: a dict with 'images', 'annotations' and 'categories' lists
    (annotations keyed by id, as in LIVECell's official files, become a list)."""
    data = read_json(path, what, error)
    if isinstance(data, dict) and isinstance(data.get("annotations"), dict):
        data["annotations"] = list(data["annotations"].values())
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise error(f"{path}: not a COCO instances file (no {key!r} list)")
    return data


def convert_coco(json_path: str, out_dir: str, split, seed: int = 0,
                 keep_empty: bool = False) -> dict:
    """Write ``out_dir/annotations/{train,val,test}.json`` from a COCO JSON (read_coco_export).
    Returns {split: coco dict}."""
    result, _ = read_coco_export(json_path, out_dir, split, seed, keep_empty)
    write_splits(out_dir, result)
    return result


def read_coco_export(json_path: str, out_dir: str, split, seed: int = 0,
                     keep_empty: bool = False) -> tuple:
    """({split: coco dict}, images left out) of a COCO JSON whose categories are named after
    the project's classes (shsy5y, astro, cort; any case) and whose image ``file_name``s are
    relative to the JSON's folder (or absolute); nothing is written. The file is checked first
    (data.coco_checks: integer ids used once, no image listed twice, annotations of listed
    images and categories with masks of their image's size) and every image decoded in full,
    so a bad entry or unreadable image is one error naming it. Images without annotations are
    left out (their number is returned) unless ``keep_empty``. Images are split stratified by
    the class most of their cells have."""
    data = read_coco(json_path)
    listed = check_images(data, json_path, ConversionError, need_size=False)
    cats = check_categories(data, json_path, ConversionError)
    to_ours = {}
    for cat_id, name in cats.items():
        if name.lower() not in SARTORIUS_CLASSES:
            raise ConversionError(f"{json_path}: category {name!r} (id {cat_id}) is not one of "
                                  f"{', '.join(SARTORIUS_CLASSES)}")
        to_ours[cat_id] = SARTORIUS_CLASSES.index(name.lower()) + 1
    base = os.path.dirname(os.path.abspath(json_path))
    images = {}
    for i, (image_id, im) in enumerate(listed.items()):
        if "file_name" not in im:
            raise ConversionError(f"{json_path}: images[{i}] (id {image_id}) has no 'file_name'")
        path = os.path.join(base, im["file_name"])
        try:
            height, width = decoded_size(path)
        except ImageReadError as e:
            raise ConversionError(f"{json_path}: images[{i}]: {e}") from None
        if (im.get("height", height), im.get("width", width)) != (height, width):
            raise ConversionError(f"{path}: image is {width}x{height} but {json_path} says "
                                  f"{im['width']}x{im['height']}")
        images[image_id] = {"id": image_id, "height": height, "width": width,
                            "file_name": os.path.relpath(path, os.path.abspath(out_dir))}
    sizes = {i: (im["height"], im["width"]) for i, im in images.items()}
    check_annotations(data, json_path, ConversionError, sizes, cats)
    anns, classes = {i: [] for i in images}, {i: Counter() for i in images}
    for a in data["annotations"]:
        rle = to_rle(a["segmentation"], *sizes[a["image_id"]])
        cat = to_ours[a["category_id"]]
        anns[a["image_id"]].append({
            "image_id": a["image_id"], "category_id": cat, "iscrowd": int(a.get("iscrowd", 0)),
            "segmentation": a["segmentation"], "area": float(mask_util.area(rle)),
            "bbox": [float(v) for v in mask_util.toBbox(rle)]})
        classes[a["image_id"]][cat] += 1
    empty = [i for i in images if not anns[i]]
    if not keep_empty:
        for i in empty:
            del images[i], anns[i], classes[i]
        if not images:
            raise ConversionError(f"{json_path}: no image has an annotation")
    cell_type = {i: SARTORIUS_CLASSES[(c.most_common(1)[0][0] if c else 1) - 1]
                 for i, c in classes.items()}
    result = split_coco(images, anns, cell_type, split, seed, os.path.basename(json_path),
                        os.path.abspath(json_path))
    return result, 0 if keep_empty else len(empty)
