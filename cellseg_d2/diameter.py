"""Cell diameter: what a model's training cells measured, and what an image's cells measure.

A model only finds cells of about the size it was trained on (at config.inference_scale).
Training records the median equivalent diameter (the diameter of a disc of the same area) of
its training cells, in pixels at the images' own resolution, as MODEL.CELL_DIAMETER, and each
class's as MODEL.CELL_DIAMETER_BY_CLASS (Sartorius: astrocytes twice the others); an image
whose cells are D px across is then segmented at inference_scale x CELL_DIAMETER / D
(tiling.CellSegmenter), its masks returned at the image's own resolution. Cellpose's
``--diameter``, here in this project's terms.
"""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util

# --diameter auto re-runs an image when its cells' estimated diameter is off the model's by
# more than this fraction.
AUTO_TOLERANCE = 0.2


def equivalent_diameter(area) -> np.ndarray:
    return 2.0 * np.sqrt(np.asarray(area, np.float64) / np.pi)


def median_diameter(areas) -> float:
    """Median equivalent diameter (px) of cells of these areas (px^2); 0.0 for none."""
    areas = np.asarray(list(areas), np.float64)
    return float(np.median(equivalent_diameter(areas))) if areas.size else 0.0


def annotation_areas(dataset_dicts) -> list:
    """(contiguous class id, mask area px^2) of every non-crowd annotation of Detectron2
    dataset dicts."""
    from .data.segmentation import annotation_rles

    areas = []
    for d in dataset_dicts:
        anns = [a for a in d.get("annotations", ()) if not a.get("iscrowd", 0)]
        for a, rle in zip(anns, annotation_rles(anns, d["height"], d["width"])):
            if isinstance(rle.get("counts"), str):
                rle = dict(rle, counts=rle["counts"].encode("ascii"))
            areas.append((a["category_id"], float(mask_util.area(rle))))
    return areas


def training_cell_diameters(dataset_names, num_classes: int) -> tuple[float, list]:
    """(MODEL.CELL_DIAMETER, MODEL.CELL_DIAMETER_BY_CLASS) of a model trained on these
    registered datasets: the median over all training cells, and over each class's (0.0 for a
    class without cells)."""
    from detectron2.data import DatasetCatalog

    areas = [a for name in dataset_names for a in annotation_areas(DatasetCatalog.get(name))]
    by_class = [round(median_diameter(area for c, area in areas if c == k), 2)
                for k in range(num_classes)]
    return round(median_diameter(area for _, area in areas), 2), by_class


def cells_diameter(cells: list) -> tuple[float, int]:
    """(median equivalent diameter, most frequent class) of segmented cells (tiling's
    box-local Cells); (0.0, -1) for none."""
    if not cells:
        return 0.0, -1
    classes = np.bincount([c.cls for c in cells])
    return median_diameter(c.area for c in cells), int(classes.argmax())
