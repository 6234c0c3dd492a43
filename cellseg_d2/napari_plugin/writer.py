"""napari writer: a Labels layer as this project's label TIFF (what tools/predict.py writes)
and, beside it, an ImageJ / Fiji ROI zip of the same cells (ROIs named by their label ids)."""
from __future__ import annotations

import os

import numpy as np

from ..cells import cells_from_label
from ..outputs import label_image, write_label_tiff, write_rois


def roi_path(path: str) -> str:
    return os.path.splitext(path)[0] + "_rois.zip"


def write_labels(path: str, data, attributes: dict) -> list:
    """``path`` (.tif) and ``<stem>_rois.zip``; each written whole (temporary file, then
    rename). napari asked before replacing ``path``; the ROI zip is replaced only together
    with it (a zip there beside no label TIFF was not written here)."""
    label = np.asarray(data)
    if label.ndim != 2:
        raise ValueError(f"{attributes.get('name', 'the layer')}: a 2-D label image is saved "
                         f"as a label TIFF (this one is {label.ndim}-D)")
    label = label_image(label)
    if not path.lower().endswith((".tif", ".tiff")):
        path += ".tif"
    rois = roi_path(path)
    if os.path.exists(rois) and not os.path.exists(path):
        raise ValueError(f"{rois} exists beside no {os.path.basename(path)}; not replaced")
    cells, ids = cells_from_label(label, with_ids=True)
    write_label_tiff(path, label)
    write_rois(rois, cells, ids)
    return [path, rois]
