"""LIVECell (Edlund et al. 2021) in its official layout.

The official annotation files have one category ("cell") and store ``annotations`` as a dict
keyed by id rather than a list. Here every annotation's class is its image's cell type (the
file name prefix), so the 8 cell types are the thing classes. Images sit either directly under
the image root or in per-cell-type subfolders (``<root>/<CellType>/<file>``); both are found.
"""
from __future__ import annotations

import json
import os

from detectron2.structures import BoxMode

LIVECELL_CLASSES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")
_BY_PREFIX = {c.lower(): i for i, c in enumerate(LIVECELL_CLASSES)}


def cell_type_of(file_name: str) -> str:
    prefix = os.path.basename(file_name).split("_")[0].lower()
    if prefix not in _BY_PREFIX:
        raise ValueError(f"{file_name}: file name does not start with a LIVECell cell type "
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
    with open(json_file) as f:
        data = json.load(f)
    anns = data["annotations"]
    if isinstance(anns, dict):
        anns = list(anns.values())
    by_image = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    dicts = []
    for img in data["images"]:
        cell_type = cell_type_of(img["file_name"])
        if cell_type not in classes:
            raise ValueError(f"{json_file}: image {img['file_name']} is {cell_type}, not one of "
                             f"{', '.join(classes)}")
        cls = classes.index(cell_type)
        objs = []
        for a in by_image.get(img["id"], []):
            if a.get("iscrowd", 0):
                continue
            seg = a["segmentation"]
            if isinstance(seg, list):
                seg = [p for p in seg if len(p) >= 6]
                if not seg:
                    continue
            objs.append({"bbox": a["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "segmentation": seg,
                         "category_id": cls, "iscrowd": 0})
        dicts.append({"file_name": _resolve(image_root, img["file_name"]), "image_id": img["id"],
                      "height": img["height"], "width": img["width"], "annotations": objs})
    return dicts
