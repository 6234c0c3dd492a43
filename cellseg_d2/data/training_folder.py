"""A training folder that grows one corrected image at a time (the napari plugin's "Save as
training data"), and its reader for ``tools/train_real.py --data FOLDER``:

    FOLDER/images/<name>.tif    the image as it was segmented (its own dtype and channels)
    FOLDER/labels/<name>.tif    its label image: 0 background, 1..N cells
    FOLDER/cell_types.csv       one row per image: image,cell_type (shsy5y, astro or cort)

Images are read for training exactly as tools/predict.py reads them (image_io.read_image), so a
model trained here sees the intensities it will be used on.
"""
from __future__ import annotations

import csv
import io
import os
import re

import numpy as np

from ..utils import atomic_open
from .label_images import label_annotations, read_pair
from .sartorius import SARTORIUS_CLASSES, ConversionError, split_coco

CSV_NAME = "cell_types.csv"
FIELDS = ["image", "cell_type"]


def is_training_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CSV_NAME))


def safe_name(name: str) -> str:
    """A file stem from a layer name: letters, digits, '-', '_' and '.' kept, the rest '_'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "image"


def read_rows(folder: str) -> list:
    """cell_types.csv's rows [{"image", "cell_type"}]; one ConversionError naming a bad row."""
    path = os.path.join(folder, CSV_NAME)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(FIELDS) <= set(reader.fieldnames):
            raise ConversionError(f"{path}: header must be {','.join(FIELDS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            name, cell_type = (row.get("image") or "").strip(), (row.get("cell_type") or "").strip()
            if not name:
                raise ConversionError(f"{path}: row {line}: empty image name")
            if cell_type.lower() not in SARTORIUS_CLASSES:
                raise ConversionError(f"{path}: row {line}: cell_type {cell_type!r} is not one of "
                                      f"{', '.join(SARTORIUS_CLASSES)}")
            if any(r["image"] == name for r in rows):
                raise ConversionError(f"{path}: row {line}: image {name!r} listed twice")
            rows.append({"image": name, "cell_type": cell_type.lower()})
    return rows


def _write_rows(folder: str, rows: list) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(os.path.join(folder, CSV_NAME), "w") as f:
        f.write(text.getvalue())


def append_example(folder: str, name: str, image: np.ndarray, label: np.ndarray,
                   cell_type: str) -> str:
    """Add (or replace, if this folder's cell_types.csv already lists it) the image ``name``
    with its label image and cell type; files are written whole (temporary name, then rename)
    and the CSV last. Refuses a name whose files exist without being listed (not written here).
    Returns the image's file name in the folder."""
    import tifffile

    from ..outputs import label_image, write_label_tiff

    if cell_type not in SARTORIUS_CLASSES:
        raise ValueError(f"cell type {cell_type!r} is not one of {', '.join(SARTORIUS_CLASSES)}")
    label = np.asarray(label)
    if label.ndim != 2 or label.shape != image.shape[:2]:
        raise ValueError(f"the label image {label.shape} does not match the image "
                         f"{image.shape[:2]}")
    label = label_image(label)
    if not label.any():
        raise ValueError("the label image holds no cell")
    stem = safe_name(name)
    file_name = f"{stem}.tif"
    rows = read_rows(folder) if is_training_folder(folder) else []
    if not rows and os.path.isdir(folder) and os.listdir(folder):
        raise ValueError(f"{folder}: not empty and not a training folder (no {CSV_NAME}); "
                         f"choose a new or empty folder")
    listed = any(r["image"] == file_name for r in rows)
    for sub in ("images", "labels"):
        path = os.path.join(folder, sub, file_name)
        if os.path.exists(path) and not listed:
            raise ValueError(f"{path} exists and is not listed in {CSV_NAME}; not replaced")
    image_path = os.path.join(folder, "images", file_name)
    with atomic_open(image_path, "wb") as f:
        tifffile.imwrite(f, np.asarray(image), photometric="rgb" if np.ndim(image) == 3 else None)
    write_label_tiff(os.path.join(folder, "labels", file_name), label)
    rows = [r for r in rows if r["image"] != file_name] + [{"image": file_name,
                                                           "cell_type": cell_type}]
    _write_rows(folder, rows)
    return file_name


def read_training_folder(folder: str, out_dir: str, split, seed: int = 0,
                         min_area: int = 1) -> dict:
    """{split: COCO dict} of a training folder (file names relative to ``out_dir``), every row,
    image and label read and checked (one ConversionError naming the file); nothing written.
    Images are split stratified by their cell type (sartorius.split_images)."""
    rows = read_rows(folder)
    if not rows:
        raise ConversionError(f"{os.path.join(folder, CSV_NAME)}: lists no image")
    images, anns, types = {}, {}, {}
    for n, row in enumerate(rows, start=1):
        image_path = os.path.join(folder, "images", row["image"])
        label_path = os.path.join(folder, "labels", row["image"])
        image, label = read_pair(image_path, label_path)
        if not np.issubdtype(label.dtype, np.integer):
            raise ConversionError(f"{label_path}: a label image holds integer cell ids, not "
                                  f"{label.dtype}")
        category = SARTORIUS_CLASSES.index(row["cell_type"]) + 1
        images[n] = {"id": n, "height": int(image.shape[0]), "width": int(image.shape[1]),
                     "file_name": os.path.relpath(os.path.abspath(image_path),
                                                  os.path.abspath(out_dir)),
                     "cell_type": row["cell_type"]}
        anns[n] = label_annotations(label, n, category, min_area)
        if not anns[n]:
            raise ConversionError(f"{label_path}: holds no cell")
        types[n] = row["cell_type"]
    return split_coco(images, anns, types, split, seed,
                      f"training folder {os.path.abspath(folder)}", os.path.abspath(folder))
