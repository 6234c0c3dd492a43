#!/usr/bin/env python
"""Convert the Sartorius Kaggle layout (train.csv + train/*.png) into COCO instance JSON.

Writes OUT_DIR/annotations/{train,val,test}.json (split stratified by cell type, seeded) and
prints a per-class table. Nothing is written unless every row and image checks out.
"""
import argparse
import sys

from cellseg_d2.data.rle import RLEError
from cellseg_d2.data.sartorius import (
    DEFAULT_SPLIT,
    SPLITS,
    ConversionError,
    class_statistics,
    convert_sartorius,
    format_statistics,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with train.csv and train/")
    p.add_argument("--out-dir", required=True,
                   help="dataset folder to write annotations/ into (file names are relative to it)")
    p.add_argument("--split", default=",".join(map(str, DEFAULT_SPLIT)),
                   help="train,val,test: image counts (if they sum to the image count) or "
                        "proportions (default %(default)s, the seed's split)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--fill-holes", action="store_true",
                   help="fill enclosed holes in masks (hollow astro annotations)")
    p.add_argument("--polygons", action="store_true",
                   help="store segmentations as polygons instead of COCO RLE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        split = [float(v) for v in args.split.split(",")]
        result = convert_sartorius(args.data_dir, args.out_dir, split=split, seed=args.seed,
                                   fill=args.fill_holes, polygons=args.polygons,
                                   progress=not args.quiet)
    except (ConversionError, RLEError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name in SPLITS:
        print(format_statistics(class_statistics(result[name]),
                                f"\n{name}: {len(result[name]['images'])} images -> "
                                f"{args.out_dir}/annotations/{name}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
