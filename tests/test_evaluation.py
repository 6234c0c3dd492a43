import contextlib
import copy
import io
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cellseg_d2.evaluation import per_class_metrics
from cellseg_d2.evaluation.kaggle_metric import iou_matrix_score, rle_score


def remove_overlaps(masks, scores):
    """Reference non-overlap on the dense (n, H, W) stack: each pixel goes to the
    highest-scored mask covering it; masks left empty are dropped. Returns (kept masks in score
    order, their indices into the input)."""
    masks = torch.as_tensor(masks).bool()
    order = np.argsort(-np.asarray(scores), kind="stable")
    out = masks[order].clone()
    taken = torch.zeros(masks.shape[1:], dtype=torch.bool)
    for m in out:
        m &= ~taken
        taken |= m
    keep = out.flatten(1).any(dim=1).numpy()
    return out[torch.from_numpy(keep)], order[keep]


def image_score(gt_masks, pred_masks) -> float:
    """The metric's rle_score from dense (n, H, W) masks (pred_masks must not overlap)."""
    def rles(masks):
        if not len(masks):
            return []
        return mask_util.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))
    return rle_score(rles(gt_masks), rles(pred_masks))


def independent_kaggle(gt_label, pred_label):
    """Label-image implementation of the competition metric (no pycocotools)."""
    n_gt, n_pred = gt_label.max(), pred_label.max()
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0
    inter = np.histogram2d(gt_label.ravel(), pred_label.ravel(),
                           bins=(n_gt + 1, n_pred + 1), range=((0, n_gt + 1), (0, n_pred + 1)))[0]
    area_gt = np.bincount(gt_label.ravel(), minlength=n_gt + 1)[:, None]
    area_pred = np.bincount(pred_label.ravel(), minlength=n_pred + 1)[None, :]
    iou = (inter / (area_gt + area_pred - inter))[1:, 1:]
    out = []
    for t in np.arange(0.5, 1.0, 0.05):
        m = iou > t
        tp, fn, fp = (m.sum(1) == 1).sum(), (m.sum(1) == 0).sum(), (m.sum(0) == 0).sum()
        out.append(tp / (tp + fp + fn))
    return float(np.mean(out))


def random_label(rng, h, w, n):
    label = np.zeros((h, w), np.int32)
    for i in range(1, n + 1):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(3, 9)
        yy, xx = np.ogrid[:h, :w]
        label[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (label == 0)] = i
    present = [v for v in np.unique(label) if v]
    return np.searchsorted([0] + present, label).astype(np.int32)


def masks_of(label):
    return np.stack([label == i for i in range(1, label.max() + 1)]) if label.max() else \
        np.zeros((0, *label.shape), bool)


@pytest.mark.parametrize("seed", range(6))
def test_kaggle_metric_equals_independent_implementation(seed):
    rng = np.random.default_rng(seed)
    gt = random_label(rng, 60, 80, int(rng.integers(0, 25)))
    # predictions: ground truth perturbed (shifted, some dropped) plus random extras
    pred = np.roll(gt, shift=int(rng.integers(-2, 3)), axis=1)
    pred[pred % 4 == 1] = 0
    extra = random_label(rng, 60, 80, 5)
    pred = np.where((pred == 0) & (extra > 0), extra + pred.max(), pred)
    pred = np.searchsorted(np.unique(pred), pred).astype(np.int32)
    assert image_score(masks_of(gt), masks_of(pred)) == pytest.approx(independent_kaggle(gt, pred))


def test_kaggle_metric_edge_cases():
    assert iou_matrix_score(np.array([[1.0]])) == 1.0
    empty = np.zeros((0, 5, 5), bool)
    one = np.ones((1, 5, 5), bool)
    assert image_score(empty, empty) == 1.0
    assert image_score(one, empty) == 0.0 and image_score(empty, one) == 0.0


def test_remove_overlaps_higher_score_wins():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True       # low score
    masks[1, 1:3] = True      # high score
    masks[2, 1] = True        # covered entirely by the high-score mask
    out, keep = remove_overlaps(masks, np.array([0.3, 0.9, 0.5]))
    assert keep.tolist() == [1, 0]
    assert out[0].sum() == 8 and out[1].sum() == 4 and not (out[0] & out[1]).any()


def _coco_eval(gt_json, dets, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "segm")  # loadRes mutates
        ev.params.maxDets = [1, 10, 1000]
        if cat_ids:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_per_class_table_equals_pycocotools(tiny_synthetic):
    gt_json = str(tiny_synthetic / "synthetic" / "annotations" / "train.json")
    data = json.load(open(gt_json))
    rng = np.random.default_rng(0)
    dets = []
    for a in data["annotations"]:
        if rng.random() < 0.2:
            continue
        m = mask_util.decode(a["segmentation"])
        if rng.random() < 0.3:
            m = np.roll(m, 2, axis=1)
        rle = mask_util.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "segmentation": rle, "score": float(rng.random())})
    ev = _coco_eval(gt_json, dets)
    table = per_class_metrics(ev.eval["precision"], ev.params.iouThrs, ["shsy5y", "astro", "cort"])
    for cid, name in enumerate(["shsy5y", "astro", "cort"], start=1):
        ref = _coco_eval(gt_json, dets, [cid])
        # summarize() reads AP50/AP75/APs/APm/APl at maxDets[2] = 1000 (its AP is at 100)
        for i, metric in ((1, "AP50"), (2, "AP75"), (3, "APs"), (4, "APm"), (5, "APl")):
            expected = ref.stats[i] * 100 if ref.stats[i] >= 0 else float("nan")
            assert table[name][metric] == pytest.approx(expected, nan_ok=True), (name, metric)
        p = ref.eval["precision"][:, :, 0, 0, -1]
        assert table[name]["AP"] == pytest.approx(p[p > -1].mean() * 100)
    assert table["shsy5y"]["AP"] < 100


def test_box_rle_equals_pycocotools():
    from cellseg_d2.evaluation.box_rle import encode_instance_masks

    rng = np.random.default_rng(0)
    h, w = 52, 70
    masks = np.zeros((30, h, w), bool)
    boxes = []
    for i in range(30):
        x0, y0 = rng.integers(0, w - 5), rng.integers(0, h - 5)
        bw, bh = rng.integers(1, 15, 2)
        masks[i, y0:y0 + bh, x0:x0 + bw] = rng.random((min(bh, h - y0), min(bw, w - x0))) > 0.3
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    masks[3] = False  # a mask running on past its box (and the 2 px margin): read whole
    masks[3, 10:14, 5:40] = True
    boxes[3] = [5, 10, 20, 14]
    masks[4] = False  # empty
    masks[5] = False  # the last pixel of the image
    masks[5, h - 1, w - 1] = True
    boxes[5] = [w - 1, h - 1, w, h]
    rles = encode_instance_masks(torch.from_numpy(masks), torch.tensor(boxes, dtype=torch.float))
    for m, r in zip(masks, rles):
        ref = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        assert r["counts"] == ref["counts"].decode() and r["size"] == [h, w]


def test_no_detections_at_all_score_zero_not_nan(tiny_synthetic, tmp_path, monkeypatch):
    """pycocotools cannot score an empty results list and Detectron2 then reports NaN; with
    cells in the ground truth and nothing detected AP is 0 (NaN only where a class or size
    range has no cells), and the per-class table is still written."""
    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances

    from cellseg_d2.evaluation import CellCOCOEvaluator

    records = DatasetCatalog.get("synthetic_val")
    evaluator = CellCOCOEvaluator("synthetic_val", tasks=("segm",), distributed=False,
                                  output_dir=str(tmp_path), max_dets_per_image=1000)
    evaluator.reset()
    for r in records:
        empty = Instances((r["height"], r["width"]), pred_boxes=Boxes(torch.zeros((0, 4))),
                          scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.long),
                          pred_masks=torch.zeros((0, r["height"], r["width"]), dtype=torch.bool))
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": empty}])
    segm = evaluator.evaluate()["segm"]
    present = {a["category_id"] for r in records for a in r["annotations"]}
    assert segm["AP"] == 0.0 and segm["AP50"] == 0.0
    table = json.loads((tmp_path / "per_class_segm.json").read_text())
    for k, name in enumerate(("shsy5y", "astro", "cort")):
        assert (table[name]["AP"] == 0.0) if k in present else np.isnan(table[name]["AP"])
        assert segm[f"AP-{name}"] == table[name]["AP"] or k not in present
    assert np.isnan(segm["APl"])  # no cell of 96x96 px or more in these images


def test_cell_evaluator_equals_detectron2s_own(tiny_synthetic, tmp_path, monkeypatch):
    """CellCOCOEvaluator's own _eval_predictions (faster-coco-eval, box-cropped RLEs) against
    Detectron2's COCOEvaluator (pycocotools) on the same noisy predictions: the same bbox and
    segm metrics, per class too, and the same results file."""
    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import BitMasks, Instances

    from cellseg_d2.evaluation import CellCOCOEvaluator

    rng = np.random.default_rng(0)
    outputs = []
    for r in DatasetCatalog.get("synthetic_val"):
        masks = [mask_util.decode(a["segmentation"]) if isinstance(a["segmentation"], dict)
                 else mask_util.decode(mask_util.merge(mask_util.frPyObjects(
                     a["segmentation"], r["height"], r["width"]))) for a in r["annotations"]]
        masks = [np.roll(m, int(rng.integers(-3, 4)), axis=1) for m in masks
                 if rng.random() > 0.2]
        classes = [int(rng.integers(0, 3)) if rng.random() < 0.2 else a["category_id"]
                   for a in r["annotations"]][:len(masks)]
        bit = BitMasks(torch.from_numpy(np.stack(masks)).bool())
        outputs.append((r, Instances((r["height"], r["width"]), pred_masks=bit.tensor,
                                     pred_boxes=bit.get_bounding_boxes(),
                                     scores=torch.from_numpy(rng.random(len(masks))).float(),
                                     pred_classes=torch.tensor(classes))))
    results = {}
    for name, cls in (("cell", CellCOCOEvaluator), ("detectron2", COCOEvaluator)):
        out = tmp_path / name
        evaluator = cls("synthetic_val", tasks=("bbox", "segm"), distributed=False,
                        output_dir=str(out), max_dets_per_image=100)
        evaluator.reset()
        for r, instances in outputs:
            evaluator.process([{"image_id": r["image_id"]}], [{"instances": instances}])
        results[name] = evaluator.evaluate()
        results[name + "_file"] = json.loads((out / "coco_instances_results.json").read_text())
    for task in ("bbox", "segm"):
        ours, theirs = results["cell"][task], results["detectron2"][task]
        assert ours["AP"] > 10  # a real score, not a degenerate one
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (task, key)
    assert len(results["cell_file"]) == len(results["detectron2_file"])
    for a, b in zip(results["cell_file"], results["detectron2_file"]):
        assert a["category_id"] == b["category_id"] and a["score"] == pytest.approx(b["score"])
        assert mask_util.area(a["segmentation"]) == mask_util.area(b["segmentation"])


def test_score_image_leaves_crowd_regions_out():
    """The one per-image Kaggle scoring (evaluator, tools/evaluate.py, visualize_samples):
    ground truth of polygons and RLEs, crowd regions left out, per class by category id."""
    from cellseg_d2.cells import cells_from_label
    from cellseg_d2.evaluation.kaggle_metric import score_image

    h, w = 40, 50
    label = np.zeros((h, w), np.int32)
    label[2:12, 2:12], label[20:30, 20:34], label[5:15, 30:45] = 1, 2, 3
    rle = mask_util.encode(np.asfortranarray((label == 2).astype(np.uint8)))
    anns = [{"segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "category_id": 0},
            {"segmentation": rle, "category_id": 1},
            {"segmentation": [[0, 30, 10, 30, 10, 39, 0, 39]], "category_id": 1, "iscrowd": 1}]
    cells = cells_from_label(label)
    for c, k in zip(cells, (0, 1, 0)):
        c.cls = k
    score, by_class = score_image(anns, h, w, cells)
    gt = [mask_util.merge(mask_util.frPyObjects(anns[0]["segmentation"], h, w)), rle]
    pred = [mask_util.encode(np.asfortranarray((label == i).astype(np.uint8))) for i in (1, 2, 3)]
    assert score == pytest.approx(rle_score(gt, pred)) and 0 < score < 1
    assert by_class[1] == 1.0  # the crowd region would have been a missed class-1 cell
    assert by_class[0] == pytest.approx(rle_score(gt[:1], [pred[0], pred[2]]))
