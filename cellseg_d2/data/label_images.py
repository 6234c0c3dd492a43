"""Folders of (image, label image) pairs -- the Usiigaci layout ``setN/raw.tif`` +
``setN/instances_ids.png``, and Cellpose's ``name.tif`` + ``name_masks.png`` -- to the project's
COCO layout, as extra training data of one cell type.

Each image is rescaled (``scale``: cells of another microscope to the size of the target's
cells) and its grey levels are matched to a Sartorius image's (mean 128, standard deviation
12 over the image), so a model sees the same input statistics as on the target images.
"""
from __future__ import annotations

import glob
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..utils import atomic_open, write_json
from .image_io import ImageReadError, read_unchanged
from .sartorius import SARTORIUS_CATEGORIES, SARTORIUS_CLASSES, ConversionError

TARGET_MEAN, TARGET_STD = 128.0, 12.0  # Sartorius' phase-contrast images (measured on recon)
MIN_AREA = 8  # pixels after rescaling; smaller labels are slivers cut by the image border


def find_pairs(src: str) -> list:
    """[(image path, label path)] under ``src``, sorted; one error if there are none."""
    pairs = [(os.path.join(d, "raw.tif"), os.path.join(d, "instances_ids.png"))
             for d in sorted(glob.glob(os.path.join(src, "**", ""), recursive=True))
             if os.path.isfile(os.path.join(d, "instances_ids.png"))]
    for label in sorted(glob.glob(os.path.join(src, "**", "*_masks.png"), recursive=True)):
        stem = label[: -len("_masks.png")]
        image = next((stem + e for e in (".tif", ".tiff", ".png") if os.path.isfile(stem + e)),
                     stem + ".tif")
        pairs.append((image, label))
    if not pairs:
        raise ConversionError(f"{src}: no label images (setN/instances_ids.png or "
                              f"<name>_masks.png) found")
    return pairs


def normalized_gray(image: np.ndarray) -> np.ndarray:
    """A grey image of any dtype with its mean and standard deviation set to Sartorius'."""
    if image.ndim == 3:
        image = image.mean(axis=2)
    img = image.astype(np.float32)
    std = max(float(img.std()), 1e-6)
    return np.clip((img - img.mean()) * (TARGET_STD / std) + TARGET_MEAN, 0, 255) \
        .round().astype(np.uint8)


def convert_label_images(src: str, out_dir: str, cell_type: str, scale: float = 1.0) -> dict:
    """Write ``out_dir/images/<n>.png`` and ``out_dir/annotations/train.json`` (every cell of
    ``cell_type``) from the pairs under ``src``. Returns the COCO dict."""
    converted = read_label_images(src, cell_type, scale)
    write_label_images(out_dir, converted)
    return converted[0]


def read_label_images(src: str, cell_type: str, scale: float = 1.0) -> tuple:
    """(COCO dict, [(file name, PNG bytes)]) of the pairs under ``src``, every pair read and
    checked (a bad one is one ConversionError naming its file); nothing is written."""
    if cell_type not in SARTORIUS_CLASSES:
        raise ConversionError(f"cell type {cell_type!r} is not one of "
                              f"{', '.join(SARTORIUS_CLASSES)}")
    category = SARTORIUS_CLASSES.index(cell_type) + 1
    # Everything is read and checked before anything is written: a bad pair is one error
    # naming its file, and leaves no output.
    images, annotations, pngs = [], [], []
    for n, (image_path, label_path) in enumerate(find_pairs(src), start=1):
        image, label = read_pair(image_path, label_path)
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(normalized_gray(image), size, interpolation=cv2.INTER_AREA)
        label = cv2.resize(label.astype(np.float32), size, interpolation=cv2.INTER_NEAREST)
        file_name = os.path.join("images", f"{n:04d}.png")
        pngs.append((file_name, cv2.imencode(".png", image)[1].tobytes()))
        images.append({"id": n, "file_name": file_name, "height": size[1], "width": size[0],
                       "source": os.path.abspath(image_path)})
        annotations += [{"id": len(annotations) + k, **a} for k, a in
                        enumerate(label_annotations(label, n, category, MIN_AREA), start=1)]
    coco = {"info": {"description": f"{os.path.abspath(src)} as {cell_type}, scale {scale}"},
            "categories": SARTORIUS_CATEGORIES, "images": images, "annotations": annotations}
    return coco, pngs


def read_pair(image_path: str, label_path: str) -> tuple:
    """(image, label image) as stored, of the same height and width; one ConversionError
    naming the file otherwise."""
    try:
        image = read_unchanged(image_path)
        label = read_unchanged(label_path)
    except ImageReadError as e:
        raise ConversionError(str(e)) from None
    if label.ndim != 2 or label.shape != image.shape[:2]:
        raise ConversionError(f"{label_path}: label image {label.shape} does not match "
                              f"{image_path} {image.shape}")
    return image, label


def label_annotations(label: np.ndarray, image_id: int, category_id: int,
                      min_area: int) -> list:
    """COCO annotations (RLE, no id) of a label image's cells of at least ``min_area`` px."""
    anns = []
    for value in np.unique(label[label > 0]):
        mask = np.asfortranarray((label == value).astype(np.uint8))
        area = int(mask.sum())
        if area < min_area:
            continue
        rle = mask_util.encode(mask)
        anns.append({"image_id": image_id, "category_id": category_id, "iscrowd": 0,
                     "area": float(area), "bbox": [float(v) for v in mask_util.toBbox(rle)],
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return anns


def write_label_images(out_dir: str, converted: tuple) -> None:
    """Write what read_label_images returned: out_dir/images/*.png, annotations/train.json."""
    coco, pngs = converted
    for file_name, data in pngs:
        with atomic_open(os.path.join(out_dir, file_name), "wb") as f:
            f.write(data)
    write_json(os.path.join(out_dir, "annotations", "train.json"), coco)
