"""Cellpose as the peer a biologist would try first, trained and scored the way this project's
own model is (tools/peers/cellpose.py).

Cellpose 3.x (``pip install -e .[cellpose]``; the setup installs it into .venv) trains its
CPnet from random weights with its command line's settings (cellpose/cli.py: SGD, learning
rate 0.2, weight decay 1e-5, batch 8, 224 px random crops, rotation and per-image rescaling of
the cells to its mean diameter of 30 px, images with fewer than 5 cells left out), on the same
training images as tools/train_real.py (the same reader, split and seed), within a wall-time
budget that also covers reading the data, Cellpose's flow targets, one timing run and the
final prediction and scoring of the validation images, as train_real's budget does. The
number of epochs is what that budget holds (Cellpose's learning-rate schedule, warm-up and
final decay, follows it).

Each predicted cell is scored by its mean cell probability (the sigmoid of Cellpose's
cell-probability output averaged over the cell's pixels), so that AP can rank Cellpose's cells
as it ranks a detector's; the scores go to scores.csv beside the label TIFFs, which
tools/evaluate.py reads.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from ..data.coco_input import read_coco_export
from ..data.image_io import read_image
from ..data.sartorius import read_sartorius, write_splits
from ..evaluation.files import rle_mask
from ..outputs import write_csv, write_label_tiff
from ..predict import InputError, output_names, skip_reason
from ..utils import printable

TRAIN_TOOL = "tools/peers/cellpose.py train"
PREDICT_TOOL = "tools/peers/cellpose.py predict"
MODEL_NAME = "cellpose_model"
SUMMARY = "cellpose_train.json"
# Cellpose 3.1's command-line training defaults (cellpose/cli.py) and its training crop size.
SETTINGS = {"SGD": True, "learning_rate": 0.2, "weight_decay": 1e-5, "batch_size": 8,
            "min_train_masks": 5, "bsize": 224}
DIAM_MEAN = 30.0  # --diam_mean: the diameter every training image's cells are rescaled to
# The timing run: one epoch to warm up (the first ran 1.6x the later ones: 26.9 against 16.7
# s/epoch on 2 cores, which left 23 of 60 minutes unused), then CALIBRATION_EPOCHS timed.
CALIBRATION_EPOCHS = 2
# Seconds kept for predicting and scoring the validation images: start-up and scoring, and per
# megapixel (Cellpose's network and flow dynamics on the CPU: 3.5 s per 704x520 image on 2
# cores, measured; kept at ~3x that).
PREDICT_RESERVE_S = (45.0, 30.0)


class PeerError(RuntimeError):
    pass


def require_cellpose():
    try:
        import cellpose  # noqa: F401
        from cellpose.version import version
    except ImportError:
        raise PeerError("Cellpose is not installed: pip install -e '.[cellpose]' (or make "
                        "setup, which installs it into .venv)") from None
    major = int(version.split(".")[0])
    if major != 3:
        raise PeerError(f"this peer is written for Cellpose 3.x (CPnet trained from random "
                        f"weights); found {version}")
    # Cellpose logs every step at INFO; only its training progress (every 10th epoch's loss)
    # reaches the terminal, see show_progress.
    logging.getLogger("cellpose").setLevel(logging.WARNING)
    return version


def show_progress() -> None:
    log = logging.getLogger("cellpose.train")
    if not any(getattr(h, "cellseg_d2", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[cellpose] epoch %(message)s"))
        handler.addFilter(lambda record: record.getMessage()[:1].isdigit())  # epoch lines
        handler.cellseg_d2 = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def read_data(data: str, data_dir: str, split, seed: int) -> dict:
    """{split: COCO dict} of a Kaggle-layout folder or a COCO JSON export, read and checked as
    tools/train_real.py reads it (file names relative to ``data_dir``); nothing written."""
    if data.lower().endswith(".json"):
        return read_coco_export(data, data_dir, split=split, seed=seed)[0]
    return read_sartorius(data, data_dir, split=split, seed=seed, progress=False)


def gray(image_bgr: np.ndarray) -> np.ndarray:
    """The project's reading of an image (read_image: 16-bit scaled, alpha dropped), as the
    one channel Cellpose is given (channels [0, 0])."""
    import cv2

    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)


def label_image(anns: list, height: int, width: int) -> np.ndarray:
    """Annotations as one label image (Cellpose's training target): 1..N in annotation order;
    where annotations overlap, the pixel stays with the first."""
    label = np.zeros((height, width), np.int32)
    for k, ann in enumerate(anns, start=1):
        label[rle_mask(ann["segmentation"], height, width) & (label == 0)] = k
    return label


def training_pairs(coco: dict, data_dir: str, progress: bool = True) -> tuple[list, list]:
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images, labels = [], []
    for img in tqdm(coco["images"], desc="reading", unit="img", disable=not progress):
        images.append(gray(read_image(os.path.join(data_dir, img["file_name"]))))
        labels.append(label_image(by_image.get(img["id"], []), img["height"], img["width"]))
    return images, labels


def new_model(seed: int):
    import torch
    from cellpose import models

    torch.manual_seed(seed)
    np.random.seed(seed)
    return models.CellposeModel(gpu=False, pretrained_model=False, model_type=None,
                                diam_mean=DIAM_MEAN, nchan=2)


class _DeadlineReached(Exception):
    pass


def train_epochs(images, flows, n_epochs: int, save_path: str, seed: int,
                 deadline: float | None = None) -> tuple[str, int | None]:
    """Cellpose's own train_seg from random weights; returns (the saved model's path, None),
    or, where the clock passes ``deadline`` (time.time()) first, the network as it is then,
    saved where train_seg saves it, and the number of training batches it took."""
    from cellpose import train

    model = new_model(seed)
    batches = 0

    def before_batch(net, _inputs):  # train_seg has no callback; its network has hooks
        nonlocal batches
        if net.training:
            if deadline is not None and time.time() > deadline:
                raise _DeadlineReached  # before this batch's forward: no half step
            batches += 1

    hook = model.net.register_forward_pre_hook(before_batch)
    try:
        path = train.train_seg(model.net, train_data=images, train_labels=flows,
                               channels=[0, 0], normalize=True, n_epochs=n_epochs,
                               save_path=save_path, save_every=max(n_epochs, 1),
                               model_name=MODEL_NAME, **SETTINGS)[0]
    except _DeadlineReached:
        path = os.path.join(save_path, "models", MODEL_NAME)
        model.net.save_model(path)
        return path, batches  # the batches that took their step before the clock ran out
    finally:
        hook.remove()
    return str(path), None


def plan_epochs(budget_s: float, elapsed_s: float, s_per_epoch: float, reserve_s: float) -> int:
    """Epochs that fit in what is left of the budget after ``reserve_s``; PeerError if not one."""
    epochs = math.floor((budget_s - elapsed_s - reserve_s) / s_per_epoch)
    if epochs < 1:
        raise PeerError(f"the budget leaves no time to train: {elapsed_s:.0f} s spent, "
                        f"{reserve_s:.0f} s kept for the validation images, "
                        f"{s_per_epoch:.1f} s per epoch; raise --minutes")
    return epochs


def synthetic_pairs(output: str, per_type: int, seed: int) -> tuple[list, list]:
    """Fresh synthetic images (the project's generator, as tools/train_real.py's pretraining
    images, same seed rule) written to output/data/synthetic, as Cellpose training pairs."""
    from ..data.synthetic import generate_dataset

    folder = os.path.join(output, "data", "synthetic")
    generate_dataset(folder, images_per_type=per_type, seed=1000 + seed, progress=False)
    coco = read_sartorius(folder, folder, split=(1, 0, 0), progress=False)["train"]
    return training_pairs(coco, folder, progress=False)


def train(coco: dict, output: str, minutes: float, seed: int, epochs: int | None,
          progress: bool = True, synthetic_per_type: int = 0) -> dict:
    """Train on ``coco["train"]`` (read_data's, file names relative to output/data) into
    ``output`` (a folder the caller allowed), writing ``coco`` to output/data; returns the
    run's summary. Without ``epochs``, as many epochs as the budget holds (after a warm-up
    epoch and a timing run of CALIBRATION_EPOCHS); with it, exactly that many.
    ``synthetic_per_type`` synthetic images of each type join the training images (one
    training set: Cellpose has no pretraining stage)."""
    import torch
    from cellpose import dynamics

    start = time.time()
    budget = minutes * 60
    data_dir = os.path.join(output, "data")
    write_splits(data_dir, coco)
    images, labels = training_pairs(coco["train"], data_dir, progress)
    n_real = len(images)
    if synthetic_per_type:
        extra_images, extra_labels = synthetic_pairs(output, synthetic_per_type, seed)
        images, labels = images + extra_images, labels + extra_labels
    # Cellpose's flow targets, once: every train_seg call below reuses them.
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    batches = math.ceil(len(images) / SETTINGS["batch_size"])  # per epoch
    s_epoch = deadline = None
    if epochs is None:
        with tempfile.TemporaryDirectory(dir=output) as tmp:
            train_epochs(images, flows, 1, tmp, seed)
            t0 = time.time()
            train_epochs(images, flows, CALIBRATION_EPOCHS, tmp, seed)
            s_epoch = (time.time() - t0) / CALIBRATION_EPOCHS
        megapixels = sum(im["height"] * im["width"] for im in coco["val"]["images"]) / 1e6
        reserve = PREDICT_RESERVE_S[0] + PREDICT_RESERVE_S[1] * megapixels
        epochs = plan_epochs(budget, time.time() - start, s_epoch, reserve)
        # A machine that slows down after the timing run (another process on its cores)
        # would carry the planned epochs past the budget: training stops where it must.
        deadline = start + budget - reserve
        print(f"[cellpose] {s_epoch:.1f} s per epoch ({batches} batches of "
              f"{SETTINGS['batch_size']} crops): {epochs} epochs fit in the budget", flush=True)
    if progress:
        show_progress()
    t0 = time.time()
    model_path, stopped_after = train_epochs(images, flows, epochs, output, seed, deadline)
    train_s = time.time() - t0
    done = epochs * batches if stopped_after is None else stopped_after
    if done == 0:
        raise PeerError(f"the budget ran out before the first training batch ({train_s:.0f} s "
                        f"into training, planned at {s_epoch:.1f} s per epoch): the machine ran "
                        f"far slower than in the timing run; raise --minutes")
    if stopped_after is not None:
        print(f"[cellpose] the budget ran out after {done} of {epochs * batches} batches (the "
              f"machine ran slower than in the timing run): the network as it was then is "
              f"kept, without the rest of its learning-rate schedule", flush=True)
    summary = {"cellpose": require_cellpose(), "seed": seed, "train_images": n_real,
               "synthetic_images": len(images) - n_real,
               "epochs": epochs, "calibrated_s_per_epoch": s_epoch,
               "stopped_at_deadline": stopped_after is not None, "batches": done,
               "s_per_epoch": train_s * batches / done,
               "s_per_batch": train_s / done,
               "train_s": train_s, "threads": torch.get_num_threads(),
               "settings": dict(SETTINGS, diam_mean=DIAM_MEAN),
               "model": os.path.relpath(model_path, output)}
    summary["wall_s_before_validation"] = time.time() - start
    return summary


def load_model(folder: str):
    from cellpose import models

    path = folder if os.path.isfile(folder) else os.path.join(folder, "models", MODEL_NAME)
    if not os.path.isfile(path):
        raise PeerError(f"{folder}: no Cellpose model (expected {os.path.join('models', MODEL_NAME)}"
                        f" as tools/peers/cellpose.py train writes, or a model file)")
    try:
        return models.CellposeModel(gpu=False, pretrained_model=path)
    except Exception as e:
        raise PeerError(f"{path}: not a Cellpose model ({type(e).__name__}: {e})") from None


def cell_scores(label: np.ndarray, cellprob: np.ndarray) -> np.ndarray:
    """Mean cell probability (sigmoid of Cellpose's logit) of each cell 1..N."""
    n = int(label.max(initial=0))
    prob = 1.0 / (1.0 + np.exp(-cellprob.astype(np.float64)))
    sums = np.bincount(label.ravel(), weights=prob.ravel(), minlength=n + 1)
    counts = np.bincount(label.ravel(), minlength=n + 1)
    return sums[1:] / np.maximum(counts[1:], 1)


def segment(model, image_bgr: np.ndarray, diameter: float | None = None):
    """(label image at the image's resolution, score per cell 1..N)."""
    import fastremap

    masks, flows, _ = model.eval(gray(image_bgr), channels=[0, 0], diameter=diameter)
    masks = fastremap.renumber(np.asarray(masks), in_place=True)[0]  # ids 1..N, no gaps
    masks = masks.astype(np.uint16 if masks.max(initial=0) < 2**16 else np.uint32)
    return masks, cell_scores(masks, flows[2])


def predict_folder(model, files: list, stage: str, diameter: float | None = None,
                   progress: bool = True) -> tuple[list, list, list]:
    """Label TIFFs <name>.tif and scores.csv written into ``stage``; an image that fails, for
    any reason, is skipped and listed. Returns (score rows, timing rows, skipped)."""
    scores, timing, skipped = [], [], []
    bar = tqdm(list(zip(files, output_names(files))), desc="cellpose", unit="img",
               disable=not progress)
    for path, name in bar:
        try:
            image = read_image(path)
            t0 = time.time()
            label, s = segment(model, image, diameter)
            seconds = time.time() - t0
            write_label_tiff(os.path.join(stage, f"{name}.tif"), label)
        except Exception as e:  # one image's failure is not the run's
            reason = skip_reason(path, e)
            bar.write(f"warning: skipped {reason}", file=sys.stderr)
            skipped.append({"file": printable(path), "reason": reason})
            continue
        scores += [{"file": f"{name}.tif", "label": i, "score": round(float(v), 6)}
                   for i, v in enumerate(s, start=1)]
        timing.append({"file": printable(path), "cells": len(s), "seconds": round(seconds, 3)})
    if not timing:
        raise InputError(skipped[0]["reason"] if len(files) == 1 else
                         f"none of the {len(files)} input images could be segmented")
    write_csv(os.path.join(stage, "scores.csv"), scores, ["file", "label", "score"])
    write_csv(os.path.join(stage, "timing.csv"), timing, ["file", "cells", "seconds"])
    if skipped:
        write_csv(os.path.join(stage, "skipped.csv"), skipped, ["file", "reason"])
    return scores, timing, skipped


def val_files(coco: dict, data_dir: str) -> list:
    return [os.path.join(data_dir, img["file_name"]) for img in coco["images"]]
