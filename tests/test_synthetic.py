import cv2
import numpy as np

from cellseg_d2.data.rle import rle_decode
from cellseg_d2.data.sartorius import read_train_csv
from cellseg_d2.data.synthetic import generate_dataset, synthesize_image


def _stats(cell_type, n=3, seed=0):
    rng = np.random.default_rng(seed)
    counts, areas = [], []
    for _ in range(n):
        image, label = synthesize_image(rng, cell_type)
        assert image.shape == (520, 704) and image.dtype == np.uint8
        a = np.bincount(label.ravel())[1:]
        counts.append(len(a))
        areas.extend(a)
    return np.mean(counts), np.median(areas)


def test_cell_types_have_their_real_counts_and_sizes():
    count, area = _stats("cort")
    assert 15 <= count <= 60 and 170 <= area <= 330
    count, area = _stats("shsy5y")
    assert 200 <= count <= 600 and 150 <= area <= 300
    count, area = _stats("astro")
    assert 40 <= count <= 130 and 600 <= area <= 1400


def test_phase_contrast_look():
    image, label = synthesize_image(np.random.default_rng(3), "cort")
    fg = label > 0
    inner = cv2.erode(fg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ring = cv2.dilate(fg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~fg
    bg = ~cv2.dilate(fg.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert image[inner].mean() < image[bg].mean() - 10      # dark interiors
    assert image[ring].mean() > image[bg].mean() + 5        # bright halos
    assert image[bg].std() > 2                              # texture and noise


def test_dataset_is_seeded_and_in_kaggle_layout(tmp_path):
    ids = generate_dataset(str(tmp_path / "a"), images_per_type=1, height=120, width=160,
                           seed=5, progress=False)
    generate_dataset(str(tmp_path / "b"), images_per_type=1, height=120, width=160, seed=5,
                     progress=False)
    assert (tmp_path / "a" / "train.csv").read_bytes() == (tmp_path / "b" / "train.csv").read_bytes()
    images = read_train_csv(str(tmp_path / "a" / "train.csv"))
    assert sorted(images) == sorted(ids)
    assert {v["cell_type"] for v in images.values()} == {"cort", "shsy5y", "astro"}
    for image_id, info in images.items():
        png = cv2.imread(str(tmp_path / "a" / "train" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert png.shape == (120, 160) and png.dtype == np.uint8
        masks = np.stack([rle_decode(a, 120, 160) for _, a in info["rows"]])
        assert masks.sum(0).max() == 1  # one cell per pixel: no overlaps
