import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import cellseg_d2  # noqa: F401
from cellseg_d2.data.datasets import DatasetMissingError
from cellseg_d2.data.livecell import LIVECELL_CLASSES


def test_names_are_registered_on_import():
    names = set(DatasetCatalog.list())
    for split in ("train", "val", "test"):
        assert {f"sartorius_{split}", f"livecell_{split}", f"synthetic_{split}",
                f"livecell_a172_{split}"} <= names
    assert {"sartorius_recon_train", "sartorius_recon_val"} <= names
    assert MetadataCatalog.get("sartorius_train").thing_classes == ["shsy5y", "astro", "cort"]
    assert MetadataCatalog.get("livecell_val").thing_classes == list(LIVECELL_CLASSES)
    assert MetadataCatalog.get("livecell_skov3_test").thing_classes == ["SKOV3"]


def test_missing_data_is_reported_on_load(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSEG_DATASETS", str(tmp_path))
    with pytest.raises(DatasetMissingError, match="dataset 'sartorius_val'.*convert_sartorius"):
        DatasetCatalog.get("sartorius_val")
    with pytest.raises(DatasetMissingError, match="dataset 'livecell_train'"):
        DatasetCatalog.get("livecell_train")


def test_synthetic_loads_through_the_catalog(tiny_synthetic, monkeypatch):
    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    dicts = DatasetCatalog.get("synthetic_train")
    assert len(dicts) == 4
    for d in dicts:
        assert cv2.imread(d["file_name"]) is not None
        assert d["annotations"] and all(0 <= a["category_id"] < 3 for a in d["annotations"])
    assert MetadataCatalog.get("synthetic_train").json_file.endswith("annotations/train.json")


def test_livecell_official_layout(tmp_path, monkeypatch):
    root = tmp_path / "livecell"
    images = root / "images" / "livecell_train_val_images"
    (images / "BV2").mkdir(parents=True)
    names = ["A172_Phase_A7_1_00d00h00m_1.tif", "BV2_Phase_A4_1_00d00h00m_2.tif"]
    cv2.imwrite(str(images / names[0]), np.zeros((520, 704), np.uint8))
    cv2.imwrite(str(images / "BV2" / names[1]), np.zeros((520, 704), np.uint8))
    poly = [[10, 10, 30, 10, 30, 25, 10, 25]]
    data = {"categories": [{"id": 1, "name": "cell"}],
            "images": [{"id": 7, "file_name": names[0], "width": 704, "height": 520},
                       {"id": 9, "file_name": names[1], "width": 704, "height": 520}],
            # the official files key annotations by id
            "annotations": {"1": {"id": 1, "image_id": 7, "category_id": 1, "segmentation": poly,
                                  "bbox": [10, 10, 20, 15], "area": 300, "iscrowd": 0},
                            "2": {"id": 2, "image_id": 9, "category_id": 1, "segmentation": poly,
                                  "bbox": [10, 10, 20, 15], "area": 300, "iscrowd": 0}}}
    ann_dir = root / "annotations" / "LIVECell"
    ann_dir.mkdir(parents=True)
    (ann_dir / "livecell_coco_train.json").write_text(json.dumps(data))
    single = root / "annotations" / "LIVECell_single_cells" / "bv2"
    single.mkdir(parents=True)
    data_bv2 = dict(data, images=data["images"][1:], annotations=[data["annotations"]["2"]])
    (single / "train.json").write_text(json.dumps(data_bv2))
    monkeypatch.setenv("CELLSEG_DATASETS", str(tmp_path))
    dicts = DatasetCatalog.get("livecell_train")
    assert [d["annotations"][0]["category_id"] for d in dicts] == [0, 2]  # A172, BV2
    assert all(cv2.imread(d["file_name"]) is not None for d in dicts)
    bv2 = DatasetCatalog.get("livecell_bv2_train")
    assert len(bv2) == 1 and bv2[0]["annotations"][0]["category_id"] == 0


def test_epochs_become_iterations(tiny_synthetic, monkeypatch):
    from cellseg_d2.config import apply_epochs, load_cfg

    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    cfg = load_cfg("configs/synthetic_R18_cpu.yaml",
                   ["SOLVER.EPOCHS", "10", "SOLVER.IMS_PER_BATCH", "3", "TEST.EVAL_PERIOD_EPOCHS", "5"])
    assert apply_epochs(cfg) == 2  # 4 training images, batch 3
    assert cfg.SOLVER.MAX_ITER == 20 and cfg.SOLVER.STEPS == (16, 19)
    assert cfg.TEST.EVAL_PERIOD == 10


def test_overfit_subset_takes_four_images_per_class(tiny_synthetic, monkeypatch):
    from cellseg_d2.data.datasets import first_per_class

    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    records = DatasetCatalog.get("synthetic_train") + DatasetCatalog.get("synthetic_val")
    chosen = first_per_class(records, per_class=1)
    majority = [max(set(c := [a["category_id"] for a in r["annotations"]]), key=c.count)
                for r in chosen]
    assert sorted(majority) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(4))
def test_crop_and_transpose_move_masks_with_the_image(seed):
    """The mapper's stack fast paths (flip, transpose, crop) equal transforming each mask as the
    image is transformed."""
    import detectron2.data.transforms as T

    from cellseg_d2.config import add_yolact_config
    from cellseg_d2.data.mapper import build_augmentations, transform_masks

    cfg = get_cfg()
    add_yolact_config(cfg)
    cfg.INPUT.TRAIN_SCALE = (1.0, 1.0)
    cfg.INPUT.TRANSPOSE = True
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", [40, 50]
    rng = np.random.default_rng(seed)
    label = np.zeros((60, 90), np.uint8)
    for i in range(1, 9):
        y, x = rng.integers(0, 55), rng.integers(0, 85)
        label[y:y + rng.integers(2, 9), x:x + rng.integers(2, 12)] = i
    masks = np.stack([label == i for i in range(1, 9)]).astype(np.uint8)
    np.random.seed(seed)
    aug = T.AugInput(np.repeat(label[:, :, None], 3, axis=2))
    transforms = T.AugmentationList(build_augmentations(cfg, True))(aug)
    out = transform_masks(masks, transforms)
    assert out.shape[1:] == aug.image.shape[:2] and sorted(out.shape[1:]) == [40, 50]
    for i in range(8):
        np.testing.assert_array_equal(out[i].numpy(), aug.image[:, :, 0] == i + 1)


def test_crop_decodes_only_the_cells_it_meets(tiny_synthetic, monkeypatch):
    import detectron2.data.transforms as T

    from cellseg_d2.data.mapper import CellDatasetMapper, inside_crop

    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    record = max(DatasetCatalog.get("synthetic_train"), key=lambda r: len(r["annotations"]))
    anns, hw = record["annotations"], (record["height"], record["width"])
    for x0, y0 in [(0, 0), (100, 60), (160, 100)]:
        crop = T.TransformList([T.CropTransform(x0, y0, 64, 60)])
        every = CellDatasetMapper.instances(anns, crop, record, (60, 64))
        some = inside_crop(anns, crop.transforms[0])
        assert len(some) < len(anns)
        met = CellDatasetMapper.instances(some, crop, record, (60, 64))
        assert len(every) == len(met) > 0 and hw == (160, 224)
        assert torch.equal(every.gt_masks.tensor, met.gt_masks.tensor)
        assert torch.equal(every.gt_classes, met.gt_classes)


def test_crop_without_cells_gives_empty_instances(tiny_synthetic, monkeypatch):
    import detectron2.data.transforms as T

    from cellseg_d2.data.mapper import CellDatasetMapper, transform_masks

    resize = T.TransformList([T.CropTransform(0, 0, 10, 10), T.ResizeTransform(10, 10, 15, 15),
                              T.VFlipTransform(15)])
    assert transform_masks(np.zeros((0, 40, 50), np.uint8), resize).shape == (0, 15, 15)
    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    record = DatasetCatalog.get("synthetic_train")[0]
    inst = CellDatasetMapper.instances([], resize, record, (15, 15))
    assert len(inst) == 0 and inst.gt_masks.tensor.shape == (0, 15, 15)

