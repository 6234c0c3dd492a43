"""Cell diameter: training records its cells' median diameter (MODEL.CELL_DIAMETER) and
predict --diameter D / auto segments images of other magnifications at the matching scale,
returning masks at the image's own resolution."""
import json

import cv2
import numpy as np
import pytest
import yaml

from cellseg_d2.cells import paint_labels
from cellseg_d2.config import SetupError, inference_scale, load_cfg
from cellseg_d2.diameter import equivalent_diameter
from cellseg_d2.predict import CellPredictor
from cellseg_d2.tiling import CellSegmenter

from .conftest import tool
from .test_scale import RADIUS, REAL, BlobDetector, cell_image

MODEL_DIAMETER = 2 * RADIUS  # a disc of RADIUS px, as the stand-in detector was "trained" on


class TolerantBlobDetector(BlobDetector):
    """Finds blobs from 1/5 to 5x the area it knows, as a real model finds some cells at the
    wrong scale: what --diameter auto's first pass needs to measure them."""

    def __init__(self, scale):
        super().__init__(scale)
        area = np.pi * RADIUS**2 * scale**2
        self.band = (0.2 * area, 5 * area)


def make_segmenter(detector_cls, diameter):
    cfg = load_cfg(REAL, ["MODEL.WEIGHTS", "", "MODEL.CELL_DIAMETER", MODEL_DIAMETER],
                   device="cpu")
    predictor = CellPredictor(cfg)
    predictor.model = detector_cls(inference_scale(cfg))
    return CellSegmenter(predictor, cfg, 0.5, diameter=diameter), predictor.model


def label_of(segmenter, image):
    return paint_labels(segmenter(image), image.shape[:2])[0]


def match_rate(reference: np.ndarray, label: np.ndarray) -> float:
    """Fraction of the reference's cells matched at IoU >= 0.5 by a cell of ``label`` (both at
    the reference's resolution)."""
    matched, ids = 0, [i for i in np.unique(reference) if i]
    for i in ids:
        cell = reference == i
        others = label[cell]
        best = np.bincount(others[others > 0]).argmax() if (others > 0).any() else 0
        if best:
            other = label == best
            matched += (cell & other).sum() / (cell | other).sum() >= 0.5
    return matched / len(ids)


@pytest.mark.parametrize("factor", [0.5, 2.0])
@pytest.mark.parametrize("mode", ["given", "auto"])
def test_other_magnifications_give_the_same_cells(factor, mode):
    image, n = cell_image(260, 352)
    seg, _ = make_segmenter(TolerantBlobDetector if mode == "auto" else BlobDetector, None)
    reference = label_of(seg, image)
    assert len(np.unique(reference)) - 1 == n

    size = (round(352 * factor), round(260 * factor))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else
                         cv2.INTER_LINEAR)
    diameter = MODEL_DIAMETER * factor if mode == "given" else "auto"
    seg, detector = make_segmenter(TolerantBlobDetector if mode == "auto" else BlobDetector,
                                   diameter)
    label = label_of(seg, resized)
    assert label.shape == resized.shape[:2]  # masks at the image's own resolution
    # auto measures the resized image's cells (smoothed edges: within 15%)
    assert seg.last_diameter == pytest.approx(MODEL_DIAMETER * factor, rel=0.15)
    # The model saw the cells at its own size: the training scale x 12 / D.
    assert detector.scales[-1][0] == pytest.approx(1.5 * MODEL_DIAMETER / seg.last_diameter,
                                                   rel=0.01)
    back = cv2.resize(label.astype(np.int32).astype(np.float32), (352, 260),
                      interpolation=cv2.INTER_NEAREST).astype(np.int64)
    rate = match_rate(reference, back)
    print(f"factor {factor} {mode}: {rate:.1%} of {n} cells matched")
    assert n >= 50 and rate >= 0.95


def test_without_diameter_the_scale_is_the_training_scale():
    image, n = cell_image(260, 352)
    seg, detector = make_segmenter(BlobDetector, None)
    assert len(seg(image)) == n and {s for s in detector.scales} == {(1.5, 1.5)}
    assert seg.last_diameter == MODEL_DIAMETER


def test_auto_keeps_an_image_at_the_models_scale():
    image, _ = cell_image(260, 352)
    seg, detector = make_segmenter(TolerantBlobDetector, "auto")
    seg(image)
    assert len(detector.scales) == 1 and seg.last_diameter == MODEL_DIAMETER  # one pass


def test_a_model_without_a_recorded_diameter_is_one_line():
    cfg = load_cfg(REAL, ["MODEL.WEIGHTS", ""], device="cpu")
    with pytest.raises(SetupError, match="MODEL.CELL_DIAMETER"):
        CellSegmenter(lambda image: None, cfg, 0.5, diameter=10.0)


def test_training_records_its_cells_diameter(trained, tiny_synthetic):
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    coco = json.loads((tiny_synthetic / "synthetic" / "annotations" / "train.json").read_text())
    expected = np.median(equivalent_diameter([a["area"] for a in coco["annotations"]]))
    assert cfg["MODEL"]["CELL_DIAMETER"] == pytest.approx(expected, abs=0.01)
    for k, cat in enumerate(sorted(c["id"] for c in coco["categories"])):  # shsy5y, astro, cort
        own = [a["area"] for a in coco["annotations"] if a["category_id"] == cat]
        assert cfg["MODEL"]["CELL_DIAMETER_BY_CLASS"][k] == pytest.approx(
            np.median(equivalent_diameter(own)), abs=0.01)


def test_auto_compares_with_the_diameter_of_the_class_found():
    """A model of small and large cell types (Sartorius' astrocytes are twice the others)
    finds its large type at its own size: auto leaves such an image alone, and rescales one
    whose large cells are half their size."""
    image, _ = cell_image(260, 352)
    cfg_opts = ["MODEL.WEIGHTS", "", "MODEL.CELL_DIAMETER", 6.0,
                "MODEL.CELL_DIAMETER_BY_CLASS", "[12.0, 6.0, 6.0]"]
    cfg = load_cfg(REAL, cfg_opts, device="cpu")
    predictor = CellPredictor(cfg)
    predictor.model = TolerantBlobDetector(inference_scale(cfg))  # its cells: class 0, 12 px
    seg = CellSegmenter(predictor, cfg, 0.5, diameter="auto")
    seg(image)
    assert len(predictor.model.scales) == 1 and seg.last_diameter == 6.0
    small = cv2.resize(image, (176, 130), interpolation=cv2.INTER_AREA)
    seg(small)
    assert len(predictor.model.scales) == 3
    assert seg.last_diameter == pytest.approx(3.0, rel=0.15)  # in the model's overall terms


def test_predict_diameter_options(trained, tiny_synthetic, tmp_path):
    images = sorted((tiny_synthetic / "synthetic" / "train").glob("*.png"))[:1]
    args = ["--config-file", trained / "config.yaml", "--weights", trained / "model_final.pth",
            "--input", images[0]]
    proc = tool("predict.py", *args, "--output", tmp_path / "a", "--diameter", "auto")
    with open(tmp_path / "a" / "counts.csv") as f:
        assert float(f.read().splitlines()[1].split(",")[-1]) > 0
    bad = tool("predict.py", *args, "--output", tmp_path / "b", "--diameter", "-3", check=False)
    assert bad.returncode == 2 and "cell diameter" in bad.stderr
    old = tool("predict.py", *args, "--output", tmp_path / "c", "--diameter", "10",
               "MODEL.CELL_DIAMETER", "0", check=False)
    assert old.returncode == 1 and "MODEL.CELL_DIAMETER" in old.stderr
    assert "Traceback" not in old.stderr and proc.returncode == 0


def test_an_image_of_small_cells_is_tiled_at_the_diameters_scale():
    """Cells half the model's size: at 3x the image outgrows one tile; the tiles are cut and
    stitched at that scale and give the full-resolution image's cells."""
    image, n = cell_image(700, 900, seed=2)
    seg, _ = make_segmenter(BlobDetector, None)
    reference = label_of(seg, image)
    small = cv2.resize(image, (450, 350), interpolation=cv2.INTER_AREA)
    seg, detector = make_segmenter(BlobDetector, MODEL_DIAMETER / 2)
    assert not seg.fits_one_tile(350, 450, seg.scale_for(MODEL_DIAMETER / 2))
    label = label_of(seg, small)
    assert len(detector.scales) > 1 and all(abs(a - 3.0) < 0.02 for a, _ in detector.scales)
    back = cv2.resize(label.astype(np.float32), (900, 700), interpolation=cv2.INTER_NEAREST)
    assert match_rate(reference, back.astype(np.int64)) >= 0.95 and n >= 100
