"""The Cellpose peer (tools/peers/cellpose.py) and the per-cell scores that let
tools/evaluate.py rank a label image's cells."""
import csv
import json

import numpy as np
import pytest
import tifffile

from .conftest import tool
from .test_evaluate_inputs import H, W, evaluate, ground_truth, rectangles, run_tool  # noqa: F401

cellpose = pytest.importorskip("cellpose", reason="the cellpose extra is not installed")


def label_folder(tmp_path, gt, extra_score=None, scores=True):
    """One label TIFF per ground-truth image holding its cells exactly, plus one false cell
    (the last label) scored ``extra_score``; the true cells score 0.9 (scores.csv)."""
    folder = tmp_path / "labels"
    folder.mkdir(exist_ok=True)
    rows = []
    for k, img in enumerate(gt["images"]):
        label = np.zeros((H, W), np.uint16)
        boxes = rectangles(k)
        for i, (x0, y0, x1, y1) in enumerate(boxes, start=1):
            label[y0:y1, x0:x1] = i
        label[45:55, 60:75] = len(boxes) + 1  # matches no cell
        name = img["file_name"].split("/")[-1].replace(".png", ".tif")
        tifffile.imwrite(folder / name, label)
        rows += [{"file": name, "label": i, "score": 0.9} for i in range(1, len(boxes) + 1)]
        rows.append({"file": name, "label": len(boxes) + 1, "score": extra_score})
    if scores:
        with open(folder / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "label", "score"])
            writer.writeheader()
            writer.writerows(rows)
    return folder


def score_labels(run_tool, tmp_path, folder, gt):  # noqa: F811
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = tmp_path / "evaluation"
    proc = run_tool("--gt", tmp_path / "gt.json", "--results", folder, "--output", out,
                    "--overwrite")
    report = json.loads((out / "results.json").read_text()) if proc.returncode == 0 else None
    return proc, report


def test_scores_csv_ranks_the_cells_of_label_images(run_tool, tmp_path):  # noqa: F811
    gt = ground_truth()
    low = score_labels(run_tool, tmp_path, label_folder(tmp_path, gt, 0.1), gt)[1]
    high = score_labels(run_tool, tmp_path, label_folder(tmp_path, gt, 0.95), gt)[1]
    unscored = score_labels(run_tool, tmp_path, label_folder(tmp_path, gt, 0.95, scores=False),
                            gt)[1]
    # The false cell ranked last costs nothing; ranked first it costs AP; with no scores every
    # cell ties at 1 (the earlier behaviour) and the false cell costs AP too.
    assert low["segm"]["AP"] == pytest.approx(100.0)
    assert high["segm"]["AP"] < 95 and unscored["segm"]["AP"] < 95
    # The Kaggle metric keeps cells above --score-thresh 0.5: the 0.1 cell is left out.
    assert low["kaggle"]["score"] > high["kaggle"]["score"]


@pytest.mark.parametrize("row, message", [
    ({"file": "a.tif", "label": "x", "score": 0.5}, "must be an integer"),
    ({"file": "a.tif", "label": 99, "score": "nan"}, "not finite"),
    ({"file": "a.tif", "label": 1, "score": 0.3}, "listed twice"),
])
def test_bad_scores_csv_is_one_line(run_tool, tmp_path, row, message):  # noqa: F811
    gt = ground_truth()
    folder = label_folder(tmp_path, gt, 0.2)
    with open(folder / "scores.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=["file", "label", "score"]).writerow(row)
    proc, _ = score_labels(run_tool, tmp_path, folder, gt)
    assert proc.returncode == 1 and message in proc.stderr and "scores.csv row" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_cell_without_a_score_is_named(run_tool, tmp_path):  # noqa: F811
    gt = ground_truth()
    folder = label_folder(tmp_path, gt, 0.2)
    lines = (folder / "scores.csv").read_text().splitlines()
    (folder / "scores.csv").write_text("\n".join(lines[:-1]) + "\n")  # c.tif's false cell
    proc, _ = score_labels(run_tool, tmp_path, folder, gt)
    assert proc.returncode == 1 and "no score for c.tif label 5" in proc.stderr


def test_cell_scores_are_mean_cell_probabilities():
    from cellseg_d2.peers.cellpose_peer import cell_scores

    label = np.array([[1, 1, 0], [0, 3, 3]], np.uint16)  # label 2 absent: renumbered away later
    logits = np.array([[0.0, 2.0, 9.0], [9.0, -1.0, -3.0]])
    sig = 1 / (1 + np.exp(-logits))
    expected = [(sig[0, 0] + sig[0, 1]) / 2, 0.0, (sig[1, 1] + sig[1, 2]) / 2]
    assert cell_scores(label, logits) == pytest.approx(expected)


def test_plan_epochs_refuses_a_budget_without_room():
    from cellseg_d2.peers.cellpose_peer import PeerError, plan_epochs

    assert plan_epochs(600, 100, 10, 95) == 40
    with pytest.raises(PeerError, match="raise --minutes"):
        plan_epochs(120, 100, 10, 95)


def test_label_image_keeps_overlaps_with_the_first_cell():
    from cellseg_d2.peers.cellpose_peer import label_image

    from .test_evaluate_inputs import rle
    anns = [{"segmentation": rle(0, 0, 10, 10)}, {"segmentation": rle(5, 5, 20, 20)}]
    label = label_image(anns, H, W)
    assert label[7, 7] == 1 and label[15, 15] == 2 and label[30, 30] == 0
    assert np.count_nonzero(label == 1) == 100


def test_cellpose_trains_within_budget_predicts_and_is_scored(tiny_synthetic, tmp_path):
    """The peer's two commands as a user runs them: training from random weights within
    --minutes (the timing run, the epochs, the validation images' prediction and scoring all
    inside it), then predict on a folder holding a corrupt image."""
    minutes = 2
    out = tmp_path / "cp"
    proc = tool("peers/cellpose.py", "train", "--data", tiny_synthetic / "synthetic",
                "--split", "4,2,0", "--minutes", minutes, "--output", out, "--quiet")
    summary = json.loads((out / "cellpose_train.json").read_text())
    assert summary["epochs"] > 1 and summary["wall_s"] <= minutes * 60 * 1.03, summary
    assert summary["settings"]["SGD"] and summary["settings"]["learning_rate"] == 0.2
    assert (out / "models" / "cellpose_model").is_file()
    val = json.loads((out / "data" / "annotations" / "val.json").read_text())
    assert len(list((out / "val_labels").glob("*.tif"))) == len(val["images"]) == 2
    assert set(json.loads((out / "evaluation" / "results.json").read_text())) >= {"kaggle"}
    assert "epochs" in proc.stdout

    images = tmp_path / "images"
    images.mkdir()
    for img in val["images"]:
        (images / img["file_name"].split("/")[-1]).write_bytes(
            (out / "data" / img["file_name"]).read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    labels = tmp_path / "labels"
    proc = tool("peers/cellpose.py", "predict", "--model", out, "--input", images,
                "--output", labels, "--quiet", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "broken.png" in (labels / "skipped.csv").read_text()
    with open(labels / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    for img in val["images"]:
        name = img["file_name"].split("/")[-1].replace(".png", ".tif")
        label = tifffile.imread(labels / name)
        assert label.shape == (img["height"], img["width"])
        ids = sorted(int(r["label"]) for r in rows if r["file"] == name)
        assert ids == list(range(1, int(label.max()) + 1))  # every cell scored, ids 1..N
        assert all(0 <= float(r["score"]) <= 1 for r in rows)
    again = tool("peers/cellpose.py", "predict", "--model", out, "--input", images,
                 "--output", labels, "--quiet", check=False)
    assert again.returncode == 1 and "--overwrite" in again.stderr
    refused = tool("peers/cellpose.py", "train", "--data", tiny_synthetic / "synthetic",
                   "--output", labels, "--epochs", 1, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr


def test_synthetic_images_become_cellpose_training_pairs(tmp_path):
    from cellseg_d2.peers.cellpose_peer import synthetic_pairs

    images, labels = synthetic_pairs(str(tmp_path), 1, seed=0)
    assert len(images) == len(labels) == 3  # one per cell type
    for image, label in zip(images, labels):
        assert image.shape == label.shape == (520, 704) and image.dtype == np.uint8
        assert label.max() >= 5 and set(np.unique(label)) == set(range(label.max() + 1))


def test_training_stops_at_the_deadline_and_keeps_the_network(tmp_path):
    """A machine slower than in the timing run: the planned epochs would overrun the budget,
    so training stops at the deadline and saves the network where train_seg saves it."""
    import time

    import torch
    from cellpose import dynamics

    from cellseg_d2.peers.cellpose_peer import (
        MODEL_NAME,
        load_model,
        new_model,
        synthetic_pairs,
        train_epochs,
    )

    images, labels = synthetic_pairs(str(tmp_path), 1, seed=0)
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    t0 = time.time()
    path, batches = train_epochs(images, flows, 30, str(tmp_path), 0, deadline=t0 + 10)
    took = time.time() - t0
    assert batches is not None and 1 <= batches < 30, batches  # one batch per epoch here
    assert took < 10 + 30, took  # at most the batch under way, nothing after it
    assert path == str(tmp_path / "models" / MODEL_NAME)
    model = load_model(path)
    trained = dict(model.net.named_parameters())
    fresh = dict(new_model(0).net.named_parameters())
    assert any(not torch.equal(trained[k], fresh[k]) for k in trained)  # the steps it took

    (tmp_path / "full").mkdir()
    path, batches = train_epochs(images, flows, 1, str(tmp_path / "full"), 0)
    assert batches is None and (tmp_path / "full" / "models" / MODEL_NAME).is_file()
