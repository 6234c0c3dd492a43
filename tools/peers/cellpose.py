#!/usr/bin/env python
"""Cellpose 3.x trained and scored beside this project's model (the peer comparison).

    tools/peers/cellpose.py train --data ../shared/data/sartorius_recon --minutes 60 \
        --output output/cellpose
    tools/peers/cellpose.py predict --model output/cellpose --input IMAGES --output LABELS/
    tools/evaluate.py --gt output/cellpose/data/annotations/val.json --results LABELS/

train reads --data as tools/train_real.py does (the Kaggle layout or a COCO JSON; the same
split and seed, so the same training and validation images), trains Cellpose's network from
random weights with Cellpose's own command-line settings for as many epochs as --minutes holds
(after a 3-epoch timing run; where the machine slows down after it, training stops at the
budget's deadline and keeps the network as it is then), then predicts the validation images
into OUTPUT/val_labels/ and scores them into OUTPUT/evaluation/ with tools/evaluate.py, all
within --minutes. OUTPUT holds models/cellpose_model (a Cellpose model file: cellpose's GUI
and CLI open it too), data/annotations/{train,val,test}.json and cellpose_train.json (epochs,
batches, s/epoch, wall time).

predict writes one label TIFF per image (<name>.tif: 0 background, cells 1..N), scores.csv
(file, label, score: each cell's mean cell probability, which tools/evaluate.py uses to rank
cells), timing.csv (seconds per image, model only) and skipped.csv for images that failed.

Output folders must be new, empty or hold this tool's earlier run (--overwrite replaces exactly
that run). Needs the cellpose extra: pip install -e '.[cellpose]' (make setup installs it).
"""
import argparse
import os
import subprocess
import sys
import time

# This file is named like the package it drives: keep its own folder off the import path.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

from cellseg_d2.data.sartorius import ConversionError  # noqa: E402
from cellseg_d2.peers import cellpose_peer as peer  # noqa: E402
from cellseg_d2.predict import InputError, list_images  # noqa: E402
from cellseg_d2.run_folder import (  # noqa: E402
    OutputFolderError,
    check_output_dir,
    run_in_place,
    staged_run,
)
from cellseg_d2.utils import write_json  # noqa: E402

EVALUATE = os.path.join(HERE, "..", "evaluate.py")
DEFAULT_DATA = os.path.join(HERE, "..", "..", "..", "shared", "data", "sartorius_recon")


def split_arg(text: str) -> tuple:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("three numbers: train,val,test")
    return tuple(float(p) if "." in p else int(p) for p in parts)


def run_train(args) -> int:
    start = time.time()
    check_output_dir(args.output, peer.TRAIN_TOOL, args.overwrite)
    # Read and check the data before anything is written.
    coco = peer.read_data(args.data, os.path.join(args.output, "data"), args.split, args.seed)
    if not coco["train"]["images"]:
        raise peer.PeerError(f"{args.data}: the split {args.split} leaves no training images")
    with run_in_place(args.output, peer.TRAIN_TOOL) as out:
        summary = peer.train(coco, out, args.minutes, args.seed, args.epochs,
                             progress=not args.quiet,
                             synthetic_per_type=args.synthetic_per_type)
        summary.update(data=os.path.abspath(args.data), split=list(args.split))
        model = peer.load_model(out)
        files = peer.val_files(coco["val"], os.path.join(out, "data"))
        if files:
            labels = os.path.join(out, "val_labels")
            os.makedirs(labels)
            _, timing, _ = peer.predict_folder(model, files, labels, progress=not args.quiet)
            summary["val_s_per_image"] = sorted(t["seconds"] for t in timing)[len(timing) // 2]
            proc = subprocess.run([sys.executable, EVALUATE, "--gt",
                                   os.path.join(out, "data", "annotations", "val.json"),
                                   "--results", labels, "--output",
                                   os.path.join(out, "evaluation")])
            if proc.returncode != 0:
                raise peer.PeerError("scoring the validation images failed (above)")
        summary["wall_s"] = time.time() - start
        summary["minutes"] = args.minutes
        write_json(os.path.join(out, peer.SUMMARY), summary)
    ran = (f"{summary['batches']} batches ({summary['epochs']} epochs planned; stopped at the "
           f"budget)" if summary["stopped_at_deadline"] else f"{summary['epochs']} epochs")
    print(f"[cellpose] {ran} in {summary['train_s'] / 60:.1f} min "
          f"({summary['s_per_epoch']:.1f} s/epoch); wall {summary['wall_s'] / 60:.1f} min "
          f"-> {args.output}/")
    return 0


def run_predict(args) -> int:
    check_output_dir(args.output, peer.PREDICT_TOOL, args.overwrite)
    files = list_images(args.input)
    model = peer.load_model(args.model)
    with staged_run(args.output, peer.PREDICT_TOOL) as stage:
        _, timing, skipped = peer.predict_folder(model, files, stage, args.diameter,
                                                 progress=not args.quiet)
    cells = sum(t["cells"] for t in timing)
    print(f"[cellpose] {len(timing)} images, {cells} cells -> {args.output}/")
    return 3 if skipped else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train Cellpose within a wall-time budget")
    t.add_argument("--data", default=DEFAULT_DATA,
                   help="Kaggle-layout folder or COCO JSON (default: ../shared/data/sartorius_recon)")
    t.add_argument("--minutes", type=float, default=60.0, help="wall-time budget, everything included")
    t.add_argument("--split", type=split_arg, default=(26, 8, 0),
                   help="train,val,test as tools/train_real.py (default 26,8,0)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, help="train exactly this many epochs (no timing run)")
    t.add_argument("--synthetic-per-type", type=int, default=0,
                   help="add this many of the project's synthetic images per cell type to the "
                        "training images (default 0)")
    t.add_argument("--output", default="output/cellpose")
    t.add_argument("--overwrite", action="store_true", help="replace this tool's earlier run")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    q = sub.add_parser("predict", help="label TIFFs + scores.csv for images")
    q.add_argument("--model", required=True, help="train's output folder or a Cellpose model file")
    q.add_argument("--input", required=True, help="image file, folder, glob pattern or .txt list")
    q.add_argument("--output", required=True, help="output folder (label TIFFs)")
    q.add_argument("--diameter", type=float,
                   help="cell diameter in px (default: the training cells' mean, as Cellpose does)")
    q.add_argument("--overwrite", action="store_true", help="replace this tool's earlier run")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        peer.require_cellpose()
        if args.command == "train":
            if args.minutes <= 0:
                p.error("--minutes must be positive")
            return run_train(args)
        return run_predict(args)
    except (peer.PeerError, ConversionError, InputError, OutputFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
