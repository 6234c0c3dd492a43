#!/usr/bin/env python
"""Write a synthetic Sartorius-like dataset in the Kaggle layout (train.csv + train/*.png),
optionally converting it to COCO JSON right away (--convert)."""
import argparse
import sys

from cellseg_d2.data.sartorius import class_statistics, convert_sartorius, format_statistics
from cellseg_d2.data.synthetic import STYLES, generate_dataset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out-dir", default="datasets/synthetic")
    p.add_argument("--images-per-type", type=int, default=4)
    p.add_argument("--cell-types", default=",".join(STYLES), help="comma-separated subset")
    p.add_argument("--height", type=int, default=520)
    p.add_argument("--width", type=int, default=704)
    p.add_argument("--density", type=float, default=1.0, help="multiplies the cells per image")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the cell diameter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--convert", action="store_true", help="also write annotations/*.json")
    p.add_argument("--split", default="0.75,0.25,0",
                   help="train,val,test proportions or counts for --convert")
    args = p.parse_args(argv)
    types = [t for t in args.cell_types.split(",") if t]
    unknown = [t for t in types if t not in STYLES]
    if unknown:
        print(f"error: unknown cell type(s) {unknown}; choose from {list(STYLES)}", file=sys.stderr)
        return 1
    ids = generate_dataset(args.out_dir, args.images_per_type, types, args.height, args.width,
                           args.density, args.scale, args.seed)
    print(f"wrote {len(ids)} images to {args.out_dir}/train and {args.out_dir}/train.csv")
    if args.convert:
        result = convert_sartorius(args.out_dir, args.out_dir,
                                   split=[float(v) for v in args.split.split(",")], seed=args.seed)
        for name, coco in result.items():
            print(format_statistics(class_statistics(coco), f"\n{name}: {len(coco['images'])} images"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
