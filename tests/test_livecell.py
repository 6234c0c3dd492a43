"""LIVECell on its real files (../shared/data/livecell_sample: 5 images, 1,243 official
annotations): the loader, the 8-type classes, and LIVECell's evaluation protocol (2000
detections, area bands 324 / 961 px^2, AR at 100 / 500 / 2000, class-agnostic), checked
against pycocotools run with the parameters of LIVECell's own evaluation code."""
import copy
import json
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cellseg_d2.data.image_io import read_image
from cellseg_d2.data.livecell import LIVECELL_CLASSES
from cellseg_d2.evaluation import CellCOCOEvaluator

from .conftest import REPO, shared_dataset, tool

ANNOTATIONS = "annotations/LIVECell/livecell_coco_val.json"
PROTOCOL = {"max_dets": (100, 500, 2000), "area_bands": (324, 961), "class_agnostic": True}


@pytest.fixture(scope="module")
def sample():
    return shared_dataset("livecell_sample")


@pytest.fixture
def livecell_env(sample, monkeypatch):
    monkeypatch.setenv("CELLSEG_LIVECELL", str(sample))
    return sample


def livecell_pycocotools(gt_file, results, img_ids=None):
    """pycocotools with the parameters of LIVECell's code/coco_evaluation.py (Edlund et al.):
    class-agnostic, maxDets 100 / 500 / 2000, areas split at 18^2 and 31^2; stats read at
    the last maxDets (its summarize_2)."""
    gt = COCO(str(gt_file))
    e = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "segm")
    e.params.useCats = 0
    e.params.maxDets = [100, 500, 2000]
    e.params.areaRng = [[0, 1e5**2], [0, 18**2], [18**2, 31**2], [31**2, 1e5**2]]
    if img_ids is not None:
        e.params.imgIds = list(img_ids)
    e.evaluate()
    e.accumulate()
    p = e.eval["precision"]

    def mean(x):
        x = x[x > -1]
        return float(np.mean(x) * 100) if x.size else float("nan")
    r = e.eval["recall"]
    return {"AP": mean(p[:, :, :, 0, 2]), "AP50": mean(p[0, :, :, 0, 2]),
            "AP75": mean(p[5, :, :, 0, 2]), "APs": mean(p[:, :, :, 1, 2]),
            "APm": mean(p[:, :, :, 2, 2]), "APl": mean(p[:, :, :, 3, 2]),
            "AR@100": mean(r[:, :, 0, 0]), "AR@500": mean(r[:, :, 0, 1]),
            "AR@2000": mean(r[:, :, 0, 2])}


def test_sample_loads_with_the_cell_types_as_classes(livecell_env):
    dicts = DatasetCatalog.get("livecell_val")
    assert len(dicts) == 5 and MetadataCatalog.get("livecell_val").thing_classes == \
        list(LIVECELL_CLASSES)
    by_type = Counter()
    for d in dicts:
        image = read_image(d["file_name"])  # 8-bit LZW TIFF
        assert image.shape == (520, 704, 3) and image.std() > 5
        classes = {a["category_id"] for a in d["annotations"]}
        assert len(classes) == 1  # one cell type per image, from its file name
        cls = classes.pop()
        assert d["file_name"].split("/")[-1].split("_")[0] == LIVECELL_CLASSES[cls]
        by_type[LIVECELL_CLASSES[cls]] += len(d["annotations"])
        assert all(isinstance(a["segmentation"], list) for a in d["annotations"])
    assert by_type == {"MCF7": 711 + 108, "BT474": 174 + 177, "Huh7": 73}


def ground_truth_as_outputs(dicts):
    """The ground truth of each image as a model's output (masks, boxes, score 1, its class)."""
    outputs = []
    for d in dicts:
        h, w = d["height"], d["width"]
        masks = np.stack([mask_util.decode(mask_util.merge(mask_util.frPyObjects(
            a["segmentation"], h, w))) for a in d["annotations"]]).astype(bool)
        inst = Instances((h, w))
        inst.pred_masks = torch.from_numpy(masks)
        boxes = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                 for ys, xs in (np.nonzero(m) for m in masks)]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(masks))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        outputs.append({"instances": inst})
    return outputs


def test_ground_truth_scores_1_in_every_band_and_type(livecell_env, tmp_path):
    dicts = DatasetCatalog.get("livecell_val")
    evaluator = CellCOCOEvaluator("livecell_val", tasks=("segm",), distributed=False,
                                  output_dir=str(tmp_path), max_dets_per_image=2000, **PROTOCOL)
    evaluator.reset()
    evaluator.process([{"image_id": d["image_id"]} for d in dicts], ground_truth_as_outputs(dicts))
    segm = evaluator.evaluate()["segm"]
    for m in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@2000"):
        assert segm[m] == pytest.approx(100), m
    for t in ("MCF7", "BT474", "Huh7"):
        for m in ("AP", "APs", "APm", "APl"):
            assert segm[f"{m}-{t}"] == pytest.approx(100), (t, m)
    assert np.isnan(segm["AP-A172"]) and np.isnan(segm["AP-SkBr3"])
    assert segm["AR@100"] < 100  # 711 cells in one image: 100 detections cannot find them all


def score(rng):
    """A random score that a model's float32 output holds exactly."""
    return float(np.float32(rng.random()))


def perturbed_results(gt_file, seed=0, densest_to=2100):
    """Detections on the sample: most cells shifted by a few pixels, some missing, random
    scores; false ones added to the densest image up to ``densest_to`` (2,100: more than the
    2000 read)."""
    rng = np.random.default_rng(seed)
    data = json.loads(gt_file.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    results = []
    for a in data["annotations"]:
        if rng.random() < 0.1:
            continue
        h, w = sizes[a["image_id"]]
        m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
        dy, dx = rng.integers(-3, 4, 2)
        m = np.roll(m, (dy, dx), axis=(0, 1))
        rle = mask_util.encode(np.asfortranarray(m))
        results.append({"image_id": a["image_id"], "category_id": 1, "score": score(rng),
                        "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    densest = Counter(r["image_id"] for r in results).most_common(1)[0][0]
    h, w = sizes[densest]
    while sum(r["image_id"] == densest for r in results) < densest_to:
        m = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        m[y:y + rng.integers(5, 20), x:x + rng.integers(5, 20)] = 1
        rle = mask_util.encode(np.asfortranarray(m))
        results.append({"image_id": densest, "category_id": 1, "score": score(rng) * 0.5,
                        "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    return results


def test_evaluate_tool_equals_livecells_own_protocol(sample, tmp_path):
    """The official layout (annotations keyed by id, one category "cell") against results of
    a model of the 8 cell types (category ids 1-8: class-agnostic, they do not count)."""
    gt_file = sample / ANNOTATIONS
    results = perturbed_results(gt_file)
    official = json.loads(gt_file.read_text())
    official["annotations"] = {str(a["id"]): a for a in official["annotations"]}
    (tmp_path / "official.json").write_text(json.dumps(official))
    types = {im["id"]: LIVECELL_CLASSES.index(im["file_name"].split("_")[0])
             for im in official["images"]}
    typed = [dict(r, category_id=types[r["image_id"]] + 1) for r in results]
    (tmp_path / "results.json").write_text(json.dumps(typed))
    proc = tool("evaluate.py", "--gt", tmp_path / "official.json", "--results",
                tmp_path / "results.json", "--protocol", "livecell", "--output", tmp_path / "eval")
    assert "--max-dets 2000 detections (most: 2100" in proc.stderr  # more than it reads: said
    ours = json.loads((tmp_path / "eval" / "results.json").read_text())["segm"]
    ref = livecell_pycocotools(gt_file, results)
    for m, v in ref.items():
        assert ours[m] == pytest.approx(v, abs=1e-6), m
    assert 5 < ref["AP"] < 95 and ref["APs"] >= 0 and ref["APl"] >= 0


def test_evaluator_per_type_equals_livecells_protocol_per_type(livecell_env, tmp_path):
    gt_file = livecell_env / ANNOTATIONS
    results = perturbed_results(gt_file, seed=1, densest_to=800)
    dicts = DatasetCatalog.get("livecell_val")
    cls = {d["image_id"]: d["annotations"][0]["category_id"] for d in dicts}
    evaluator = CellCOCOEvaluator("livecell_val", tasks=("segm",), distributed=False,
                                  output_dir=str(tmp_path), max_dets_per_image=2000, **PROTOCOL)
    evaluator.reset()
    for d in dicts:  # the same detections as a model's output, with its image's type
        mine = [r for r in results if r["image_id"] == d["image_id"]]
        masks = np.stack([mask_util.decode(dict(r["segmentation"],
                                                counts=r["segmentation"]["counts"].encode()))
                          for r in mine]).astype(bool)
        inst = Instances((d["height"], d["width"]))
        inst.pred_masks = torch.from_numpy(masks)
        inst.pred_boxes = Boxes(torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                                              for ys, xs in (np.nonzero(m) for m in masks)],
                                             dtype=torch.float32))
        inst.scores = torch.tensor([r["score"] for r in mine])
        inst.pred_classes = torch.full((len(mine),), cls[d["image_id"]])
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    segm = evaluator.evaluate()["segm"]
    overall = livecell_pycocotools(gt_file, results)
    for m in ("AP", "AP50", "APs", "APm", "APl", "AR@100", "AR@2000"):
        assert segm[m] == pytest.approx(overall[m], abs=1e-6), m
    for t in ("MCF7", "BT474", "Huh7"):
        ids = [i for i, c in cls.items() if LIVECELL_CLASSES[c] == t]
        ref = livecell_pycocotools(gt_file, results, ids)
        for m in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert segm[f"{m}-{t}"] == pytest.approx(ref[m], abs=1e-6, nan_ok=True), (t, m)


def test_short_cpu_run_trains_and_evaluates_on_the_sample(livecell_env, tmp_path):
    out = tmp_path / "run"
    tool("train_net.py", "--config-file", REPO / "configs" / "livecell_R18_cpu.yaml",
         "DATASETS.TRAIN", "('livecell_val',)", "MODEL.FPN.OUT_CHANNELS", 64,
         "INPUT.MIN_SIZE_TRAIN", "(260,)", "INPUT.MIN_SIZE_TEST", 260, "SOLVER.IMS_PER_BATCH", 2,
         "MODEL.YOLACT.PROTONET_CHANNELS", 64, "SOLVER.MAX_ITER", 12, "SOLVER.WARMUP_ITERS", 3,
         "SOLVER.STEPS", "()", "TEST.EVAL_PERIOD", 12, "SOLVER.CHECKPOINT_PERIOD", 12,
         "OUTPUT_DIR", out)
    final = [json.loads(line) for line in open(out / "metrics.json") if "segm/AP" in line][-1]
    assert {"segm/AR@100", "segm/AR@500", "segm/AR@2000"} <= set(final)
    for t in ("MCF7", "BT474", "Huh7"):
        assert np.isfinite(final[f"segm/AP-{t}"])
    assert np.isnan(final["segm/AP-A172"])
    table = json.loads((out / "inference" / "livecell_val" / "per_class_segm.json").read_text())
    assert list(table) == list(LIVECELL_CLASSES)
    dets = json.loads((out / "inference" / "livecell_val" / "coco_instances_results.json")
                      .read_text())
    per_image = Counter(d["image_id"] for d in dets)
    assert dets and max(per_image.values()) <= 2000
