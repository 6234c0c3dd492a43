#!/usr/bin/env python
"""Segment cells in PNG/TIF/OME-Zarr images (8 or 16 bit, any size) with a trained checkpoint.

Images larger than the training images (whole wells, mosaics) are segmented at the model's
native scale in overlapping tiles (TEST.TILE.*) and stitched: one instance per cell. Images
taken at another magnification (cells D px across instead of the training cells'
MODEL.CELL_DIAMETER): --diameter D rescales them to match, --diameter auto estimates D per
image from a first pass; counts.csv gives the diameter each image was segmented for.

Writes to --output, per image (choose with --save-*; default --save-png --save-tif):
  overlays/<name>.png   Detectron2 Visualizer drawing (outlines for images of several tiles)
  labels/<name>.tif     label image: 0 background, 1..N cells (non-overlapping), uint16, or
                        uint32 beyond 65,535 cells (BigTIFF when needed)
  rois/<name>.zip       ImageJ / Fiji ROI set: one polygon per cell, named by its label id
  outlines/<name>.png   the image with cell outlines in class colours
  zarr/<name>.zarr      OME-Zarr: the image (as segmented, uint8) as a multiscale pyramid,
                        the label image beside it as labels/cells (napari opens it)
and for the run: coco_results.json (+ images.json), submission.csv (Kaggle format), cells.csv
(one row per cell, cell_id = label id) and counts.csv (cells per class, confluence,
diameter).
Inputs sharing a stem (x.png, x.tif) get distinct names (x_png, x_tif). An unreadable image is
skipped with a warning and listed in skipped.csv, whatever the reason. The output folder must
be new, empty, or hold an earlier run of this tool (replaced with --overwrite, exactly its own
files: a file put into it since makes the tool refuse); the run is written to a hidden folder
and moved into place when complete.

Exit status: 0 every image done; 1 error, nothing written; 3 some images skipped.

    tools/predict.py --config-file configs/synthetic_R18_cpu.yaml --weights model_final.pth \
        --input 'images/*.png' --output predictions/
"""
import argparse
import sys

import torch
from detectron2.data import MetadataCatalog

import cellseg_d2  # noqa: F401
from cellseg_d2.checkpoint import check_weights
from cellseg_d2.cluster import ClusterError, ClusterSegmentation, connect, local_workers
from cellseg_d2.config import SetupError, load_cfg
from cellseg_d2.data.image_io import read_image
from cellseg_d2.predict import DEFAULT_SAVE, SAVE, InputError, list_images, predict_files
from cellseg_d2.run_folder import OutputFolderError, check_output_dir
from cellseg_d2.tiling import CellSegmenter
from cellseg_d2.utils import printable

TOOL = "tools/predict.py"


def diameter_arg(text: str):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"a cell diameter in px (> 0) or 'auto', not {text!r}")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", help="checkpoint (.pth); default: MODEL.WEIGHTS of the config")
    p.add_argument("--input", required=True, help="image file, folder, glob pattern or .txt list")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that holds an earlier run")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--diameter", type=diameter_arg,
                   help="the images' cells are this many px across (or 'auto': estimated from "
                        "a first pass); each image is rescaled so that they match the model's "
                        "MODEL.CELL_DIAMETER, masks returned at the image's resolution")
    p.add_argument("--score-thresh", type=float,
                   help="score above which a detection is a cell (default TEST.INSTANCE_SCORE_THRESH)")
    for key, what in (("png", "overlay PNGs"), ("tif", "label TIFFs"),
                      ("rois", "ImageJ ROI zips"), ("outlines", "outline PNGs"),
                      ("zarr", "OME-Zarr image pyramids with their labels")):
        p.add_argument(f"--save-{key}", action="append_const", const=key, dest="save",
                       help=f"write {what}")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="segment on a Dask cluster: local:N (N single-threaded worker processes "
                        "here) or a scheduler's address (dask-jobqueue, Dask Gateway, `dask "
                        "scheduler`); the outputs are those of the in-process run")
    p.add_argument("--threads", type=int,
                   help="torch threads for the network: in-process (default: all cores) or per "
                        "--cluster worker (default 1); the same count gives the same outputs "
                        "to the last bit")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    try:
        cfg = load_cfg(args.config_file, args.opts, args.weights, args.device)
        if args.score_thresh is not None:
            cfg.TEST.INSTANCE_SCORE_THRESH = args.score_thresh
        check_weights(cfg.MODEL.WEIGHTS)
        files = list_images(args.input)
        check_output_dir(args.output, TOOL, args.overwrite)
        if args.threads is not None and args.threads < 1:
            raise InputError("--threads takes a number >= 1")
        if args.cluster:
            local_workers(args.cluster)  # a bad local:N is an error before anything starts
        elif args.threads:
            torch.set_num_threads(args.threads)
        # the client's model is never run with --cluster: its weights stay on disk
        segmenter = CellSegmenter.from_config(cfg, diameter=args.diameter, progress=True,
                                              with_model=not args.cluster)
        name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else cfg.DATASETS.TRAIN[0]
        metadata = MetadataCatalog.get(name)
        save = args.save or DEFAULT_SAVE
        if args.cluster:
            with connect(args.cluster) as client:
                cluster = ClusterSegmentation(client, segmenter, args.threads or 1)
                counts, skipped = predict_files(segmenter, files, read_image, args.output,
                                                metadata, save=save, overwrite=args.overwrite,
                                                tool=TOOL, cluster=cluster)
        else:
            counts, skipped = predict_files(segmenter, files, read_image, args.output, metadata,
                                            save=save, overwrite=args.overwrite, tool=TOOL)
    except (SetupError, InputError, OutputFolderError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(c["cells"] for c in counts)
    folders = "".join(f"{SAVE[k][0]}/, " for k in args.save or DEFAULT_SAVE)
    print(f"{len(counts)} images, {total} cells -> {args.output}/ ({folders}"
          f"coco_results.json, submission.csv, cells.csv, counts.csv)")
    if skipped:
        print(f"{len(skipped)} of {len(files)} images skipped (listed in {args.output}/skipped.csv): "
              + ", ".join(printable(s["file"]) for s in skipped), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
