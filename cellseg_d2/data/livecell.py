"""LIVECell (Edlund et al. 2021) in its official layout.

The official annotation files have one category ("cell") and store ``annotations`` as a dict
keyed by id rather than a list. Here every annotation's class is its image's cell type (the
file name prefix), so the 8 cell types are the thing classes. Images sit either directly under
the image root or in per-cell-type subfolders (``<root>/<CellType>/<file>``); both are found.
The file is checked first (data.coco_checks: ids used once, annotations of listed images);
polygon pieces of fewer than 3 points are left out, counted in one warning.
"""
from __future__ import annotations

import json
import os
import sys

from detectron2.structures import BoxMode

from .coco_checks import COCOFormatError, check_annotations, check_categories, check_images

LIVECELL_CLASSES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")
_BY_PREFIX = {c.lower(): i for i, c in enumerate(LIVECELL_CLASSES)}


def cell_type_of(file_name: str) -> str:
    prefix = os.path.basename(file_name).split("_")[0].lower()
    if prefix not in _BY_PREFIX:
        raise COCOFormatError(f"{file_name}: file name does not start with a LIVECell cell type "
                         f"({', '.join(LIVECELL_CLASSES)})")
    return LIVECELL_CLASSES[_BY_PREFIX[prefix]]


def _resolve(image_root: str, file_name: str) -> str:
    direct = os.path.join(image_root, file_name)
    if os.path.exists(direct):
        return direct
    nested = os.path.join(image_root, cell_type_of(file_name), os.path.basename(file_name))
    return nested if os.path.exists(nested) else direct


def load_livecell_json(json_file: str, image_root: str, classes=LIVECELL_CLASSES) -> list:
    """Detectron2 dataset dicts; category ids are contiguous indices into ``classes``."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except ValueError as e:
        raise COCOFormatError(f"{json_file}: not a JSON file ({e})") from None
    anns = data.get("annotations")
    if isinstance(anns, dict):
        anns = list(anns.values())
    if not isinstance(anns, list) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("categories"), list):
        raise COCOFormatError(f"{json_file}: not a COCO instances file")
    images = check_images(data, json_file, COCOFormatError)
    cats = check_categories(data, json_file, COCOFormatError)
    sizes = {i: (im["height"], im["width"]) for i, im in images.items()}
    short = 0
    for a in anns:  # polygon pieces of fewer than 3 points: dropped, counted
        seg = a.get("segmentation") if isinstance(a, dict) else None
        if isinstance(seg, list) and any(isinstance(p, list) and len(p) < 6 for p in seg):
            short += 1
            a["segmentation"] = [p for p in seg if not isinstance(p, list) or len(p) >= 6]
    kept = [a for a in anns if not isinstance(a, dict) or a.get("segmentation") != []]
    check_annotations(dict(data, annotations=kept), json_file, COCOFormatError, sizes, cats,
                      need_bbox=True)
    if short:
        print(f"warning: {json_file}: {short} annotation(s) hold polygons of fewer than 3 points: "
              f"those pieces are left out, and {len(anns) - len(kept)} annotation(s) that had "
              f"nothing else", file=sys.stderr)
    by_image = {}
    for a in kept:
        by_image.setdefault(a["image_id"], []).append(a)
    dicts = []
    for img in data["images"]:
        cell_type = cell_type_of(img["file_name"])
        if cell_type not in classes:
            raise COCOFormatError(f"{json_file}: image {img['file_name']} is {cell_type}, not "
                                  f"one of {', '.join(classes)}")
        cls = classes.index(cell_type)
        objs = []
        for a in by_image.get(img["id"], []):
            if a.get("iscrowd", 0):
                continue
            objs.append({"bbox": a["bbox"], "bbox_mode": BoxMode.XYWH_ABS,
                         "segmentation": a["segmentation"], "category_id": cls, "iscrowd": 0})
        dicts.append({"file_name": _resolve(image_root, img["file_name"]), "image_id": img["id"],
                      "height": img["height"], "width": img["width"], "annotations": objs})
    return dicts
