"""Dataset registration in Detectron2's DatasetCatalog / MetadataCatalog.

All paths are under the data root ``$CELLSEG_DATASETS`` (default ``./datasets``), read when a
dataset is loaded, so importing never touches the disk. See datasets/README.md for the layouts.

| name                             | files                                                     |
|----------------------------------|-----------------------------------------------------------|
| sartorius_{train,val,test}       | sartorius/annotations/{split}.json (tools/convert_sartorius.py) |
| sartorius_recon_{train,val}      | sartorius_recon/annotations/{split}.json (real images in ../shared) |
| synthetic_{train,val,test}       | synthetic/annotations/{split}.json (tools/make_synthetic.py) |
| real_{train,val}                 | real/annotations/{split}.json (tools/train_real.py --data FOLDER) |
| extra_train                      | extra/annotations/train.json (tools/train_real.py --extra FOLDER) |
| synthetic_overfit_train          | synthetic_overfit/annotations/train.json: 12 images, 4 per type |
| sartorius_overfit12              | the first 4 images per cell type of sartorius_train        |
| livecell_{train,val,test}        | livecell/annotations/LIVECell/livecell_coco_{split}.json  |
| livecell_{celltype}_{split}      | livecell/annotations/LIVECell_single_cells/{celltype}/{split}.json |

The LIVECell folder is ``$CELLSEG_LIVECELL`` where set (e.g. ../shared/data/livecell_sample),
else ``<data root>/livecell``.
"""
from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .livecell import LIVECELL_CLASSES, load_livecell_json
from .sartorius import SARTORIUS_CLASSES, SPLITS


def datasets_root() -> str:
    return os.path.expanduser(os.environ.get("CELLSEG_DATASETS", "datasets"))


def livecell_root() -> str:
    return os.path.expanduser(os.environ.get("CELLSEG_LIVECELL", "")) or \
        os.path.join(datasets_root(), "livecell")


class DatasetMissingError(FileNotFoundError):
    pass


def _require(name: str, path: str, hint: str) -> str:
    if not os.path.exists(path):
        raise DatasetMissingError(f"dataset '{name}': {os.path.abspath(path)} not found; {hint} "
                                  f"(data root: CELLSEG_DATASETS={datasets_root()!r}, see "
                                  f"datasets/README.md)")
    return path


def register_kaggle_coco(name: str, subdir: str, split: str, hint: str,
                         data_root: str = None) -> None:
    """A COCO JSON written by the Sartorius converter: file names are relative to its dataset
    folder, category ids 1..3 in SARTORIUS_CLASSES order; under ``data_root`` (default: the
    data root when the dataset is loaded)."""
    def load():
        root = os.path.join(data_root or datasets_root(), subdir)
        json_file = _require(name, os.path.join(root, "annotations", f"{split}.json"), hint)
        MetadataCatalog.get(name).set(json_file=json_file, image_root=root)
        return load_coco_json(json_file, root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=list(SARTORIUS_CLASSES), evaluator_type="coco",
                                  thing_dataset_id_to_contiguous_id={i + 1: i for i in range(3)})


def register_livecell(name: str, json_rel: str, image_rel: str, classes) -> None:
    def load():
        root = livecell_root()
        json_file = _require(name, os.path.join(root, json_rel),
                             "download LIVECell (annotations + images) into it, or point "
                             "CELLSEG_LIVECELL at a folder in its layout")
        image_root = _require(name, os.path.join(root, image_rel), "LIVECell images are missing")
        return load_livecell_json(json_file, image_root, tuple(classes))

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=list(classes), evaluator_type="coco")


def first_per_class(records: list, per_class: int) -> list:
    """The first ``per_class`` images (by file name) of each image's majority class."""
    chosen, counts = [], {}
    for r in sorted(records, key=lambda r: r["file_name"]):
        classes = [a["category_id"] for a in r["annotations"]]
        if not classes:
            continue
        c = max(set(classes), key=classes.count)
        if counts.get(c, 0) < per_class:
            counts[c] = counts.get(c, 0) + 1
            chosen.append(r)
    return chosen


def register_subset(name: str, source: str, per_class: int) -> None:
    DatasetCatalog.register(name, lambda: first_per_class(DatasetCatalog.get(source), per_class))
    MetadataCatalog.get(name).set(thing_classes=MetadataCatalog.get(source).thing_classes,
                                  evaluator_type="coco")


def register_all() -> None:
    if "sartorius_train" in DatasetCatalog.list():
        return
    convert = "run tools/convert_sartorius.py"
    for split in SPLITS:
        register_kaggle_coco(f"sartorius_{split}", "sartorius", split,
                             f"{convert} --data-dir <kaggle folder> --out-dir <root>/sartorius")
        register_kaggle_coco(f"synthetic_{split}", "synthetic", split,
                             "run tools/make_synthetic.py (or `make demo`)")
    register_kaggle_coco("synthetic_overfit_train", "synthetic_overfit", "train",
                         "run tools/make_synthetic.py --out-dir <root>/synthetic_overfit "
                         "--images-per-type 4 --convert --split 12,0,0")
    register_subset("sartorius_overfit12", "sartorius_train", per_class=4)
    for split in ("train", "val"):
        register_kaggle_coco(f"sartorius_recon_{split}", "sartorius_recon", split,
                             f"{convert} --data-dir ../shared/data/sartorius_recon "
                             f"--out-dir <root>/sartorius_recon --split 26,8,0")
        register_kaggle_coco(f"real_{split}", "real", split,
                             "run tools/train_real.py --data <folder> (it converts the folder)")
    register_kaggle_coco("extra_train", "extra", "train",
                         "run tools/train_real.py --extra <folder> (it converts the folder)")
    for split in SPLITS:
        image_dir = "livecell_test_images" if split == "test" else "livecell_train_val_images"
        register_livecell(f"livecell_{split}", f"annotations/LIVECell/livecell_coco_{split}.json",
                          f"images/{image_dir}", LIVECELL_CLASSES)
        for cell_type in LIVECELL_CLASSES:
            register_livecell(f"livecell_{cell_type.lower()}_{split}",
                              f"annotations/LIVECell_single_cells/{cell_type.lower()}/{split}.json",
                              f"images/{image_dir}", [cell_type])
