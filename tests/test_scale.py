"""One test-time scale for every image size and every path: the training scale
(config.inference_scale), whether an image is whole, a crop, tiled, evaluated or augmented."""
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from scipy import ndimage

from cellseg_d2.cells import paint_labels
from cellseg_d2.config import inference_scale, load_cfg
from cellseg_d2.data.mapper import CellDatasetMapper
from cellseg_d2.predict import CellPredictor
from cellseg_d2.tiling import CellSegmenter, _mask_iou

from .conftest import CONFIG, REPO

REAL = str(REPO / "configs" / "real_R18_cpu.yaml")
RADIUS = 6  # px in the image: cells of ~113 px^2, ~254 network px^2 at the recipe's 1.5x


class BlobDetector:
    """A stand-in for a detector trained at one scale: it finds the dark blobs of its input
    whose area (network pixels) is what such cells have at that scale, and nothing else, and
    records the scale of every input it sees. Outputs follow Detectron2 (masks at the
    requested height x width)."""

    def __init__(self, scale):
        area = np.pi * RADIUS**2 * scale**2
        self.band = (0.6 * area, 1.6 * area)
        self.scales = []

    def __call__(self, batched):
        outputs = []
        for d in batched:
            image = d["image"][0].numpy()
            h, w = d.get("height", image.shape[0]), d.get("width", image.shape[1])
            self.scales.append((image.shape[0] / h, image.shape[1] / w))
            blobs, n = ndimage.label(image < 100)
            areas = ndimage.sum(np.ones_like(blobs), blobs, index=np.arange(1, n + 1))
            keep = [k + 1 for k, a in enumerate(areas) if self.band[0] <= a <= self.band[1]]
            masks = [torch.nn.functional.interpolate(
                torch.from_numpy(blobs == k)[None, None].float(), size=(h, w))[0, 0] > 0.5
                for k in keep]
            masks = [m for m in masks if m.any()]
            inst = Instances((h, w))
            inst.pred_masks = torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=bool)
            boxes = []
            for m in masks:
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.full((len(masks),), 0.9)
            inst.pred_classes = torch.zeros(len(masks), dtype=torch.long)
            outputs.append({"instances": inst})
        return outputs


def cell_image(height, width, seed=0):
    """Dark discs of RADIUS on a light background, apart from each other."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width), 200, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    centres = []
    for _ in range(4000):
        cy, cx = rng.integers(RADIUS + 1, height - RADIUS - 1), rng.integers(RADIUS + 1,
                                                                               width - RADIUS - 1)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (4 * RADIUS) ** 2 for y, x in centres):
            centres.append((cy, cx))
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS**2] = 40
    return np.repeat(image[:, :, None], 3, axis=2), len(centres)


@pytest.fixture(scope="module")
def segmenter():
    cfg = load_cfg(REAL, ["MODEL.WEIGHTS", ""], device="cpu")
    predictor = CellPredictor(cfg)
    predictor.model = BlobDetector(inference_scale(cfg))
    return CellSegmenter(predictor, cfg, 0.5), predictor.model


def test_the_recipe_tests_at_its_training_scale():
    assert inference_scale(load_cfg(REAL)) == 1.5  # INPUT.TRAIN_SCALE (1.5, 1.5)
    assert inference_scale(load_cfg(CONFIG)) == 1.0  # 520 / 520
    base = load_cfg(str(REPO / "configs" / "Base-YOLACT.yaml"))
    assert inference_scale(base) == pytest.approx(1024 / 520)


@pytest.mark.parametrize("crop", [(0, 0, 260, 352), (37, 101, 260, 352), (13, 7, 180, 250),
                                  (200, 300, 320, 404)])
def test_cells_of_a_crop_are_the_cells_of_the_whole_image(segmenter, crop):
    """A 260x352 crop of a 520x704 image was segmented at 3x (ResizeShortestEdge to 780), its
    cells then 4x the area the model knows: now every path runs at the recipe's 1.5x."""
    seg, detector = segmenter
    image, n = cell_image(520, 704)
    full = paint_labels(seg(image), image.shape[:2])[1]
    assert len(full) == n
    y0, x0, h, w = crop
    detector.scales.clear()
    cells = paint_labels(seg(image[y0:y0 + h, x0:x0 + w]), (h, w))[1]
    assert {s for s in detector.scales} == {(1.5, 1.5)}
    margin = 2 * RADIUS + 2
    inside = [c for c in full if c.x0 >= x0 + margin and c.y0 >= y0 + margin
              and c.bounds[2] <= x0 + w - margin and c.bounds[3] <= y0 + h - margin]
    for c in cells:
        c.x0, c.y0 = c.x0 + x0, c.y0 + y0
    matched = [a for a in inside if any(_mask_iou(a, b) >= 0.5 for b in cells)]
    assert len(inside) >= 10 and len(matched) >= 0.9 * len(inside)
    assert len(matched) == len(inside)  # this detector is exact: so must the pipeline be


def test_tiles_and_small_images_see_the_training_scale(segmenter):
    seg, detector = segmenter
    for shape in [(16, 12), (100, 90), (520, 704), (704, 520), (1400, 1100)]:
        detector.scales.clear()
        image, _ = cell_image(*shape, seed=1) if min(shape) > 40 else \
            (np.full((*shape, 3), 200, np.uint8), 0)
        image[0, 0] = 190  # not of one value (that holds no cell: not run at all)
        seg(image)
        assert detector.scales and all(abs(a - 1.5) < 0.01 and abs(b - 1.5) < 0.01
                                       for a, b in detector.scales), (shape, detector.scales)
    assert not seg.fits_one_tile(1400, 1100) and seg.fits_one_tile(704, 520)


@pytest.mark.parametrize("config", [REAL, CONFIG, str(REPO / "configs" / "maskrcnn_R18_cpu.yaml")])
def test_evaluation_scales_every_image_size_alike(config):
    cfg = load_cfg(config)
    mapper = CellDatasetMapper(cfg, is_train=False)
    scale = inference_scale(cfg)
    for h, w in [(520, 704), (1024, 1024), (260, 352), (2048, 2048)]:
        image = np.zeros((h, w), np.uint8)
        aug = mapper.augmentations.augs
        out = aug[0].get_transform(image).apply_image(image)
        assert out.shape == (int(h * scale + 0.5), int(w * scale + 0.5)), (h, w, out.shape)


def test_mask_rcnn_test_time_augmentation_uses_the_same_scale():
    from cellseg_d2.engine import ScaledDatasetMapperTTA

    cfg = load_cfg(str(REPO / "configs" / "real_maskrcnn_R18_cpu.yaml"))
    mapper = ScaledDatasetMapperTTA(cfg)
    for h, w in [(520, 704), (1024, 1024)]:
        image = torch.zeros((3, int(h * 1.5 + 0.5), int(w * 1.5 + 0.5)), dtype=torch.uint8)
        views = mapper({"image": image, "height": h, "width": w})
        assert len(views) == 2  # the view and its flip
        for v in views:
            assert tuple(v["image"].shape[1:]) == (int(h * 1.5 + 0.5), int(w * 1.5 + 0.5))
            box = v["transforms"].inverse().apply_box(np.array([[0, 0, v["image"].shape[2],
                                                                 v["image"].shape[1]]]))
            np.testing.assert_allclose(np.sort(box[0][[0, 2]]), [0, w], atol=1e-3)
