import contextlib
import csv
import io
import json
import os
import shutil

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cellseg_d2.data.rle import rle_decode
from cellseg_d2.data.sartorius import (
    SARTORIUS_CLASSES,
    ConversionError,
    convert_sartorius,
    fill_holes,
    split_images,
)

from .conftest import shared_dataset


def self_ap(json_file, max_dets=1000):
    """Segm AP of ground truth scored against itself, read at the last maxDets."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"],
                 "segmentation": gt.annToRLE(a), "score": 1.0} for a in gt.dataset["annotations"]]
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]
    return float(precision[precision > -1].mean())


def test_converted_masks_match_the_csv_and_score_1(tiny_synthetic):
    out = tiny_synthetic / "synthetic"
    train = json.loads((out / "annotations" / "train.json").read_text())
    assert [c["name"] for c in train["categories"]] == list(SARTORIUS_CLASSES)
    rows = list(csv.DictReader(open(out / "train.csv")))
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r["annotation"])
    for img in train["images"]:
        anns = [a for a in train["annotations"] if a["image_id"] == img["id"]]
        assert len(anns) == len(by_id[img["kaggle_id"]])
        for a, rle in zip(anns, by_id[img["kaggle_id"]]):
            m = mask_util.decode(a["segmentation"])
            np.testing.assert_array_equal(m, rle_decode(rle, img["height"], img["width"]))
            assert a["area"] == m.sum()
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert (out / img["file_name"]).is_file()
    assert self_ap(str(out / "annotations" / "train.json")) == pytest.approx(1.0)


def test_polygon_output(tiny_synthetic, tmp_path):
    src = tiny_synthetic / "synthetic"
    result = convert_sartorius(str(src), str(tmp_path), split=(6, 0, 0), polygons=True,
                               progress=False)
    ann = result["train"]["annotations"][0]
    assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
    assert self_ap(str(tmp_path / "annotations" / "train.json")) > 0.8


def test_fill_holes():
    mask = np.zeros((9, 9), np.uint8)
    mask[1:8, 1:8] = 1
    mask[3:6, 3:6] = 0
    mask[0, 4] = 0
    filled = fill_holes(mask)
    assert filled[4, 4] == 1 and filled.sum() == 49
    open_ring = mask.copy()
    open_ring[4, 1:4] = 0  # the hole now reaches the border: not a hole
    assert fill_holes(open_ring)[4, 4] == 0


def test_split_is_stratified_and_deterministic():
    types = {f"c{i}": "cort" for i in range(320)}
    types.update({f"s{i}": "shsy5y" for i in range(155)})
    types.update({f"a{i}": "astro" for i in range(131)})
    parts = split_images(types, (578, 22, 6), seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [578, 22, 6]
    assert set().union(*parts.values()) == set(types) and sum(map(len, parts.values())) == 606
    for name, size in (("val", 22), ("test", 6)):
        for t, n in (("cort", 320), ("shsy5y", 155), ("astro", 131)):
            got = sum(types[i] == t for i in parts[name])
            assert abs(got - size * n / 606) < 1
    assert parts == split_images(types, (578, 22, 6), seed=0)
    assert parts != split_images(types, (578, 22, 6), seed=1)
    small = split_images(dict(list(types.items())[:10]) | {"s0": "shsy5y"}, (0.8, 0.2, 0))
    assert len(small["val"]) == 2 and len(small["test"]) == 0


def _kaggle_copy(src, dst):
    shutil.copytree(src / "train", dst / "train")
    shutil.copy(src / "train.csv", dst / "train.csv")
    return dst


def _edit_csv(path, fn):
    rows = list(csv.reader(open(path)))
    fn(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r[3].__setitem__(1, r[3][1] + " 5"), "row 4: odd number"),
    (lambda r: r[2].__setitem__(1, "1 x"), "row 3: non-integer"),
    (lambda r: r[2].__setitem__(1, "10 0"), "row 3: run length 0"),
    (lambda r: r[2].__setitem__(1, "10 -3"), "row 3: run length -3"),
    (lambda r: r[5].__setitem__(1, "35800 200"), "row 6: run 35800\\+200 goes past"),
    (lambda r: r[2].__setitem__(1, "10 5 12 3"), "row 3: overlapping"),
    (lambda r: r[2].__setitem__(1, "100 5 10 3"), "row 3: unsorted"),
    (lambda r: r[2].__setitem__(2, "abc"), "row 3 .*width/height must be integers"),
    (lambda r: r[2].__setitem__(4, "neuron"), "row 3 .*unknown cell_type"),
    (lambda r: r[0].__setitem__(1, "rle"), "missing column"),
])
def test_malformed_input_fails_cleanly(tiny_synthetic, tmp_path, edit, message):
    data = _kaggle_copy(tiny_synthetic / "synthetic", tmp_path / "in")
    _edit_csv(data / "train.csv", edit)
    with pytest.raises(ConversionError, match=message):
        convert_sartorius(str(data), str(tmp_path / "out"), split=(4, 2, 0), progress=False)
    assert not (tmp_path / "out" / "annotations").exists() or \
        not list((tmp_path / "out" / "annotations").iterdir())


def test_missing_and_wrong_size_images(tiny_synthetic, tmp_path):
    data = _kaggle_copy(tiny_synthetic / "synthetic", tmp_path / "in")
    victim = sorted((data / "train").iterdir())[0]
    cv2.imwrite(str(victim), np.zeros((100, 100), np.uint8))
    with pytest.raises(ConversionError, match=f"{victim.name}: image is 100x100 but train.csv"):
        convert_sartorius(str(data), str(tmp_path / "out"), split=(4, 2, 0), progress=False)
    victim.unlink()
    with pytest.raises(ConversionError, match=f"{victim.stem}.*not found"):
        convert_sartorius(str(data), str(tmp_path / "out"), split=(4, 2, 0), progress=False)
    assert not (tmp_path / "out" / "annotations").exists()


def test_real_sartorius_images_convert_register_and_score_1(tmp_path, monkeypatch):
    src = shared_dataset("sartorius_recon")
    root = tmp_path
    tmp_path = root / "sartorius_recon"
    result = convert_sartorius(str(src), str(tmp_path), split=(26, 8, 0), progress=False)
    monkeypatch.setenv("CELLSEG_DATASETS", str(root))
    from detectron2.data import DatasetCatalog

    for name, n in (("sartorius_recon_train", 26), ("sartorius_recon_val", 8)):
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == n and all(os.path.isfile(d["file_name"]) for d in dicts)
    assert len(result["train"]["images"]) == 26 and len(result["val"]["images"]) == 8
    types = {img["cell_type"] for img in result["val"]["images"]}
    assert types == {"cort", "astro", "shsy5y"}
    for name in ("train", "val"):
        assert self_ap(str(tmp_path / "annotations" / f"{name}.json")) == pytest.approx(1.0)
    # Masks line up with cells: cells are darker or brighter than the flat background, so
    # intensity varies more inside masks than in the background far from any cell.
    img = result["val"]["images"][0]
    image = cv2.imread(str(tmp_path / img["file_name"]), cv2.IMREAD_GRAYSCALE).astype(float)
    fg = np.zeros(image.shape, bool)
    for a in result["val"]["annotations"]:
        if a["image_id"] == img["id"]:
            fg |= mask_util.decode(a["segmentation"]).astype(bool)
    far = ~cv2.dilate(fg.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    assert np.abs(image[fg] - np.median(image[far])).mean() > \
        2 * np.abs(image[far] - np.median(image[far])).mean()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_image_is_one_error_and_no_json(tiny_synthetic, tmp_path, damage):
    """A PNG whose header is fine but whose pixel data is cut short (a broken copy) used to
    convert and then crash training; every image is now decoded in full."""
    data = _kaggle_copy(tiny_synthetic / "synthetic", tmp_path / "in")
    victim = sorted((data / "train").iterdir())[2]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:len(raw) // 2] if damage == "truncated" else raw[:40] + b"\0" * 400)
    with pytest.raises(ConversionError, match=f"{victim.name}: not a readable image"):
        convert_sartorius(str(data), str(tmp_path / "out"), split=(4, 2, 0), progress=False)
    assert not (tmp_path / "out" / "annotations").exists()


def test_excel_csv_with_bom_and_crlf_converts_identically(tiny_synthetic, tmp_path):
    src = tiny_synthetic / "synthetic"
    data = _kaggle_copy(src, tmp_path / "in")
    text = (src / "train.csv").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    (data / "train.csv").write_bytes(b"\xef\xbb\xbf" + text)
    excel = convert_sartorius(str(data), str(tmp_path / "a"), split=(4, 2, 0), progress=False)
    plain = convert_sartorius(str(src), str(tmp_path / "b"), split=(4, 2, 0), progress=False)
    for name in ("train", "val"):
        assert excel[name]["annotations"] == plain[name]["annotations"]
        assert [i["kaggle_id"] for i in excel[name]["images"]] == \
            [i["kaggle_id"] for i in plain[name]["images"]]


def test_coco_json_input_is_split_like_the_kaggle_layout(tiny_synthetic, tmp_path):
    """A user's COCO JSON (category names in any case, file names relative to the JSON, ids
    of their own) becomes train / val JSONs with the project's category ids, same masks."""
    from cellseg_d2.data.coco_input import convert_coco

    src = json.loads((tiny_synthetic / "synthetic" / "annotations" / "train.json").read_text())
    remap = {1: 7, 2: 8, 3: 9}
    user = {"images": [dict(im, id=im["id"] * 10) for im in src["images"]],
            "categories": [{"id": remap[c["id"]], "name": c["name"].upper()}
                           for c in src["categories"]],
            "annotations": [{"id": a["id"] + 100, "image_id": a["image_id"] * 10,
                             "category_id": remap[a["category_id"]],
                             "segmentation": a["segmentation"]} for a in src["annotations"]]}
    path = tiny_synthetic / "synthetic" / "user.json"  # file names are relative to synthetic/
    path.write_text(json.dumps(user))
    out = convert_coco(str(path), str(tmp_path / "real"), split=(2, 2, 0))
    assert [len(out[s]["images"]) for s in ("train", "val", "test")] == [2, 2, 0]
    by_file = {im["file_name"]: im for im in src["images"]}
    for name in ("train", "val"):
        data = json.loads((tmp_path / "real" / "annotations" / f"{name}.json").read_text())
        for im in data["images"]:
            path_in_src = os.path.relpath(tmp_path / "real" / im["file_name"],
                                          tiny_synthetic / "synthetic")
            orig = by_file[path_in_src]
            mine = [a for a in data["annotations"] if a["image_id"] == im["id"]]
            theirs = [a for a in src["annotations"] if a["image_id"] == orig["id"]]
            assert [a["segmentation"] for a in mine] == [a["segmentation"] for a in theirs]
            assert [a["category_id"] for a in mine] == [a["category_id"] for a in theirs]
            assert [a["area"] for a in mine] == pytest.approx([a["area"] for a in theirs])


def test_coco_json_input_errors_name_the_field(tiny_synthetic, tmp_path):
    from cellseg_d2.data.coco_input import convert_coco
    from cellseg_d2.data.sartorius import ConversionError

    src = json.loads((tiny_synthetic / "synthetic" / "annotations" / "train.json").read_text())
    path = tiny_synthetic / "synthetic" / "bad.json"
    path.write_text(json.dumps(dict(src, categories=[{"id": 1, "name": "neuron"}])))
    with pytest.raises(ConversionError, match="category 'neuron' \\(id 1\\) is not one of"):
        convert_coco(str(path), str(tmp_path / "x"), split=(2, 2, 0))
    images = [dict(src["images"][0], file_name="missing.png")] + src["images"][1:]
    path.write_text(json.dumps(dict(src, images=images)))
    with pytest.raises(ConversionError, match="images\\[0\\]: .*missing.png: image file not found"):
        convert_coco(str(path), str(tmp_path / "x"), split=(2, 2, 0))
    assert not (tmp_path / "x").exists()


def _user_export(tiny_synthetic):
    src = json.loads((tiny_synthetic / "synthetic" / "annotations" / "train.json").read_text())
    return src, tiny_synthetic / "synthetic" / "export.json"


def test_coco_json_merged_exports_are_refused(tiny_synthetic, tmp_path):
    from cellseg_d2.data.coco_input import read_coco_export

    src, path = _user_export(tiny_synthetic)
    merged = dict(src, images=src["images"] + [dict(src["images"][0], file_name="other.png")])
    path.write_text(json.dumps(merged))
    with pytest.raises(ConversionError, match=f"images\\[4\\] has id {src['images'][0]['id']}, "
                                              f"which images\\[0\\] also has \\(merged exports"):
        read_coco_export(str(path), str(tmp_path / "x"), split=(2, 2, 0))
    twice = dict(src, images=src["images"] + [dict(src["images"][0], id=99)])
    path.write_text(json.dumps(twice))
    with pytest.raises(ConversionError, match="images\\[4\\] \\(id 99\\) is .*, which images\\[0\\] "
                                              "also is \\(an image listed twice"):
        read_coco_export(str(path), str(tmp_path / "x"), split=(2, 2, 0))
    stray = dict(src, annotations=src["annotations"] + [dict(src["annotations"][0], id=999,
                                                             image_id=12345)])
    path.write_text(json.dumps(stray))
    with pytest.raises(ConversionError, match="annotations\\[.*\\] \\(id 999\\) has image_id 12345, "
                                              "not an image"):
        read_coco_export(str(path), str(tmp_path / "x"), split=(2, 2, 0))
    assert not (tmp_path / "x").exists()


def test_coco_json_unannotated_images_are_left_out_or_kept(tiny_synthetic, tmp_path):
    from cellseg_d2.data.coco_input import read_coco_export

    src, path = _user_export(tiny_synthetic)
    empty_id = src["images"][1]["id"]
    path.write_text(json.dumps(dict(src, annotations=[a for a in src["annotations"]
                                                      if a["image_id"] != empty_id])))
    result, left_out = read_coco_export(str(path), str(tmp_path / "x"), split=(0.5, 0.5, 0))
    assert left_out == 1
    kept = [im["id"] for s in result.values() for im in s["images"]]
    assert sorted(kept) == sorted(im["id"] for im in src["images"] if im["id"] != empty_id)
    result, left_out = read_coco_export(str(path), str(tmp_path / "x"), split=(2, 2, 0),
                                        keep_empty=True)
    assert left_out == 0 and sum(len(s["images"]) for s in result.values()) == 4
