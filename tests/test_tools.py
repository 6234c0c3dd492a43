"""End-to-end: the user-facing tools on a tiny synthetic dataset (a real train + eval)."""
import csv
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import yaml

from .conftest import CONFIG, REPO, TINY, tool
from .test_label_images import write_pair


def test_train_and_evaluate_writes_metrics_and_tables(trained):
    rows = [json.loads(line) for line in open(trained / "metrics.json")]
    assert any("total_loss" in r for r in rows)
    evals = [r for r in rows if "segm/AP" in r]
    assert evals and "segm/AP50-cort" in evals[-1] and "kaggle/score" in evals[-1]
    assert (trained / "model_final.pth").is_file()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(trained))
    table_dir = trained / "inference" / "synthetic_val"
    table = json.load(open(table_dir / "per_class_segm.json"))
    assert list(table) == ["shsy5y", "astro", "cort"]
    assert set(table["cort"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    with open(table_dir / "per_class_bbox.csv") as f:
        assert [r["class"] for r in csv.DictReader(f)] == ["shsy5y", "astro", "cort"]


def test_plots(trained, tmp_path):
    tool("plot_metrics.py", trained, "--out", tmp_path)
    for name in ("loss.png", "map.png"):
        img = cv2.imread(str(tmp_path / name))
        assert img is not None and img.shape[0] > 300 and img.std() > 5


def test_predict_outputs(trained, tiny_synthetic, tmp_path):
    images = tiny_synthetic / "synthetic" / "train"
    # a 16-bit TIFF of another size goes through the same path
    img = cv2.imread(str(sorted(images.iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    tif = tmp_path / "in" / "scan16.tif"
    tif.parent.mkdir()
    cv2.imwrite(str(tif), cv2.resize(img, (200, 150)).astype(np.uint16) * 200)
    for p in sorted(images.iterdir())[:2]:
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    tool("predict.py", "--config-file", CONFIG, "--weights", trained / "model_final.pth",
         "--input", tmp_path / "in", "--output", out, "--score-thresh", "0.0", *TINY)
    names = sorted(p.stem for p in (tmp_path / "in").iterdir())
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == names
    results = json.load(open(out / "coco_results.json"))
    images_meta = {i["id"]: i for i in json.load(open(out / "images.json"))}
    cells = list(csv.DictReader(open(out / "cells.csv")))
    counts = {r["image"]: r for r in csv.DictReader(open(out / "counts.csv"))}
    for image_id, meta in images_meta.items():
        stem = os.path.splitext(os.path.basename(meta["file_name"]))[0]
        label = cv2.imread(str(out / "labels" / f"{stem}.tif"), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint16 and label.shape == (meta["height"], meta["width"])
        dets = [r for r in results if r["image_id"] == image_id]
        assert label.max() == len(dets) == int(counts[stem]["cells"])
        for k, det in enumerate(dets, start=1):  # label k is the k-th result of the image
            assert np.array_equal(label == k, mask_util.decode(det["segmentation"]).astype(bool))
        assert float(counts[stem]["confluence"]) == pytest.approx((label > 0).mean(), abs=1e-4)
        assert sum(r["image"] == stem for r in cells) == len(dets)
    assert label.shape == (150, 200)  # the TIFF, last in sorted order
    sub = list(csv.DictReader(open(out / "submission.csv")))
    assert {r["id"] for r in sub} == set(names)


def test_visualize_samples(trained, tiny_synthetic, tmp_path):
    tool("visualize_samples.py", "--config-file", CONFIG, "--weights", trained / "model_final.pth",
         "--dataset", "synthetic_val", "--num", 1, "--output", tmp_path, *TINY,
         env_root=tiny_synthetic)
    panels = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(panels) == 2 and panels[0].startswith("best_1") and panels[1].startswith("worst_1")
    img = cv2.imread(str(tmp_path / panels[0]))
    assert img.shape[1] > 2 * 224


@pytest.mark.parametrize("args, message", [
    (["--weights", "missing.pth", "--input", "{images}"], "missing.pth: checkpoint not found"),
    (["--weights", "{weights}", "--input", "{empty}"], "folder has no images"),
    (["--weights", "{weights}", "--input", "{bad}"], "bad.png: not a readable image"),
    (["--weights", "{weights}", "--input", "{images}", "MODEL.NO_SUCH_KEY", "1"],
     "unknown config key"),
])
def test_bad_inputs_give_one_line(trained, tiny_synthetic, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    fill = {"images": tiny_synthetic / "synthetic" / "train", "empty": tmp_path / "empty",
            "bad": tmp_path / "bad.png", "weights": trained / "model_final.pth"}
    args = [a.format(**{k: str(v) for k, v in fill.items()}) for a in args]
    proc = tool("predict.py", "--config-file", CONFIG, "--output", tmp_path / "o", *args, *TINY,
                check=False)
    assert proc.returncode == 1
    # one error line (a progress bar may precede it), no traceback
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


MALLOC_PROBE = """
import resource, sys
import numpy as np
from cellseg_d2.utils import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(20 << 17) for _ in range(8)]  # 8 x 20 MB, under the 32 MB mmap ceiling
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_keep_freed_memory_stops_page_faults_on_reuse():
    """After the first round, tuned malloc reuses the freed blocks instead of faulting in
    fresh pages (what a CPU training step does with its activations every iteration)."""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        return int(out.split()[-1])
    default, tuned = faults("default"), faults("tuned")
    assert tuned * 10 < default, (tuned, default)


@pytest.mark.slow
def test_benchmark_train_step_reports_every_setting(tmp_path):
    out = tmp_path / "train.json"
    subprocess.run([sys.executable, "tools/benchmark.py", "--train-step", "--warmup", "0",
                    "--repeats", "1", "--json", str(out)], cwd=REPO, check=True,
                   capture_output=True)
    rows = json.loads(out.read_text())["train_step"]
    assert {(r["malloc"], r["workers"], r["precision"]) for r in rows} == {
        (m, w, "float32") for m in ("default", "kept") for w in (0, 1)} | {("kept", 0, "bfloat16")}
    assert all(r["median_s"] > r["median_data_s"] >= 0 for r in rows)


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    from cellseg_d2.utils import keep_freed_memory

    monkeypatch.setenv("CELLSEG_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_completes_whatever_the_seed(tmp_path, seed):
    """The README's main command end to end at a tiny scale: a 2-iteration model finds few or
    no cells, which every step (evaluation, samples, predict) must take in its stride."""
    out = tmp_path / "demo"
    proc = tool("demo.py", "--images-per-type", 1, "--iters", 2, "--seed", seed,
                "--output", out, env_root=tmp_path / "data")
    assert "per-class mask AP (%)" in proc.stdout
    counts = list(csv.DictReader(open(out / "predictions" / "counts.csv")))
    assert len(counts) == len(list((out / "predictions" / "labels").iterdir())) >= 1
    assert len(list((out / "samples").glob("*.png"))) >= 2


def test_train_real_within_budget(tiny_synthetic, tmp_path):
    """make train-real's tool end to end at a tiny scale: a Kaggle-layout folder in, Detectron2's
    usual output folder and the per-class table out, every stage sized by the time budget and
    the whole run within it (+3%); a folder of label images (--extra) joins the pretraining.
    3.5 minutes: the 4 stages' start-ups and 12 calibrated iterations took 25 s here (AVX512-BF16
    EPYC) and ~2 min on the slowest machine seen (a 2-core CPU at 1.5 s/it, 20 s start-up)."""
    from cellseg_d2.engine import native_bfloat16

    out = tmp_path / "real"
    extra = tmp_path / "labels"
    write_pair(extra / "set1" / "raw.tif", extra / "set1" / "instances_ids.png", (160, 224))
    minutes = 3.5
    proc = tool("train_real.py", "--data", tiny_synthetic / "synthetic", "--output", out,
                "--minutes", minutes, "--eval-reserve", 20, "--synthetic-per-type", 1,
                "--split", "4,2,0", "--extra", extra, "--extra-scale", 1, *TINY)
    for name in ("config.yaml", "model_final.pth", "metrics.json", "train_real.json",
                 "pretrain/model_final.pth", "inference/real_val/per_class_segm.csv"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "train_real.json").read_text())
    # Stages sized by the budget, which the run fills and keeps.
    assert summary["pretrain_iters"] >= 1 and summary["finetune_iters"] >= 1
    assert 0.75 * minutes * 60 <= summary["wall_s"] <= minutes * 60 * 1.03, summary
    assert set(summary["segm_per_class"]) == {"shsy5y", "astro", "cort"}
    assert "cort" in proc.stdout and "s/it" in proc.stdout
    amp = False
    if native_bfloat16():
        # --precision auto timed the real images' iteration both ways and trained in the faster.
        timed = {}
        for a in (False, True):
            with open(out / f"calibration_real_amp_{a}" / "metrics.json") as f:
                timed[a] = np.median([json.loads(line)["time"] for line in f if '"time"' in line])
        amp = bool(timed[True] < 0.95 * timed[False])
        assert summary["s_per_it"]["real"] == round(timed[amp], 3)
    else:
        assert not list(out.glob("calibration_real_amp_*"))
    assert summary["precision"] == ("bfloat16 autocast" if amp else "float32")
    assert yaml.safe_load((out / "config.yaml").read_text())["SOLVER"]["AMP"]["ENABLED"] == amp
    assert len(json.loads((out / "data" / "real" / "annotations" / "val.json").read_text())
               ["images"]) == 2
    assert len(json.loads((out / "data" / "extra" / "annotations" / "train.json").read_text())
               ["annotations"]) == 2
    pretrain_cfg = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    assert pretrain_cfg["DATASETS"]["TRAIN"] == ["synthetic_train", "extra_train"]
    assert pretrain_cfg["SOLVER"]["MAX_SECONDS"] > 0  # every stage has its time limit
    # Each class's operating point, chosen on the validation images, is the model's own.
    points = summary["operating_points"]
    written = yaml.safe_load((out / "config.yaml").read_text())["MODEL"]["YOLACT"][
        "TEST_SCORE_THRESH_BY_CLASS"]
    assert written == [points[c]["thresh"] for c in ("shsy5y", "astro", "cort")]
    assert all(0 < t < 1 for t in written)
    assert "thresh" in proc.stdout


def _train_real_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_real", REPO / "tools" / "train_real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_real_without_native_bfloat16_never_tries_it(tiny_synthetic, tmp_path, monkeypatch,
                                                          capsys):
    """--precision auto on a CPU without AVX512-BF16 / AMX (an AVX2-only EPYC, most laptops):
    float32 at once, no bfloat16 iteration anywhere (emulated, it would take the budget). The
    3-second budget cannot hold the stages after the calibrations on any machine: refused,
    naming a budget that would."""
    from cellseg_d2 import recipe

    train_real = _train_real_module()
    monkeypatch.setattr(recipe, "native_bfloat16", lambda: False)
    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    out = tmp_path / "real"
    assert train_real.main(["--data", str(tiny_synthetic / "synthetic"), "--output", str(out),
                            "--minutes", "0.05", "--synthetic-per-type", "1", "--split", "4,2,0",
                            *TINY]) == 1
    captured = capsys.readouterr()
    assert "no native bfloat16" in captured.out and "training in float32" in captured.out
    assert re.fullmatch(r"error: the budget leaves too little time for one iteration of each "
                        r"stage on this machine: pass --minutes [0-9.]+ or more\n", captured.err)
    assert not list(out.glob("calibration_real_amp_*"))
    configs = sorted(out.glob("**/config.yaml"))
    assert [c.parent.name for c in configs] == ["calibration_real", "calibration_synthetic"]
    for c in configs:
        assert yaml.safe_load(c.read_text())["SOLVER"]["AMP"]["ENABLED"] is False, c
    assert not (out / "model_final.pth").exists()


def test_time_limit_ends_training_with_its_checkpoint_and_evaluation(tiny_synthetic, tmp_path):
    """SOLVER.MAX_SECONDS: 100,000 iterations planned, stopped after ~4 s of training; the
    last checkpoint and the final evaluation still come."""
    import time

    start = time.time()
    tool("train_net.py", "--config-file", CONFIG, *TINY, "SOLVER.MAX_ITER", 100000,
         "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", 100000, "TEST.EVAL_PERIOD", 100000,
         "SOLVER.MAX_SECONDS", 4, "OUTPUT_DIR", tmp_path, env_root=tiny_synthetic)
    assert time.time() - start < 90
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    stop = next(r["time_limit_iter"] for r in rows if "time_limit_iter" in r)
    assert 1 <= stop < 1000
    assert "segm/AP" in rows[-1] and (tmp_path / "model_final.pth").is_file()


def test_calibration_is_bounded_in_time(tiny_synthetic, tmp_path):
    """A calibration that would run longer than its limit is stopped there and counted as the
    limit spread over its iterations (a slow CPU costs the limit, not the budget)."""
    import time

    from cellseg_d2 import recipe

    start = time.time()
    s_it = recipe.calibrate(str(REPO / "configs" / "real_R18_cpu.yaml"),
                                "('synthetic_train',)", str(tmp_path / "cal"), TINY,
                                str(tiny_synthetic), timeout=2)
    assert time.time() - start < 10 and s_it == pytest.approx(2 / recipe.CALIBRATION_ITERS)


def test_native_bfloat16_reads_the_cpu_flags(tmp_path):
    from cellseg_d2.engine import native_bfloat16

    epyc = tmp_path / "epyc"
    epyc.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    xeon = tmp_path / "xeon"
    xeon.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert native_bfloat16(str(xeon)) and not native_bfloat16(str(epyc))
    assert not native_bfloat16(str(tmp_path / "missing"))


def test_train_real_refuses_extra_data_without_pretraining(tmp_path):
    """--extra joins the pretraining: with --pretrain-share 0 it would be converted and then
    ignored, so the tool says so before doing anything."""
    proc = tool("train_real.py", "--output", tmp_path / "real", "--extra", tmp_path,
                "--pretrain-share", 0, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: --extra joins the synthetic pretraining, which --pretrain-share 0 turns off"]
    assert not (tmp_path / "real").exists()


def test_synthetic_only_starting_model(tiny_synthetic, tmp_path):
    """--synthetic-only (make synthetic-model): a model folder from synthetic images alone, for
    a user with no annotations; evaluated on every --data image where --data is there."""
    out = tmp_path / "start"
    # 1.5 minutes: a calibration and a stage start-up took 10 s here and ~55 s on the slowest
    # machine seen
    tool("train_real.py", "--synthetic-only", "--data", tmp_path / "absent", "--output", out,
         "--minutes", 1.5, "--synthetic-per-type", 1, *TINY)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (out / "model_final.pth").is_file() and cfg["MODEL"]["CELL_DIAMETER"] > 0
    assert cfg["DATASETS"]["TRAIN"] == ["synthetic_train"] and not (out / "inference").exists()
    assert json.loads((out / "train_real.json").read_text())["finetune_iters"] == 0
    evaluated = tmp_path / "start_evaluated"
    proc = tool("train_real.py", "--synthetic-only", "--data", tiny_synthetic / "synthetic",
                "--output", evaluated, "--minutes", 1.5, "--synthetic-per-type", 1, *TINY)
    val = json.loads((evaluated / "data" / "real" / "annotations" / "val.json").read_text())
    assert len(val["images"]) == 6  # every image of --data
    assert (evaluated / "evaluation" / "inference" / "real_val" / "per_class_segm.csv").is_file()
    assert "synthetic images only" in proc.stdout
    summary = json.loads((evaluated / "train_real.json").read_text())
    assert set(summary["segm_per_class"]) == {"shsy5y", "astro", "cort"}
    # the training within the budget (+3%), the evaluation after it and not counted
    assert 0.75 * 1.5 * 60 <= summary["wall_s"] <= 1.5 * 60 * 1.03


def test_train_real_without_the_default_data_says_what_to_pass(tmp_path, monkeypatch, capsys):
    train_real = _train_real_module()
    monkeypatch.setattr(train_real, "DEFAULT_DATA", str(tmp_path / "sartorius_recon"))
    assert train_real.main(["--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data FOLDER" in err and "--synthetic-only" in err
    assert not (tmp_path / "out").exists()
