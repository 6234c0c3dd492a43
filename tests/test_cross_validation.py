"""Cross-validation (tools/ablate_real.py --folds): folds stratified by cell type, every image
validated once, the folds' detections pooled and scored as one evaluation."""
import importlib.util
import json
import os
from collections import Counter

import pytest

from cellseg_d2.config import SetupError, load_cfg
from cellseg_d2.data.sartorius import ConversionError, kfold_parts
from cellseg_d2.evaluation.files import ScoringError, load_ground_truth
from cellseg_d2.evaluation.pooled import cross_validation_report, pool_folds

from .conftest import REPO, tool
from .test_evaluate_inputs import ground_truth

# sartorius_recon's mix: 21 cort, 9 astro, 4 shsy5y
TYPES = {f"{t}{i:02d}": t for t, n in (("cort", 21), ("astro", 9), ("shsy5y", 4))
         for i in range(n)}


@pytest.mark.parametrize("folds, seed", [(4, 0), (4, 1), (5, 0), (2, 3), (34, 0)])
def test_every_image_is_validated_once_and_folds_keep_the_mix(folds, seed):
    parts = kfold_parts(TYPES, folds, seed)
    assert len(parts) == folds
    validated = [i for p in parts for i in p["val"]]
    assert sorted(validated) == sorted(TYPES)  # each exactly once
    sizes = [len(p["val"]) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for p in parts:
        assert sorted(p["train"] + p["val"]) == sorted(TYPES) and not p["test"]
        mix = Counter(TYPES[i] for i in p["val"])
        for t, n in Counter(TYPES.values()).items():
            assert abs(mix[t] - n / folds) < 1, (t, mix)
    assert kfold_parts(TYPES, folds, seed) == parts  # seeded
    if folds == 4:
        assert all(2 <= Counter(TYPES[i] for i in p["val"])["astro"] <= 3 for p in parts)


def test_other_seeds_deal_other_folds():
    assert kfold_parts(TYPES, 4, 0) != kfold_parts(TYPES, 4, 1)


@pytest.mark.parametrize("folds", [1, 35])
def test_impossible_fold_counts_are_refused(folds):
    with pytest.raises(ConversionError, match="folds"):
        kfold_parts(TYPES, folds)


def perfect(gt_dict, score=1.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": score,
             "bbox": a["bbox"], "segmentation": a["segmentation"]} for a in gt_dict["annotations"]]


def test_pooled_folds_score_as_one_evaluation(tmp_path):
    data = ground_truth()
    (tmp_path / "gt.json").write_text(json.dumps(data))
    gt = load_ground_truth(str(tmp_path / "gt.json"))
    results = perfect(data)
    folds = [[1, 3], [2]]
    per_fold = [[r for r in results if r["image_id"] in f] for f in folds]
    report = cross_validation_report(gt, pool_folds(per_fold, folds), thresh=0.5)
    assert report["segm"]["AP"] == pytest.approx(100.0)
    assert report["recall_at_thresh"] == {"astro": pytest.approx(100.0),
                                          "cort": pytest.approx(100.0)}
    rows = {r["image"]: r for r in report["per_image"]}
    assert rows["a.png"]["gt_cells"] == rows["a.png"]["found"] == 4
    assert rows["b.png"]["type"] == "cort" and rows["b.png"]["found_cort"] == 4

    # Ranked perfectly but scored below the threshold: AP stays, recall at it is 0, and the
    # per-image counts show it.
    low = cross_validation_report(gt, perfect(data, 0.3), thresh=0.5)
    assert low["segm"]["AP"] == pytest.approx(100.0)
    assert low["recall_at_thresh"] == {"astro": 0.0, "cort": 0.0}
    assert low["agnostic_recall"]["0.1"]["astro"] == pytest.approx(100.0)
    assert low["agnostic_recall"]["0.5"]["astro"] == 0.0
    assert all(r["found"] == 0 for r in low["per_image"])

    # Half of astro's cells (image a's 4 of 8) above the threshold.
    half = [dict(r, score=0.9 if r["image_id"] == 1 else 0.3) for r in results]
    recall = cross_validation_report(gt, half, thresh=0.5)["recall_at_thresh"]
    assert recall["astro"] == pytest.approx(50.0) and recall["cort"] == 0.0

    # Every cell found, every one typed astro: cort's recall is 0, its agnostic recall 100.
    typed = cross_validation_report(gt, [dict(r, category_id=1) for r in results], thresh=0.5)
    assert typed["recall_at_thresh"]["cort"] == 0.0
    assert typed["agnostic_recall"]["0.5"]["cort"] == pytest.approx(100.0)


def test_pooling_refuses_overlapping_or_stray_folds():
    results = [{"image_id": 2, "category_id": 1, "score": 1.0}]
    with pytest.raises(ScoringError, match="folds 0 and 1"):
        pool_folds([[], []], [[1, 2], [2, 3]])
    with pytest.raises(ScoringError, match="did not validate"):
        pool_folds([results, []], [[1], [2]])


def test_cross_validation_runs_end_to_end(tiny_synthetic, tmp_path):
    """tools/ablate_real.py --folds 2 on 6 small images: folds written, one pretraining,
    each fold fine-tuned and evaluated, the pooled report over all 6 images. A variant whose
    network the shared pretraining cannot fill (64 prototypes) pretrains its own."""
    out = tmp_path / "cv"
    proc = tool("ablate_real.py", "--data", tiny_synthetic / "synthetic", "--folds", 2,
                "--pretrain-iters", 2, "--finetune-iters", 2, "--synthetic-per-type", 1,
                "--amp", "float32", "--variants", "recipe,prototypes_64", "--output", out)
    run = out / "cv2_seed0"
    own = load_cfg(str(run / "pretrain_prototypes_64" / "config.yaml"))
    assert own.MODEL.YOLACT.NUM_PROTOTYPES == 64 and own.SOLVER.MAX_ITER == 2
    assert load_cfg(str(run / "pretrain" / "config.yaml")).MODEL.YOLACT.NUM_PROTOTYPES == 32
    for variant, start, prototypes in (("recipe", "pretrain", 32),
                                       ("prototypes_64", "pretrain_prototypes_64", 64)):
        for f in (0, 1):
            fold = load_cfg(str(run / variant / f"fold{f}" / "config.yaml"))
            assert fold.MODEL.WEIGHTS == str(run / start / "model_final.pth")
            assert fold.MODEL.YOLACT.NUM_PROTOTYPES == prototypes
    report = json.loads((out / "cv2_seed0" / "recipe" / "cv.json").read_text())
    assert report["folds"] == 2 and set(report["recall_at_thresh"]) == {"shsy5y", "astro", "cort"}
    rows = (out / "cv2_seed0" / "recipe" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    vals = [json.loads((out / "cv2_seed0" / "data" / f"fold{f}" / "real" / "annotations" /
                        "val.json").read_text())["images"] for f in (0, 1)]
    assert sorted(im["file_name"] for v in vals for im in v) == sorted(
        {im["file_name"] for v in vals for im in v}) and sum(map(len, vals)) == 6
    assert "pooled segm AP" in proc.stdout
    # A fold model evaluated at other test-time settings (one trained before maskness) is
    # evaluated again at today's, not retrained; an evaluation at today's settings is reused.
    recipe = out / "cv2_seed0" / "recipe"
    config = recipe / "fold0" / "config.yaml"
    assert "TEST_MASKNESS: true" in config.read_text()
    config.write_text(config.read_text().replace("TEST_MASKNESS: true", "TEST_MASKNESS: false"))
    trained = [(recipe / f"fold{f}" / "model_final.pth").stat().st_mtime for f in (0, 1)]
    tool("ablate_real.py", "--data", tiny_synthetic / "synthetic", "--folds", 2,
         "--pretrain-iters", 2, "--finetune-iters", 2, "--synthetic-per-type", 1,
         "--amp", "float32", "--output", out)
    assert (recipe / "fold0" / "evaluation" / "inference" / "real_val").is_dir()
    assert not (recipe / "fold1" / "evaluation").exists()
    assert trained == [(recipe / f"fold{f}" / "model_final.pth").stat().st_mtime for f in (0, 1)]
    # A fold model trained with other training settings is refused, not reported as today's.
    config = recipe / "fold1" / "config.yaml"
    assert "AGNOSTIC_DETECTION: true" in config.read_text()
    config.write_text(config.read_text().replace("AGNOSTIC_DETECTION: true",
                                                 "AGNOSTIC_DETECTION: false"))
    proc = tool("ablate_real.py", "--data", tiny_synthetic / "synthetic", "--folds", 2,
                "--pretrain-iters", 2, "--finetune-iters", 2, "--synthetic-per-type", 1,
                "--amp", "float32", "--output", out, check=False)
    assert proc.returncode != 0
    assert "fold1 was trained with other settings" in proc.stderr
    assert "MODEL.YOLACT.AGNOSTIC_DETECTION" in proc.stderr


def test_fixed_split_rows_are_evaluated_again_after_a_test_time_change(tiny_synthetic, tmp_path):
    """tools/ablate_real.py --seed (one fixed split): a row stored at other test-time settings
    (a model trained before maskness) is evaluated again, into <variant>/evaluation, not
    retrained; a row at today's settings is reused as it is."""
    out = tmp_path / "fixed"
    run = ("ablate_real.py", "--data", tiny_synthetic / "synthetic", "--seed", 0,
           "--pretrain-iters", 2, "--finetune-iters", 2, "--synthetic-per-type", 1,
           "--variants", "recipe", "--output", out)
    tool(*run)
    done = out / "seed0" / "ablation.json"
    recipe = out / "seed0" / "recipe"
    saved = json.loads(done.read_text())
    assert saved["rows"]["recipe"]["settings"]["TEST_MASKNESS"] is True
    trained = (recipe / "model_final.pth").stat().st_mtime
    tool(*run)  # at today's settings: nothing evaluated again
    assert not (recipe / "evaluation").exists()
    saved["rows"]["recipe"]["settings"]["TEST_MASKNESS"] = False
    saved["rows"]["recipe"]["AP"] = -1.0
    done.write_text(json.dumps(saved))
    config = recipe / "config.yaml"
    config.write_text(config.read_text().replace("TEST_MASKNESS: true", "TEST_MASKNESS: false"))
    tool(*run)
    row = json.loads(done.read_text())["rows"]["recipe"]
    assert (recipe / "evaluation" / "inference" / "results.json").is_file()
    assert row["settings"]["TEST_MASKNESS"] is True and row["AP"] >= 0
    assert (recipe / "model_final.pth").stat().st_mtime == trained


def test_each_class_threshold_where_its_f1_is_best(tmp_path):
    """calibration.best_thresholds: astro's cells scored 0.9, 0.8, 0.35, 0.3 and three
    misses below them (one a duplicate of a found cell) -> its best cut is just under 0.3 (every
    cell, no miss); cort's cells all at 0.95 and a miss at 0.6 -> just under 0.95."""
    from cellseg_d2.evaluation.calibration import best_thresholds

    data = ground_truth(ids=(1, 2))
    (tmp_path / "gt.json").write_text(json.dumps(data))
    gt = load_ground_truth(str(tmp_path / "gt.json"))
    astro = [r for r in perfect(data) if r["image_id"] == 1]  # image 1: 4 astro cells
    cort = [r for r in perfect(data, 0.95) if r["image_id"] == 2]
    results = [dict(r, score=s) for r, s in zip(astro, (0.9, 0.8, 0.35, 0.3))]
    results += [dict(astro[0], score=0.25),  # a duplicate of the first cell: a miss
                dict(astro[1], score=0.2, image_id=2, category_id=1)]  # where no astro is
    results += cort + [dict(cort[0], score=0.6, image_id=1, category_id=2)]
    got = best_thresholds(gt, results, ["astro", "cort"])
    assert got["astro"] == {"thresh": 0.29, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert got["cort"]["thresh"] == 0.94 and got["cort"]["f1"] == 1.0
    # fewer than all: at 0.5, astro has 2 of 4 cells, no miss
    only_high = best_thresholds(gt, [r for r in results if r["score"] > 0.5], ["astro", "cort"])
    assert only_high["astro"]["recall"] == 0.5 and only_high["astro"]["precision"] == 1.0
    assert best_thresholds(gt, cort, ["astro", "cort"])["astro"] is None


def test_held_out_thresholds_are_chosen_on_the_other_folds_images_alone(tmp_path):
    """calibration.held_out_calibration: fold 1's astro threshold is chosen on fold 0's images
    only. There (image 1: 4 astro cells, found at 0.9, 0.8, 0.35, 0.3, with 5 false ones from
    0.6 down to 0.4) F1 is best at 0.79; counting fold 1's astro cells as missed too would
    halve the recall and move it to 0.29, where fold 1's cells (all at 0.5) are all kept."""
    from cellseg_d2.evaluation.calibration import held_out_calibration

    data = ground_truth()  # image 1: astro, 2: cort, 3: astro; 4 cells each
    (tmp_path / "gt.json").write_text(json.dumps(data))
    gt = load_ground_truth(str(tmp_path / "gt.json"))
    cells = perfect(data)
    image1 = [r for r in cells if r["image_id"] == 1]
    fold0 = [dict(r, score=s) for r, s in zip(image1, (0.9, 0.8, 0.35, 0.3))]
    fold0 += [dict(image1[0], score=s, image_id=2) for s in (0.6, 0.55, 0.5, 0.45, 0.4)]
    fold0 += [r for r in cells if r["image_id"] == 2]  # cort, all found at 1.0
    fold1 = [dict(r, score=0.5) for r in cells if r["image_id"] == 3]
    got = held_out_calibration(gt, [fold0, fold1], [[1, 2], [3]], ["astro", "cort"])
    # fold 0 at fold 1's astro threshold (0.49): 2 cells and 3 false ones kept; fold 1 at 0.79:
    # none of its 4
    assert got["astro"] == {"thresholds": [0.49, 0.79], "recall": 25.0, "precision": 40.0}
    # fold 1 holds no cort cell: fold 0 keeps 0.5; fold 1 has no cort detection to judge
    assert got["cort"] == {"thresholds": [0.5, 0.95], "recall": 100.0, "precision": 100.0}


def test_every_variant_overrides_known_config_keys():
    """A variant whose key or value the config refuses would only fail after the
    pretraining, an hour into a cross-validation."""
    spec = importlib.util.spec_from_file_location("ablate_real", REPO / "tools" / "ablate_real.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    config = os.path.join(ablate.CONFIGS, "real_R18_cpu.yaml")
    variants = {**{k: v[1] for k, v in ablate.TRAIN_VARIANTS.items()},
                **{k: v[1] for k, v in ablate.TEST_VARIANTS.items()}}
    loaded = {name: load_cfg(config, opts) for name, opts in variants.items()}
    assert loaded["mask_thresh_0.3"].MODEL.YOLACT.MASK_THRESH_TEST == 0.3
    assert loaded["crop_512_b1"].INPUT.CROP.SIZE == [512, 512]
    assert loaded["recipe"].MODEL.YOLACT.MASK_THRESH_TEST == 0.4
    with pytest.raises(SetupError, match="unknown config key"):
        load_cfg(config, ["MODEL.YOLACT.NO_SUCH_KEY", "1"])
