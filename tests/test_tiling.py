"""Whole-image segmentation: tiles, seams, box-local cells and the files made from them."""
import csv
import json
import zipfile

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from matplotlib.path import Path as MplPath
from scipy.ndimage import binary_fill_holes

from cellseg_d2.cells import Cell, coco_rle, kaggle_rle, paint_labels, polygons
from cellseg_d2.config import add_yolact_config
from cellseg_d2.data.rle import rle_encode
from cellseg_d2.data.synthetic import synthesize_mosaic
from cellseg_d2.outputs import write_label_tiff, write_rois
from cellseg_d2.tiling import CellSegmenter, tile_starts

from .conftest import CONFIG, TINY, tool
from .test_evaluation import remove_overlaps


@pytest.mark.parametrize("length,tile,overlap", [(3000, 520, 130), (521, 520, 130),
                                                  (520, 520, 130), (100, 520, 130),
                                                  (4000, 1024, 256), (1041, 520, 0)])
def test_tiles_cover_the_image_with_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def random_cells(rng, height, width, n, max_size=20):
    cells = []
    for _ in range(n):
        h, w = rng.integers(1, max_size, 2)
        y0, x0 = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        mask = rng.random((h, w)) < 0.7
        mask[0, :] |= ~mask.any(axis=0)  # keep every row and column occupied (tight crop)
        mask[:, 0] |= ~mask.any(axis=1)
        cells.append(Cell(int(x0), int(y0), mask, float(rng.random()), int(rng.integers(3)),
                          np.array([x0, y0, x0 + w, y0 + h], float)))
    return cells


def dense(cell, height, width):
    m = np.zeros((height, width), bool)
    x0, y0, x1, y1 = cell.bounds
    m[y0:y1, x0:x1] = cell.mask
    return m


def test_box_local_encodings_equal_dense_ones():
    rng = np.random.default_rng(0)
    cells = random_cells(rng, 30, 25, 40)
    cells.append(Cell(0, 0, np.ones((30, 25), bool), 1.0, 0, np.array([0, 0, 25, 30.])))
    cells.append(Cell(3, 0, np.ones((30, 4), bool), 1.0, 0, np.array([3, 0, 7, 30.])))  # full columns
    cells.append(Cell(0, 29, np.ones((1, 25), bool), 1.0, 0, np.array([0, 29, 25, 30.])))  # last row
    for cell in cells:
        m = dense(cell, 30, 25)
        ref = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        assert coco_rle(cell, 30, 25)["counts"] == ref["counts"].decode()
        assert kaggle_rle(cell, 30, 25) == rle_encode(m)


def test_paint_labels_is_remove_overlaps():
    rng = np.random.default_rng(1)
    cells = random_cells(rng, 60, 50, 80)
    label, kept = paint_labels(cells, (60, 50))
    masks = np.stack([dense(c, 60, 50) for c in cells])
    ref, keep = remove_overlaps(masks, np.array([c.score for c in cells]))
    assert label.dtype == np.uint16 and label.max() == len(kept) == len(keep)
    for k, (cell, m) in enumerate(zip(kept, ref.numpy()), start=1):
        assert np.array_equal(label == k, m) and np.array_equal(dense(cell, 60, 50), m)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_labels_made_chunk_by_chunk_equal_the_whole(chunk):
    """A whole well's label image is made window by window (non_overlapping, label_source):
    the same cells, masks and label pixels as painting it whole, whatever the window size."""
    from cellseg_d2.cells import label_source, non_overlapping, windows

    rng = np.random.default_rng(3)
    cells = random_cells(rng, 60, 50, 80)
    cells[5].score = cells[6].score  # a tie: the earlier cell wins, as painting whole
    label, kept = paint_labels(cells, (60, 50))
    pieces = non_overlapping(cells, (60, 50), chunk)
    assert [(c.x0, c.y0, c.score) for c in pieces] == [(c.x0, c.y0, c.score) for c in kept]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(pieces, kept))
    rebuilt = np.full((60, 50), 9999, label.dtype)
    for y0, x0, y1, x1 in windows((60, 50), chunk):
        part = label_source(pieces)(y0, y1, x0, x1)
        assert part.dtype == label.dtype and part.shape == (y1 - y0, x1 - x0)
        rebuilt[y0:y1, x0:x1] = part
    np.testing.assert_array_equal(rebuilt, label)


def test_labels_switch_to_uint32_past_65535_cells(tmp_path):
    import tifffile

    side = 260  # 67,600 one-pixel cells
    cells = [Cell(x, y, np.ones((1, 1), bool), 1.0 - (y * side + x) * 1e-6, 0,
                  np.array([x, y, x + 1, y + 1.])) for y in range(side) for x in range(side)]
    label, kept = paint_labels(cells, (side, side))
    assert label.dtype == np.uint32 and label.max() == side * side
    write_label_tiff(str(tmp_path / "l.tif"), label)
    assert np.array_equal(tifffile.imread(tmp_path / "l.tif"), label)
    label, _ = paint_labels(cells[:65535], (side, side))
    assert label.dtype == np.uint16


def fill(poly, height, width):
    """Pixels whose centres lie inside the polygon (ImageJ's rule), as an independent reader."""
    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    return MplPath(poly).contains_points(centres).reshape(height, width)


def largest_piece_filled(mask):
    """The mask's 4-connected piece with the most pixels, holes (8-connected background) filled:
    what one ImageJ polygon ROI of a cell in pieces should fill, found independently (OpenCV)."""
    _, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    return binary_fill_holes(parts == 1 + np.argmax(np.bincount(parts.ravel())[1:]),
                             structure=np.ones((3, 3)))


def test_roi_zip_polygons_give_back_the_label_image(tmp_path):
    import roifile

    rng = np.random.default_rng(2)
    image, gt, _ = synthesize_mosaic(rng, 1, 1, ("cort",), height=120, width=160)
    cells = []
    for k in range(1, gt.max() + 1):
        ys, xs = np.nonzero(gt == k)
        if len(ys):
            m = (gt == k)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            cells.append(Cell(int(xs.min()), int(ys.min()), m, 1.0 - k * 1e-3, 0,
                              np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1.])))
    label, kept = paint_labels(cells, gt.shape)
    write_rois(str(tmp_path / "r.zip"), kept)
    rois = roifile.roiread(str(tmp_path / "r.zip"))
    assert [int(r.name) for r in rois] == list(range(1, len(kept) + 1))
    ious = []
    for r in rois:
        filled = fill(r.coordinates(), *gt.shape)
        truth = label == int(r.name)
        ious.append((filled & truth).sum() / (filled | truth).sum())
    assert min(ious) > 0.9 and np.mean(ious) > 0.99  # exact but for holes and pinches
    assert len(polygons(kept[0])) >= 1


def test_a_cell_in_pieces_gets_the_roi_of_its_body_not_of_a_wider_ring(tmp_path):
    """A sparse ring (208 px enclosing 784) beside a solid piece (460 px): the ROI is the
    solid piece's outline, whose area the old largest-enclosed-area rule passed over."""
    import roifile

    mask = np.zeros((30, 60), bool)
    mask[0:28, 0:28] = True
    mask[2:26, 2:26] = False
    mask[5:25, 35:58] = True
    write_rois(str(tmp_path / "r.zip"), [Cell(10, 7, mask, 1.0, 0, np.zeros(4))])
    (roi,) = roifile.roiread(str(tmp_path / "r.zip"))
    filled = fill(roi.coordinates(), 40, 80)
    body = np.zeros((40, 80), bool)
    body[12:32, 45:68] = True
    assert np.array_equal(filled, body)


def test_roi_is_the_hole_filled_largest_piece_of_any_mask(tmp_path):
    """Random blotchy masks in pieces, with holes and a thin ring (some enclosing more area
    than the largest piece, as a model's cell around a higher-scored one): filling each ROI
    gives exactly the largest 4-connected piece with its holes (8-connected background) filled."""
    import roifile

    rng = np.random.default_rng(0)
    several = 0
    for _ in range(40):
        blur = cv2.GaussianBlur(rng.random((60, 80)).astype(np.float32), (0, 0), 2)
        drawn = (blur > 0.55).astype(np.uint8)
        centre = (int(rng.integers(20, 60)), int(rng.integers(20, 40)))
        cv2.circle(drawn, centre, int(rng.integers(8, 20)), 1, 1, cv2.LINE_4)
        truth = np.pad(drawn.astype(bool), ((4, 6), (3, 7)))
        ys, xs = np.nonzero(truth)
        mask = truth[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        write_rois(str(tmp_path / "r.zip"), [Cell(int(xs.min()), int(ys.min()), mask, 1.0, 0,
                                                  np.zeros(4))])
        (roi,) = roifile.roiread(str(tmp_path / "r.zip"))
        several += cv2.connectedComponents(truth.astype(np.uint8), connectivity=4)[0] > 2
        assert np.array_equal(fill(roi.coordinates(), *truth.shape), largest_piece_filled(truth))
    assert several >= 30


class LabelOracle:
    """Stands in for a trained model where the test needs exact answers: the image's pixels
    encode a label image (B + 256 G), and it "detects" every labelled cell it sees, cut to
    what it sees, as Detectron2 Instances. It has DefaultPredictor's interface."""

    input_format = "BGR"

    def __init__(self):
        self.cfg = get_cfg()
        self.cfg.MODEL.DEVICE = "cpu"
        self.model = self._model
        self.calls = 0

    def _model(self, inputs):
        self.calls += 1
        img = inputs[0]["image"].numpy().round().astype(np.int64)  # CHW, BGR
        label = img[0] + 256 * img[1]
        ids = [i for i in np.unique(label) if i]
        inst = Instances(label.shape)
        masks = torch.from_numpy(np.stack([label == i for i in ids]) if ids
                                 else np.zeros((0, *label.shape), bool))
        boxes = []
        for m in masks.numpy():
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        inst.pred_masks = masks
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.linspace(0.99, 0.9, len(ids))
        inst.pred_classes = torch.zeros(len(ids), dtype=torch.long)
        return [{"instances": inst}]

    def __call__(self, image):
        x = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return self.model([{"image": x}])[0]


def encoded(label):
    return np.stack([label % 256, label // 256, np.zeros_like(label)], axis=2).astype(np.uint8)


def test_tiles_stitch_into_one_instance_per_cell():
    """Every cell of a 2x3 mosaic (cells up to ~60 px, overlap 130 px) comes out whole and
    once, whether it lies inside a tile, across a seam or at a tile corner."""
    rng = np.random.default_rng(3)
    _, gt, _ = synthesize_mosaic(rng, 2, 3, ("cort", "shsy5y"))
    cfg = get_cfg()
    add_yolact_config(cfg)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 520, 704
    oracle = LabelOracle()
    segmenter = CellSegmenter(oracle, cfg, score_thresh=0.5)
    assert segmenter.tile == 520 and segmenter.overlap == 130
    assert segmenter.fits_one_tile(520, 704) and not segmenter.fits_one_tile(1040, 2112)
    cells = segmenter(encoded(gt))
    assert oracle.calls == len(tile_starts(1040, 520, 130)) * len(tile_starts(2112, 520, 130))
    label, kept = paint_labels(cells, gt.shape)
    assert len(kept) == len(cells) == len(np.unique(gt)) - 1
    for k in range(1, len(kept) + 1):
        ids = np.unique(gt[label == k])
        assert len(ids) == 1 and np.array_equal(gt == ids[0], label == k)


def test_uniform_tiles_are_not_run():
    """The zero padding around a stitched well: its tiles are not run through the model, and
    the cells are those of the well alone; a uniform image has none."""
    rng = np.random.default_rng(5)
    _, gt, _ = synthesize_mosaic(rng, 1, 2, ("cort",))
    cfg = get_cfg()
    add_yolact_config(cfg)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 520, 704
    padded = np.zeros((2000, 2500), gt.dtype)
    padded[:gt.shape[0], :gt.shape[1]] = gt
    oracle = LabelOracle()
    cells = CellSegmenter(oracle, cfg, score_thresh=0.5)(encoded(padded))
    starts_y, starts_x = tile_starts(2000, 520, 130), tile_starts(2500, 520, 130)
    holding = sum(1 for y in starts_y for x in starts_x
                  if padded[y:y + 520, x:x + 520].any())
    assert oracle.calls == holding < len(starts_y) * len(starts_x)
    label, kept = paint_labels(cells, padded.shape)
    assert len(kept) == len(np.unique(gt)) - 1
    assert CellSegmenter(oracle, cfg, 0.5)(np.full((300, 400, 3), 7, np.uint8)) == []
    assert oracle.calls == holding


def test_predict_on_a_mosaic_writes_every_output_consistently(trained, tmp_path):
    import roifile
    import tifffile

    rng = np.random.default_rng(4)
    image, _, _ = synthesize_mosaic(rng, 2, 2, ("shsy5y",), height=160, width=224)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "well.png"), image)
    out = tmp_path / "out"
    # 160 px tiles (overlap 40) at TINY's scale 1: the 320x448 mosaic takes 2x3 of them.
    proc = tool("predict.py", "--config-file", CONFIG, "--weights", trained / "model_final.pth",
                "--input", tmp_path / "in", "--output", out, "--score-thresh", "0.0",
                "--save-tif", "--save-rois", "--save-outlines", "--save-png", *TINY,
                "TEST.TILE.NATIVE_SHORT_SIDE", 160, "TEST.TILE.SIZE", 160,
                "TEST.TILE.OVERLAP", 40)
    assert "labels/" in proc.stdout
    label = tifffile.imread(out / "labels" / "well.tif")
    assert label.dtype == np.uint16 and label.shape == image.shape
    results = json.load(open(out / "coco_results.json"))
    assert label.max() == len(results) > 0
    for k, det in enumerate(results, start=1):
        assert np.array_equal(label == k, mask_util.decode(det["segmentation"]).astype(bool))
    rows = list(csv.DictReader(open(out / "cells.csv")))
    assert [int(r["cell_id"]) for r in rows] == list(range(1, len(results) + 1))
    assert all(int(r["area_px"]) == (label == int(r["cell_id"])).sum() for r in rows)
    with zipfile.ZipFile(out / "rois" / "well.zip") as z:
        assert len(z.namelist()) == len(results)
    rois = roifile.roiread(str(out / "rois" / "well.zip"))
    for r in rois:
        # A 12-iteration model's cells come in pieces, or as rings where a higher-scored cell
        # took their middle: an ImageJ polygon is the outline of the largest piece, holes filled.
        largest = largest_piece_filled(label == int(r.name))
        filled = fill(r.coordinates(), *label.shape)
        assert (filled & largest).sum() / (filled | largest).sum() > 0.9
    for folder in ("overlays", "outlines"):
        drawn = cv2.imread(str(out / folder / "well.png"))
        assert drawn.shape == (*image.shape, 3) and (drawn != image[:, :, None]).any()


@pytest.mark.parametrize("band", [1, 7, 64])
def test_outlines_band_by_band_equal_the_whole(tmp_path, band):
    """A whole well's outline PNG is drawn and written band by band: the pixels of outlines()
    of the whole image."""
    import cv2

    from cellseg_d2.cells import non_overlapping
    from cellseg_d2.outputs import outline_bands, outlines, write_png_bands

    rng = np.random.default_rng(4)
    cells = random_cells(rng, 60, 50, 80)
    image = rng.integers(0, 255, (60, 50, 3), dtype=np.uint8)
    label, kept = paint_labels(cells, (60, 50))
    classes = np.array([c.cls for c in kept])
    meta = type("Meta", (), {})()  # no thing_colors: the default palette
    whole = outlines(image, label, classes, meta)
    assert not np.array_equal(whole, image)
    kept = non_overlapping(cells, (60, 50))
    write_png_bands(str(tmp_path / "o.png"), outline_bands(image, kept, classes, meta, band),
                    60, 50)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "o.png")), whole)


@pytest.mark.parametrize("colour", [False, True])
def test_ome_zarr_written_chunk_by_chunk(tmp_path, colour):
    """write_ome_zarr: ome-zarr-py reads back the image (grey where its channels agree, else
    RGB planes) and the label image at full resolution; each level halves the one below."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from cellseg_d2.ome_zarr_output import write_ome_zarr

    rng = np.random.default_rng(5)
    grey = rng.integers(0, 255, (150, 70), dtype=np.uint8)
    image = np.stack([grey, grey // 2, grey // 3], -1) if colour else np.repeat(
        grey[:, :, None], 3, axis=2)
    label, _ = paint_labels(random_cells(rng, 150, 70, 40), (150, 70))
    path = str(tmp_path / "x.zarr")
    write_ome_zarr(path, (150, 70), lambda y0, y1, x0, x1: image[y0:y1, x0:x1],
                   lambda y0, y1, x0, x1: label[y0:y1, x0:x1], label.dtype, chunk=32)
    nodes = list(Reader(parse_url(path))())
    pixels, cells = nodes[0], [n for n in nodes if "labels" in str(n.zarr)][-1]
    assert len(pixels.data) == len(cells.data) == 4  # 150 px halved 3 times to fit 32 px
    full = np.asarray(pixels.data[0])
    if colour:
        np.testing.assert_array_equal(full, np.moveaxis(image[:, :, ::-1], -1, 0))
    else:
        np.testing.assert_array_equal(full, grey)
    np.testing.assert_array_equal(np.asarray(cells.data[0]), label)
    for k in range(1, 4):
        np.testing.assert_array_equal(np.asarray(cells.data[k]), label[::2 ** k, ::2 ** k])
        np.testing.assert_array_equal(np.asarray(pixels.data[k]), full[..., ::2 ** k, ::2 ** k])
