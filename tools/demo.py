#!/usr/bin/env python
"""The main job on the embedded default: synthetic Sartorius-like data, end to end.

1. generate synthetic images in the Kaggle layout (datasets/synthetic/train*, train.csv),
2. convert them with the real converter (datasets/synthetic/annotations/*.json),
3. load them through Detectron2's DatasetCatalog (synthetic_{train,val}) and print statistics.
"""
import argparse
import os
import sys

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog

import cellseg_d2  # noqa: F401  (registers datasets)
from cellseg_d2.data.datasets import datasets_root
from cellseg_d2.data.sartorius import class_statistics, convert_sartorius, format_statistics
from cellseg_d2.data.synthetic import generate_dataset


def segmentation_area(seg, record) -> float:
    if isinstance(seg, list):
        seg = mask_util.merge(mask_util.frPyObjects(seg, record["height"], record["width"]))
    return float(mask_util.area(seg))


def dataset_summary(name: str) -> str:
    dicts = DatasetCatalog.get(name)
    classes = MetadataCatalog.get(name).thing_classes
    coco_like = {"categories": [{"id": i, "name": c} for i, c in enumerate(classes)],
                 "annotations": [{"image_id": d["image_id"], "category_id": a["category_id"],
                                  "area": segmentation_area(a["segmentation"], d)}
                                 for d in dicts for a in d["annotations"]]}
    return format_statistics(class_statistics(coco_like), f"\n{name}: {len(dicts)} images")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images-per-type", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = os.path.join(datasets_root(), "synthetic")
    print(f"[1/3] generating synthetic images into {root}")
    generate_dataset(root, images_per_type=args.images_per_type, seed=args.seed)
    print(f"[2/3] converting {root}/train.csv to COCO JSON")
    convert_sartorius(root, root, split=(0.75, 0.25, 0), seed=args.seed)
    print("[3/3] loading the registered datasets")
    for name in ("synthetic_train", "synthetic_val"):
        print(dataset_summary(name))
    print(f"\noutputs: {root}/train/*.png, {root}/train.csv, {root}/annotations/{{train,val}}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
