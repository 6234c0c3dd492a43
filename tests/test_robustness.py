"""What users hit first: images with no cells, bad files among good ones, earlier runs in the
output folder, checkpoints that do not fit, diverging runs, N processes instead of 1."""
import csv
import json
import os
import stat

import cv2
import numpy as np
import pytest
import torch

from cellseg_d2.predict import output_names

from .conftest import CONFIG, REPO, TINY, small_synthetic_root, tool


def predict(weights, inputs, out, *extra, check=False, umask=None):
    return tool("predict.py", "--config-file", CONFIG, "--weights", weights, "--input", inputs,
                "--output", out, *extra, *TINY, check=check, umask=umask)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error")]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def mixed_folder(tiny_synthetic, tmp_path):
    """Good images (one as x.png and, 16-bit, as x.tif), a blank and a 10x10 image, a text file
    named .png and a PNG cut in half."""
    folder = tmp_path / "in"
    folder.mkdir()
    src = sorted((tiny_synthetic / "synthetic" / "train").iterdir())[0]
    (folder / "x.png").write_bytes(src.read_bytes())
    grey = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "x.tif"), grey.astype(np.uint16) * 200)
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 150), 128, np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), np.random.default_rng(0).integers(0, 255, (10, 10),
                                                                            dtype=np.uint8))
    (folder / "notes.png").write_text("not an image")
    raw = src.read_bytes()
    (folder / "cut.png").write_bytes(raw[:len(raw) // 2])
    return folder


def test_image_with_no_detections_gets_every_output(trained, mixed_folder, tmp_path):
    out = tmp_path / "out"
    proc = predict(trained / "model_final.pth", mixed_folder / "blank.png", out,
                   "--score-thresh", "1.0", check=True)  # nothing scores above 1
    label = cv2.imread(str(out / "labels" / "blank.tif"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint16 and label.shape == (120, 150) and not label.any()
    # diameter_px empty: the repository's config (not the run's config.yaml) records none
    assert rows(out / "counts.csv") == [{"image": "blank", "file": str(mixed_folder / "blank.png"),
                                         "cells": "0", "n_shsy5y": "0", "n_astro": "0",
                                         "n_cort": "0", "confluence": "0.0", "diameter_px": ""}]
    assert rows(out / "submission.csv") == [{"id": "blank", "predicted": ""}]
    assert rows(out / "cells.csv") == []
    assert json.loads((out / "coco_results.json").read_text()) == []
    overlay = cv2.imread(str(out / "overlays" / "blank.png"))
    assert overlay.shape == (120, 150, 3) and (overlay == 128).all()  # the bare image
    assert "0 cells" in proc.stdout


def test_unreadable_images_are_skipped_and_listed(trained, mixed_folder, tmp_path):
    out = tmp_path / "out"
    proc = predict(trained / "model_final.pth", mixed_folder, out, "--score-thresh", "0.0")
    assert proc.returncode == 3, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and "notes.png" in warnings[0] + warnings[1] and \
        "cut.png" in warnings[0] + warnings[1]
    assert "2 of 6 images skipped" in proc.stderr and "Traceback" not in proc.stderr
    assert {r["file"] for r in rows(out / "skipped.csv")} == \
        {str(mixed_folder / "notes.png"), str(mixed_folder / "cut.png")}
    done = ["blank", "tiny", "x_png", "x_tif"]  # same stem: distinct names
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == done
    assert sorted(p.stem for p in (out / "labels").iterdir()) == done
    assert [r["image"] for r in rows(out / "counts.csv")] == done
    assert {r["id"] for r in rows(out / "submission.csv")} <= set(done)
    images = json.loads((out / "images.json").read_text())
    assert [i["output_name"] for i in images] == done
    results = json.loads((out / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} <= {i["id"] for i in images}
    tiny = cv2.imread(str(out / "labels" / "tiny.tif"), cv2.IMREAD_UNCHANGED)
    assert tiny.shape == (10, 10)


def test_only_unreadable_images_is_an_error_and_writes_nothing(trained, mixed_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{mixed_folder / 'notes.png'}\n{mixed_folder / 'cut.png'}\n")
    proc = predict(trained / "model_final.pth", listing, tmp_path / "out")
    assert proc.returncode == 1 and len(error_lines(proc)) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left


def test_output_names_are_distinct():
    files = ["a/x.png", "a/x.tif", "b/x.png", "a/y.png", "b/z.TIF"]
    assert output_names(files) == ["x_png-1", "x_tif", "x_png-2", "y", "z"]


def test_earlier_run_is_refused_or_replaced_whole(trained, mixed_folder, tmp_path):
    weights, out = trained / "model_final.pth", tmp_path / "out"
    predict(weights, mixed_folder / "blank.png", out, check=True)
    proc = predict(weights, mixed_folder / "x.png", out)
    assert proc.returncode == 1 and "--overwrite" in error_lines(proc)[0]
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["blank"]  # untouched
    predict(weights, mixed_folder / "x.png", out, "--overwrite", check=True)
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["x"]  # not mixed
    assert [r["image"] for r in rows(out / "counts.csv")] == ["x"]
    (out / "my_notes.txt").write_text("keep me")
    proc = predict(weights, mixed_folder / "blank.png", out, "--overwrite")
    assert proc.returncode == 1 and "my_notes.txt" in error_lines(proc)[0]
    assert (out / "my_notes.txt").read_text() == "keep me"


def test_outputs_get_the_users_umask(trained, mixed_folder, tmp_path):
    out = tmp_path / "out"
    predict(trained / "model_final.pth", mixed_folder / "x.png", out, check=True, umask=0o002)
    for path in [out, out / "labels", out / "labels" / "x.tif", out / "counts.csv",
                 out / "coco_results.json"]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == (0o775 if path.is_dir() else 0o664), (path, oct(mode))


def test_atomic_open_follows_umask(tmp_path):
    from cellseg_d2.utils import atomic_open

    old = os.umask(0o027)
    try:
        with atomic_open(str(tmp_path / "a.txt")) as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o640


def _save_model(cfg_file, path, *opts):
    from detectron2.modeling import build_model

    from cellseg_d2.config import load_cfg

    cfg = load_cfg(cfg_file, list(opts), device="cpu")
    torch.save({"model": build_model(cfg).state_dict()}, path)


@pytest.mark.parametrize("kind, message", [
    ("text", "not a readable checkpoint"),
    ("maskrcnn", "does not fit this Yolact model for inference: .*tensor"),
    ("r50", "does not fit this Yolact model for inference: .*other shape"),
    ("8 classes", "tensor\\(s\\) of another shape, e.g. head.cls.bias"),
])
def test_checkpoint_that_does_not_fit_is_one_line(trained, mixed_folder, tmp_path, kind, message):
    path = tmp_path / "model.pth"
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "maskrcnn":
        _save_model(str(REPO / "configs" / "maskrcnn_R18_cpu.yaml"), path)
    elif kind == "r50":
        _save_model(str(REPO / "configs" / "Base-YOLACT.yaml"), path)
    else:
        _save_model(CONFIG, path, *TINY, "MODEL.YOLACT.NUM_CLASSES", "8")
    proc = predict(path, mixed_folder / "x.png", tmp_path / "out")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = error_lines(proc)
    assert len(errors) == 1 and str(path) in errors[0], proc.stderr
    assert __import__("re").search(message, errors[0]), errors[0]
    assert not (tmp_path / "out").exists()


def test_fine_tune_accepts_new_class_heads_and_backbone_only_weights():
    from fvcore.common.checkpoint import _IncompatibleKeys

    from cellseg_d2.checkpoint import fit_problems

    keys = ["backbone.bottom_up.stem.conv1.weight", "backbone.fpn_output3.weight",
            "head.cls.weight", "head.box.weight", "semantic_head.weight"]
    new_classes = _IncompatibleKeys(["head.cls.weight", "semantic_head.weight"], [],
                                    [("head.cls.weight", (54, 64, 3, 3), (24, 64, 3, 3)),
                                     ("semantic_head.weight", (8, 64, 1, 1), (3, 64, 1, 1))])
    assert fit_problems(keys, new_classes, fine_tune=True) == []
    assert "other shape" in fit_problems(keys, new_classes)[0]
    trunk_only = _IncompatibleKeys(keys[1:], ["fc.weight"], [])
    assert fit_problems(keys, trunk_only, fine_tune=True) == []
    assert "missing" in fit_problems(keys, trunk_only)[0]
    other_trunk = _IncompatibleKeys(keys[1:], [], [("backbone.bottom_up.stem.conv1.weight",
                                                    (64, 3, 7, 7), (64, 3, 3, 3))])
    assert fit_problems(keys, other_trunk, fine_tune=True) != []
    heads_missing = _IncompatibleKeys(["head.box.weight"], ["roi_heads.mask_head.w"], [])
    assert len(fit_problems(keys, heads_missing, fine_tune=True)) == 2


def test_diverging_run_is_one_line(tiny_synthetic, tmp_path):
    proc = tool("train_net.py", "--config-file", CONFIG, *TINY, "SOLVER.MAX_ITER", 5,
                "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_ITERS", 0,
                "SOLVER.CLIP_GRADIENTS.ENABLED", "False", "OUTPUT_DIR", tmp_path,
                env_root=tiny_synthetic, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "diverged at iteration" in errors[0] and "loss_cls" in errors[0]
    assert "SOLVER.BASE_LR (now 1e+30)" in errors[0]


@pytest.fixture(scope="module")
def odd_synthetic(tmp_path_factory):
    """9 images; the 5 of synthetic_val do not split evenly over 2 processes."""
    return small_synthetic_root(tmp_path_factory.mktemp("odd"), 3, seed=7, split=(4, 5, 0))


def test_two_processes_evaluate_exactly_like_one(trained, odd_synthetic, tmp_path):
    results = []
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        tool("train_net.py", "--config-file", CONFIG, "--eval-only", "--num-gpus", n, *TINY,
             "MODEL.WEIGHTS", trained / "model_final.pth", "TEST.INSTANCE_SCORE_THRESH", 0.0,
             "OUTPUT_DIR", out, env_root=odd_synthetic)
        results.append((out / "inference" / "results.json").read_text())
        assert (out / "inference" / "synthetic_val" / "per_class_segm.csv").is_file()
    assert results[0] == results[1]  # every metric, per class, to the last digit (NaN too)
    one = json.loads(results[0])
    assert one["segm"]["AP"] > 0  # the 12-iteration model does find cells
    assert {"score", "score-cort", "score-astro", "score-shsy5y"} <= set(one["kaggle"])
    assert {"AP-cort", "APs-astro", "AP75-shsy5y"} <= set(one["segm"])


def test_two_cpu_processes_train(tiny_synthetic, tmp_path):
    tool("train_net.py", "--config-file", CONFIG, "--num-gpus", 2, *TINY, "SOLVER.MAX_ITER", 4,
         "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", 4,
         "OUTPUT_DIR", tmp_path, env_root=tiny_synthetic)
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert metrics and all(np.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)
    state = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    assert state["iteration"] == 3 and not any(k.startswith("module.") for k in state["model"])
