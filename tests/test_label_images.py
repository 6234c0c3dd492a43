"""Label-image folders (Usiigaci, Cellpose naming) to the COCO layout as extra training data."""
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from cellseg_d2.data.label_images import TARGET_MEAN, TARGET_STD, convert_label_images
from cellseg_d2.data.sartorius import ConversionError

from .conftest import shared_dataset


def write_pair(image_path, label_path, shape=(60, 80), seed=0):
    """A 16-bit image of bright squares on a dim background, and its label image."""
    rng = np.random.default_rng(seed)
    image = rng.normal(30000, 500, shape).astype(np.uint16)
    label = np.zeros(shape, np.uint16)
    label[10:30, 10:30] = 3  # any label values, not necessarily 1..n
    label[35:55, 40:70] = 300
    label[0, 0] = 7  # a one-pixel sliver: dropped
    image[label > 0] = 40000
    os.makedirs(os.path.dirname(image_path), exist_ok=True)
    cv2.imwrite(str(image_path), image)
    cv2.imwrite(str(label_path), label)
    return image, label


def test_usiigaci_and_cellpose_pairs_convert_with_exact_masks(tmp_path):
    src = tmp_path / "src"
    write_pair(src / "set1" / "raw.tif", src / "set1" / "instances_ids.png")
    write_pair(src / "more" / "a.tif", src / "more" / "a_masks.png", seed=1)
    coco = convert_label_images(str(src), str(tmp_path / "out"), "astro", scale=0.5)
    assert [im["source"] for im in coco["images"]] == [
        str(src / "set1" / "raw.tif"), str(src / "more" / "a.tif")]
    assert {a["category_id"] for a in coco["annotations"]} == {2}  # astro
    assert len(coco["annotations"]) == 4  # 2 cells per image, the slivers dropped
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert sorted(a["area"] for a in first) == [100.0, 150.0]  # 20x20 and 20x30 halved
    for a in first:
        mask = mask_util.decode({"size": a["segmentation"]["size"],
                                 "counts": a["segmentation"]["counts"].encode()})
        assert mask.shape == (30, 40) and mask.sum() == a["area"]
        assert a["bbox"] == [float(v) for v in mask_util.toBbox(
            mask_util.encode(np.asfortranarray(mask)))]
    image = cv2.imread(str(tmp_path / "out" / coco["images"][0]["file_name"]),
                       cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (30, 40)
    assert abs(image.mean() - TARGET_MEAN) < 2 and abs(image.std() - TARGET_STD) < 2
    assert os.path.isfile(tmp_path / "out" / "annotations" / "train.json")


def test_bad_pairs_are_one_error_and_no_output(tmp_path):
    src = tmp_path / "src"
    write_pair(src / "set1" / "raw.tif", src / "set1" / "instances_ids.png")
    write_pair(src / "set2" / "raw.tif", src / "set2" / "instances_ids.png")
    cv2.imwrite(str(src / "set2" / "instances_ids.png"), np.zeros((10, 10), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="set2.*instances_ids.png.*does not match"):
        convert_label_images(str(src), str(out), "astro")
    assert not out.exists()
    (src / "set2" / "raw.tif").write_bytes(b"not a tiff")
    with pytest.raises(ConversionError, match="set2.*raw.tif: not a readable image"):
        convert_label_images(str(src), str(out), "astro")
    os.remove(src / "set2" / "raw.tif")
    with pytest.raises(ConversionError, match="set2.*raw.tif: image file not found"):
        convert_label_images(str(src), str(out), "astro")
    with pytest.raises(ConversionError, match="no label images"):
        convert_label_images(str(tmp_path / "empty"), str(out), "astro")
    with pytest.raises(ConversionError, match="'neuron' is not one of"):
        convert_label_images(str(src), str(out), "neuron")
    assert not out.exists()


def test_real_usiigaci_images_register_as_extra_train(tmp_path, monkeypatch):
    src = shared_dataset("usiigaci")
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("set1", "set2"):
        os.symlink(src / "train" / name, subset / name)
    coco = convert_label_images(str(subset), str(tmp_path / "extra"), "astro", scale=0.67)
    label = cv2.imread(str(src / "train" / "set1" / "instances_ids.png"), cv2.IMREAD_UNCHANGED)
    n_cells = len(np.unique(label)) - 1
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert n_cells - 2 <= len(first) <= n_cells  # only border slivers may drop
    monkeypatch.setenv("CELLSEG_DATASETS", str(tmp_path))
    from detectron2.data import DatasetCatalog

    import cellseg_d2  # noqa: F401  (registers the datasets)

    dicts = DatasetCatalog.get("extra_train")
    assert len(dicts) == 2 and (dicts[0]["height"], dicts[0]["width"]) == (685, 686)
    assert len(dicts[0]["annotations"]) == len(first)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} == {1}  # astro, contiguous
