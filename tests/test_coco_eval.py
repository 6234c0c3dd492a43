"""faster-coco-eval scoring equals pycocotools' on real-shaped data; tools/evaluate.py scores
results files and label folders the same way."""
import contextlib
import copy
import io
import json

import cv2
import numpy as np
import pytest
import tifffile
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cellseg_d2.cells import Cell, cells_from_label, coco_rle, paint_labels
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.evaluation.per_class import METRICS, evaluate_coco, per_class_metrics

from .conftest import tool
from .test_evaluation import independent_kaggle

NAMES = ["shsy5y", "astro", "cort"]


def perturbed(rng, cell, height, width, k):
    """A detection near a ground-truth cell: dilated, eroded or shifted."""
    m = np.pad(cell.mask, 3).astype(np.uint8)
    if k == 0:
        m = cv2.dilate(m, np.ones((3, 3), np.uint8))
    elif k == 1:
        m = cv2.erode(m, np.ones((2, 2), np.uint8))
    else:
        m = np.roll(m, int(rng.integers(-3, 4)), axis=int(rng.integers(2)))
    full = np.zeros((height + 6, width + 6), bool)  # 3 px of margin all round
    full[cell.y0:cell.y0 + m.shape[0], cell.x0:cell.x0 + m.shape[1]] = m
    full = full[3:-3, 3:-3]
    return cells_from_label(full.astype(np.int32))[0] if full.any() else None


@pytest.fixture(scope="module")
def real_shaped():
    """3 synthetic 704x520 images (shsy5y ~340 cells, cort, astro) and ~3 detections per cell
    with random scores and 1 in 4 of another class: ~1000 detections per dense image."""
    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for i, cell_type in enumerate(["shsy5y", "cort", "astro"], start=1):
        _, label = synthesize_image(rng, cell_type)
        images.append({"id": i, "file_name": f"img{i}.png", "height": 520, "width": 704})
        cat = NAMES.index(cell_type) + 1
        for c in cells_from_label(label):
            x0, y0, x1, y1 = c.bounds
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "iscrowd": 0,
                         "area": c.area, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "segmentation": coco_rle(c, 520, 704)})
            for k in range(3):
                d = perturbed(rng, c, 520, 704, k)
                if d is not None:
                    bx0, by0, bx1, by1 = d.bounds
                    dets.append({"image_id": i, "score": float(rng.random()),
                                 "category_id": int(rng.choice([cat, cat, cat, cat % 3 + 1])),
                                 "bbox": [bx0, by0, bx1 - bx0, by1 - by0],
                                 "segmentation": coco_rle(d, 520, 704)})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k, "name": n} for k, n in enumerate(NAMES, start=1)]}
    return gt, dets


def pycocotools_eval(gt_dict, dets, iou_type, max_dets):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
        dets = copy.deepcopy(dets)
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox")
        e = (COCOeval if max_dets == 100 else COCOevalMaxDets)(gt, gt.loadRes(dets), iou_type)
        e.params.maxDets = [1, 10, max_dets]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("max_dets", [100, 1000, 2000])
def test_faster_coco_eval_equals_pycocotools(real_shaped, iou_type, max_dets):
    gt, dets = real_shaped
    assert len(dets) > 900 and len(gt["annotations"]) > 400
    ref = pycocotools_eval(gt, dets, iou_type, max_dets)
    ours = evaluate_coco(_pycoco(gt), dets, iou_type, (1, 10, max_dets))
    np.testing.assert_allclose(ours.eval["precision"], ref.eval["precision"], atol=1e-6)
    np.testing.assert_allclose(ours.stats[:6], ref.stats[:6], atol=1e-6)
    a = per_class_metrics(ours.eval["precision"], ours.params.iouThrs, NAMES)
    b = per_class_metrics(ref.eval["precision"], ref.params.iouThrs, NAMES)
    for name in NAMES:
        for m in METRICS:
            assert a[name][m] == pytest.approx(b[name][m], abs=1e-4, nan_ok=True)


def _pycoco(gt_dict):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
    return gt


def test_evaluate_tool_json_and_label_folder_agree(real_shaped, tmp_path):
    """Non-overlapping predictions scoring 1 (what a label image holds) written both ways: the
    same numbers, equal to pycocotools' (AP) and to an independent Kaggle metric."""
    gt, dets = real_shaped
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    labels, results = tmp_path / "labels", []
    labels.mkdir()
    pred_labels = {}
    for img in gt["images"]:
        cells = [Cell(*_cell_args(d)) for d in dets if d["image_id"] == img["id"]]
        label, kept = paint_labels(cells, (520, 704))
        pred_labels[img["id"]] = label
        suffix = "_cp_masks.tif" if img["id"] == 1 else ".tif"  # Cellpose's naming too
        tifffile.imwrite(labels / f"img{img['id']}{suffix}", label)
        cat = next(a["category_id"] for a in gt["annotations"] if a["image_id"] == img["id"])
        for c in kept:
            x0, y0, x1, y1 = c.bounds
            results.append({"image_id": img["id"], "category_id": cat, "score": 1.0,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": coco_rle(c, 520, 704)})
    (tmp_path / "results.json").write_text(json.dumps(results))
    out_json, out_labels = tmp_path / "eval_json", tmp_path / "eval_labels"
    tool("evaluate.py", "--gt", tmp_path / "gt.json", "--results", tmp_path / "results.json",
         "--output", out_json, "--max-dets", 2000)
    tool("evaluate.py", "--gt", tmp_path / "gt.json", "--results", labels, "--output", out_labels,
         "--max-dets", 2000)
    # the same masks either way: the same numbers to the last digit (text compares NaN too)
    assert (out_json / "results.json").read_text() == (out_labels / "results.json").read_text()
    a = json.loads((out_json / "results.json").read_text())
    assert set(a) == {"bbox", "segm", "kaggle"}
    ref = pycocotools_eval(gt, results, "segm", 2000)
    table = per_class_metrics(ref.eval["precision"], ref.params.iouThrs, NAMES)
    for name in NAMES:
        assert a["segm"][f"AP-{name}"] == pytest.approx(table[name]["AP"], abs=1e-4)
        assert a["segm"][f"APs-{name}"] == pytest.approx(table[name]["APs"], abs=1e-4, nan_ok=True)
    assert a["segm"]["AP"] == pytest.approx(ref.stats[0] * 100, abs=1e-4)
    gt_labels = {}
    for ann in gt["annotations"]:
        import pycocotools.mask as mask_util

        lab = gt_labels.setdefault(ann["image_id"], np.zeros((520, 704), np.int32))
        lab[mask_util.decode(ann["segmentation"]).astype(bool)] = ann["id"]
    kaggle = [independent_kaggle(np.unique(gt_labels[i], return_inverse=True)[1].reshape(520, 704),
                                 pred_labels[i].astype(np.int64)) for i in (1, 2, 3)]
    assert a["kaggle"]["score"] == pytest.approx(np.mean(kaggle) * 100)
    per_csv = (out_json / "per_class_segm.csv").read_text().splitlines()
    assert per_csv[0] == "class,AP,AP50,AP75,APs,APm,APl" and len(per_csv) == 4


def _cell_args(det):
    import pycocotools.mask as mask_util

    m = mask_util.decode(det["segmentation"]).astype(bool)
    c = cells_from_label(m.astype(np.int32))[0]
    return c.x0, c.y0, c.mask, det["score"], det["category_id"], np.zeros(4)


@pytest.mark.parametrize("content,message", [
    ("[{\"image_id\": 99, \"category_id\": 1, \"score\": 1, \"segmentation\": {}}]",
     "has image_id 99, not an image of the ground truth"),
    ("{\"not\": \"a list\"}", "a COCO results file is a list of detections"),
    ("[{\"image_id\": 1, \"score\": 1}]", "detection 0 has no 'category_id'"),
    ("not json", "not a JSON file"),
])
def test_evaluate_tool_bad_results_one_line(real_shaped, tmp_path, content, message):
    gt, _ = real_shaped
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(content)
    proc = tool("evaluate.py", "--gt", tmp_path / "gt.json", "--results", tmp_path / "r.json",
                check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "evaluation").exists()


def test_evaluate_tool_label_of_wrong_size(real_shaped, tmp_path):
    gt, _ = real_shaped
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "labels").mkdir()
    for i in (1, 2, 3):
        tifffile.imwrite(tmp_path / "labels" / f"img{i}.tif",
                         np.zeros((520, 704) if i != 2 else (10, 10), np.uint16))
    proc = tool("evaluate.py", "--gt", tmp_path / "gt.json", "--results", tmp_path / "labels",
                check=False)
    assert proc.returncode == 1 and "img2.tif: expected a 520x704 integer label image" in proc.stderr
