"""What the napari widget does, without Qt: load a trained model folder, segment an image
layer's array exactly as tools/predict.py segments the file, count the cells per class."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from detectron2.data import MetadataCatalog

from ..cells import paint_labels
from ..checkpoint import check_weights
from ..config import SetupError, load_cfg
from ..data.image_io import as_uint8_color
from ..predict import CellPredictor
from ..tiling import CellSegmenter

CONFIG, WEIGHTS = "config.yaml", "model_final.pth"


def class_names(cfg) -> list:
    """The model's class names: its datasets' metadata, else class0, class1, ..."""
    for name in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
        names = MetadataCatalog.get(name).get("thing_classes")
        if names:
            return list(names)
    return [f"class{i}" for i in range(cfg.MODEL.YOLACT.NUM_CLASSES)]


class Model:
    """A model folder as `make train-real` / `make demo` write it (config.yaml +
    model_final.pth); SetupError, one line, for anything missing or not fitting."""

    def __init__(self, folder: str, device: str = None):
        folder = os.path.abspath(os.path.expanduser(str(folder)))
        missing = [f for f in (CONFIG, WEIGHTS) if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise SetupError(f"{folder}: not a trained model folder (no {' or '.join(missing)}; "
                             f"`make train-real` and `make demo` write one)")
        self.folder = folder
        self.cfg = load_cfg(os.path.join(folder, CONFIG),
                            weights=os.path.join(folder, WEIGHTS), device=device)
        check_weights(self.cfg.MODEL.WEIGHTS)
        self.predictor = CellPredictor(self.cfg)
        self.class_names = class_names(self.cfg)

    @property
    def score_thresh(self) -> float:
        return float(self.cfg.TEST.INSTANCE_SCORE_THRESH)

    @property
    def diameter(self) -> float:
        return float(self.cfg.MODEL.CELL_DIAMETER)


@dataclass
class Segmentation:
    label: np.ndarray  # 0 background, 1..n cells in score order (tools/predict.py's label TIFF)
    classes: list  # class name of cell id k at [k - 1]
    scores: list
    counts: dict  # class name -> cells
    diameter: float | None  # the cell diameter the image was segmented for (px)


def segment(model: Model, image: np.ndarray, order: str = "RGB", score_thresh: float = None,
            diameter=None, on_progress=None) -> Segmentation:
    """Segment an (H, W) or (H, W, 3|4) array of any dtype (colour in ``order``; napari's
    layers hold RGB) as tools/predict.py segments the same image's file: same uint8
    conversion, tiling, diameter rescaling and non-overlapping label image."""
    bgr = as_uint8_color(image, "BGR", order)
    segmenter = CellSegmenter(model.predictor, model.cfg,
                              model.score_thresh if score_thresh is None else score_thresh,
                              diameter=diameter)
    segmenter.on_progress = on_progress
    label, cells = paint_labels(segmenter(bgr), bgr.shape[:2])
    classes = [model.class_names[c.cls] for c in cells]
    counts = {name: classes.count(name) for name in model.class_names}
    return Segmentation(label, classes, [round(c.score, 4) for c in cells], counts,
                        segmenter.last_diameter)


def voted_type(seg: Segmentation) -> str | None:
    """The class most of the image's cells hold (an image's cell type), None without cells."""
    if not seg.classes:
        return None
    return max(seg.counts, key=seg.counts.get)
