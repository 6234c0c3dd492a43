"""Segmentation of images of any size at the model's training scale.

Every image and every tile is resized by one factor, config.inference_scale (the scale the
model was trained at), so cells keep the size the model learnt. An image no larger than
INPUT.MIN_SIZE_TEST x MAX_SIZE_TEST at that scale (a training image) is segmented whole; a
larger one (a whole well, a stitched mosaic) is cut into overlapping tiles. A cell
touching a tile's inner edge is dropped there: the overlap, wider than a cell, holds it whole in
the neighbouring tile. A cell whole in two tiles is kept once, from the tile where it lies
farthest from an inner edge. Memory is bounded by one tile's detections plus box-local masks.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from tqdm import tqdm

from .cells import cells_from_instances
from .config import SetupError, inference_scale
from .diameter import AUTO_TOLERANCE, cells_diameter

DUPLICATE_IOU = 0.5  # masks from two tiles overlapping more than this are one cell
EDGE_MARGIN = 2  # px: a cell this close to a tile's inner edge counts as cut by it


def tile_starts(length: int, tile: int, overlap: int) -> list:
    """Evenly spread starts of tiles covering [0, length), neighbours overlapping >= overlap."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_geometry(cfg, scale: float = None) -> tuple:
    """(scale, tile side, overlap), the last two in input pixels; ``scale`` defaults to the
    inference scale."""
    t = cfg.TEST.TILE
    scale = scale or inference_scale(cfg)
    size = t.SIZE or cfg.INPUT.MIN_SIZE_TEST
    overlap = t.OVERLAP if t.OVERLAP >= 0 else size // 4
    if not 0 <= overlap < size:
        raise SetupError(f"TEST.TILE.OVERLAP ({overlap}) must be below the tile size ({size})")
    return scale, max(round(size / scale), 1), round(overlap / scale)


def _mask_iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a.bounds
    bx0, by0, bx1, by1 = b.bounds
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    inter = np.count_nonzero(a.mask[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
                             & b.mask[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0])
    return inter / (a.area + b.area - inter)


def remove_duplicates(cells: list, depth: list, bucket: int = 64) -> list:
    """Keep one cell of each group found in several tiles (mask IoU > DUPLICATE_IOU): the one
    deepest inside its tile. Cells of one tile are never compared (the model's NMS ran there)."""
    grid = defaultdict(list)
    kept = []
    for i in sorted(range(len(cells)), key=lambda i: -depth[i]):
        c = cells[i]
        x0, y0, x1, y1 = c.bounds
        keys = [(gx, gy) for gx in range(x0 // bucket, (x1 - 1) // bucket + 1)
                for gy in range(y0 // bucket, (y1 - 1) // bucket + 1)]
        near = {j for k in keys for j in grid[k]}
        if any(kept[j].tile != c.tile and _mask_iou(kept[j], c) > DUPLICATE_IOU for j in near):
            continue
        for k in keys:
            grid[k].append(len(kept))
        kept.append(c)
    return kept


def is_uniform(image: np.ndarray) -> bool:
    """One value everywhere (a blank field; the zero padding around a stitched well): no cell
    can be there, and the network is not run on it (a featureless input gives it nothing to
    find, only its own border responses)."""
    return image.size == 0 or image.min() == image.max()


class CellSegmenter:
    """``segmenter(image)`` -> Cells (box-local, scoring above ``score_thresh``, may overlap;
    see cells.paint_labels) for an HxWx3 BGR image of any size (an array, or
    data.regions.ScaledRegions: read tile by tile). ``predictor`` is a
    predict.CellPredictor (or any callable image -> {"instances": ...} that resizes by
    config.inference_scale, and by ``scale=`` where given).

    ``diameter``: the image's cells are that many px across, so it is segmented at
    inference_scale x MODEL.CELL_DIAMETER / diameter (diameter.py); "auto": segmented at the
    training scale first, then again at the matching scale where its cells' median diameter is
    more than AUTO_TOLERANCE off the model's cells of the class found most. ``last_diameter``
    is the diameter the last image was segmented for (the model's where none was given)."""

    def __init__(self, predictor, cfg, score_thresh: float, progress: bool = False,
                 diameter=None):
        self.predictor = predictor
        self.cfg = cfg
        self.score_thresh = score_thresh
        self.progress = progress
        self.scale, self.tile, self.overlap = tile_geometry(cfg)
        self.max_short, self.max_long = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        self.model_diameter = float(cfg.MODEL.CELL_DIAMETER)
        if diameter is not None:
            if self.model_diameter <= 0:
                raise SetupError("the model's config records no MODEL.CELL_DIAMETER (trained "
                                 "before it was recorded): add MODEL.CELL_DIAMETER <px>, the "
                                 "median diameter of its training cells")
            if diameter != "auto" and not float(diameter) > 0:
                raise SetupError(f"the cell diameter must be a positive number of px or "
                                 f"'auto', got {diameter!r}")
        self.diameter = diameter
        self.last_diameter = self.model_diameter or None
        self.on_progress = None  # callable(tiles done, tiles of the pass) after each tile

    @classmethod
    def from_config(cls, cfg, score_thresh: float = None, diameter=None, progress: bool = False,
                    with_model: bool = True) -> "CellSegmenter":
        """The segmenter of a config whose MODEL.WEIGHTS is the trained model (checked:
        FittingCheckpointer), scoring at TEST.INSTANCE_SCORE_THRESH unless ``score_thresh``;
        ``with_model`` False: no model loaded (a Dask client, whose workers load their own)."""
        from .predict import CellPredictor

        return cls(CellPredictor(cfg) if with_model else None, cfg,
                   cfg.TEST.INSTANCE_SCORE_THRESH if score_thresh is None else score_thresh,
                   progress=progress, diameter=diameter)

    def fits_one_tile(self, height: int, width: int, scale: float = None) -> bool:
        """At the inference scale (or ``scale``) the image is no larger than a training image."""
        short, long = sorted((height * (scale or self.scale), width * (scale or self.scale)))
        return short <= self.max_short + 0.5 and long <= self.max_long + 0.5

    def scale_for(self, diameter) -> float:
        return self.scale * self.model_diameter / float(diameter)

    def __call__(self, image: np.ndarray) -> list:
        if self.diameter is None:
            return self.segment(image)
        if self.diameter != "auto":
            self.last_diameter = float(self.diameter)
            return self.segment(image, self.scale_for(self.diameter))
        cells = self.segment(image)
        found, cls = cells_diameter(cells)
        # Measured against the diameter of the class found most (a model of small and large
        # cell types finds each at its own size), else of all the training cells.
        by_class = list(self.cfg.MODEL.CELL_DIAMETER_BY_CLASS)
        expected = by_class[cls] if 0 <= cls < len(by_class) and by_class[cls] > 0 else \
            self.model_diameter
        self.last_diameter = self.model_diameter
        if found > 0 and abs(found / expected - 1) > AUTO_TOLERANCE:
            # the image's cells are found / expected times the model's: its diameter in the
            # model's terms
            self.last_diameter = round(self.model_diameter * found / expected, 2)
            cells = self.segment(image, self.scale_for(self.last_diameter))
        return cells

    def segment(self, image, scale: float = None) -> list:
        """The image's cells with every tile resized by ``scale`` (default: the training
        scale). ``image``: an array, or data.regions.ScaledRegions (a whole well read tile by
        tile)."""
        height, width = image.shape[:2]
        tiles = self.plan(height, width, scale)
        if tiles is None:
            cells = self.whole_cells(image[:, :], scale)
            self._report(1, 1)
            return cells
        found = []
        for t, (x, y, side) in enumerate(tqdm(tiles, desc="tiles", unit="tile", leave=False,
                                              disable=not self.progress)):
            found.append(self.tile_cells(image[y:y + side, x:x + side], x, y, t,
                                         (height, width), scale))
            self._report(t + 1, len(tiles))
        return self.stitch(found)

    def plan(self, height: int, width: int, scale: float = None):
        """None where the image is segmented whole, else its tiles [(x, y, side)] in order."""
        if self.fits_one_tile(height, width, scale):
            return None
        side, overlap = (self.tile, self.overlap) if scale is None else \
            tile_geometry(self.cfg, scale)[1:]
        return [(x, y, side) for y in tile_starts(height, side, overlap)
                for x in tile_starts(width, side, overlap)]

    def whole_cells(self, image: np.ndarray, scale: float = None) -> list:
        if is_uniform(image):
            return []
        kwargs = {} if scale is None else {"scale": scale}
        return cells_from_instances(self.predictor(image, **kwargs)["instances"].to("cpu"),
                                    self.score_thresh)

    def tile_cells(self, tile: np.ndarray, x: int, y: int, t: int, image_size: tuple,
                   scale: float = None) -> tuple:
        """(cells, depths) of tile ``t`` at (x, y) of an image of ``image_size`` (h, w): its
        cells clear of its inner edges, in image coordinates, each with its distance from them
        (a cluster worker runs this on one tile; stitch joins the tiles)."""
        height, width = image_size
        kwargs = {} if scale is None else {"scale": scale}
        th, tw = tile.shape[:2]
        inner = (x > 0, y > 0, x + tw < width, y + th < height)  # left, top, right, bottom
        if is_uniform(tile):
            return [], []
        instances = self.predictor(tile, **kwargs)["instances"].to("cpu")
        cells, depth = [], []
        for c in cells_from_instances(instances, self.score_thresh, (x, y), t):
            x0, y0, x1, y1 = c.bounds
            gaps = [g for g, is_inner in zip((x0 - x, y0 - y, x + tw - x1, y + th - y1), inner)
                    if is_inner]
            d = min(gaps, default=math.inf)
            if d >= EDGE_MARGIN:
                cells.append(c)
                depth.append(d)
        return cells, depth

    @staticmethod
    def stitch(tiles: list) -> list:
        """One image's cells from its tiles' (cells, depths), in tile order."""
        cells = [c for tile_cells, _ in tiles for c in tile_cells]
        depth = [d for _, tile_depth in tiles for d in tile_depth]
        return remove_duplicates(cells, depth)

    def _report(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)
