"""Scoring of results files from any tool (tools/evaluate.py): COCO results JSON or a folder of
label images against a COCO ground-truth JSON, with the metrics training reports: COCO bbox /
segm AP overall and per class at any maxDets (faster-coco-eval) and the Kaggle metric."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from ..cells import Cell, cells_from_label, coco_rle, paint_labels, tight
from ..data.coco_checks import (
    check_annotations,
    check_categories,
    check_images,
    is_int,
    is_number,
    segmentation_problem,
    to_rle,
)
from ..data.coco_input import read_coco, read_json
from ..data.image_io import ImageReadError, read_unchanged
from ..data.segmentation import annotation_rles
from .kaggle_metric import score_image
from .per_class import (
    COCO_AREA_BANDS,
    METRICS,
    evaluate_coco,
    per_class_agnostic,
    per_class_metrics,
    recall_metrics,
)

LABEL_EXTENSIONS = (".tif", ".tiff", ".png")
SCORES_CSV = "scores.csv"  # beside label images: each cell's score


class ScoringError(ValueError):
    pass


def load_json(path: str, what: str):
    return read_json(path, what, ScoringError)


def load_ground_truth(path: str):
    """faster-coco-eval COCO of a COCO instances JSON, checked up front (data.coco_checks):
    integer ids each used once, named categories, annotations of listed images and categories
    whose masks fit their image; a missing bbox or area is computed from the mask."""
    from faster_coco_eval import COCO

    data = read_coco(path, "ground truth", ScoringError)
    images = check_images(data, path, ScoringError)
    cats = check_categories(data, path, ScoringError)
    sizes = {i: (im["height"], im["width"]) for i, im in images.items()}
    check_annotations(data, path, ScoringError, sizes, cats)
    for a in data["annotations"]:
        a.setdefault("iscrowd", 0)
        if "bbox" not in a or "area" not in a:
            rle = to_rle(a["segmentation"], *sizes[a["image_id"]])
            a.setdefault("bbox", [float(v) for v in mask_util.toBbox(rle)])
            a.setdefault("area", float(mask_util.area(rle)))
    return COCO(data)


def read_results(path: str):
    """(detections, the results' images or None, the file naming them) of a COCO results
    file: a list of detections, with predict's images.json beside it naming each image id's
    file, or a COCO-style dict whose "annotations" are the detections and "images" name them."""
    data = load_json(path, "results")
    images = None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        images = data.get("images")
        data, source = data["annotations"], path
    else:
        source = os.path.join(os.path.dirname(os.path.abspath(path)), "images.json")
        if os.path.isfile(source):
            images = load_json(source, "results' image list")
    if not isinstance(data, list):
        raise ScoringError(f"{path}: a COCO results file is a list of detections")
    if images is not None and not isinstance(images, list):
        raise ScoringError(f"{source}: the results' images are not a list")
    return data, images, source


def match_by_file_name(images: list, gt, source: str) -> dict:
    """{the results' image id: the ground truth's image id of the same file name} (base name;
    or the name without its extension where only that matches once). A name the ground truth
    does not hold, held twice, named by two results images, or of another size is an error."""
    by_name, by_stem = {}, {}
    for g in gt.dataset["images"]:
        name = os.path.basename(str(g.get("file_name", "")))
        by_name.setdefault(name, []).append(g)
        by_stem.setdefault(os.path.splitext(name)[0], []).append(g)
    mapping, taken = {}, {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not is_int(im.get("id")) or \
                not isinstance(im.get("file_name"), str):
            raise ScoringError(f"{source}: images[{i}] needs an integer 'id' and a 'file_name'")
        name = os.path.basename(im["file_name"])
        found = by_name.get(name) or by_stem.get(os.path.splitext(name)[0], [])
        if not found:
            raise ScoringError(f"{source}: image {im['id']} is {name}, which the ground truth "
                               f"does not hold; these results are of other images")
        if len(found) > 1:
            raise ScoringError(f"{source}: the ground truth holds {len(found)} images named "
                               f"{name}; cannot tell which image {im['id']} is")
        g = found[0]
        if g["id"] in taken:
            raise ScoringError(f"{source}: images {taken[g['id']]} and {im['id']} are both "
                               f"{name}")
        if im["id"] in mapping:
            raise ScoringError(f"{source}: image id {im['id']} is listed twice")
        if "height" in im and (im.get("height"), im.get("width")) != (g["height"], g["width"]):
            raise ScoringError(f"{source}: {name} is {im.get('width')}x{im.get('height')} in "
                               f"the results but {g['width']}x{g['height']} in the ground truth")
        mapping[im["id"]], taken[g["id"]] = g["id"], im["id"]
    return mapping


def check_results(results: list, gt, path: str, mapping: dict = None,
                  class_agnostic: bool = False) -> list:
    """The detections, checked (one line naming the first bad one) and with every mask as a
    compressed RLE; with ``mapping`` (match_by_file_name), image ids are the ground truth's.
    ``class_agnostic``: any integer category is taken (as the ground truth's first; a model of
    LIVECell's 8 cell types scored against its one category "cell")."""
    cats = set(gt.getCatIds())
    sizes = {i: (im["height"], im["width"]) for i, im in gt.imgs.items()}
    out = []
    for i, r in enumerate(results):
        where = f"{path}: detection {i}"
        if not isinstance(r, dict):
            raise ScoringError(f"{where} is not an object")
        missing = [k for k in ("image_id", "category_id", "score", "segmentation") if k not in r]
        if missing:
            raise ScoringError(f"{where} has no {missing[0]!r}")
        image_id = r["image_id"]
        if not is_int(image_id):
            raise ScoringError(f"{where} has image_id {image_id!r}; image ids are integers")
        if mapping is not None:
            if image_id not in mapping:
                raise ScoringError(f"{where} has image_id {image_id}, which the results' image "
                                   f"list does not name")
            image_id = mapping[image_id]
        elif image_id not in sizes:
            raise ScoringError(f"{where} has image_id {image_id}, not an image of the ground "
                               f"truth")
        if not is_int(r["category_id"]) or (r["category_id"] not in cats and not class_agnostic):
            raise ScoringError(f"{where} has category_id {r['category_id']!r}, not a category "
                               f"of the ground truth ({sorted(cats)})")
        if not is_number(r["score"]):
            raise ScoringError(f"{where} has score {r['score']!r}; a number is needed")
        problem = segmentation_problem(r["segmentation"], *sizes[image_id])
        if problem:
            raise ScoringError(f"{where} (image {image_id}) has {problem}")
        category = min(cats) if class_agnostic else r["category_id"]
        det = {"image_id": image_id, "category_id": category, "score": float(r["score"]),
               "segmentation": to_rle(r["segmentation"], *sizes[image_id])}
        if "bbox" in r:
            box = r["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
                raise ScoringError(f"{where} has bbox {box!r} (4 numbers x, y, width, height)")
            det["bbox"] = [float(v) for v in box]
        out.append(det)
    return out


def results_file(path: str, gt, report=print, class_agnostic: bool = False) -> list:
    """Checked detections of a COCO results file (read_results, check_results), matched to the
    ground truth's images by file name where the results name their images, else by image id;
    ``report`` gets a line saying which, and one on what the results do not cover."""
    results, images, source = read_results(path)
    if images is None:
        checked = check_results(results, gt, path, class_agnostic=class_agnostic)
        report(f"note: {path} names no image files (no images.json beside it): results are "
               f"matched to the ground truth's images by image id")
        return checked
    mapping = match_by_file_name(images, gt, source)
    checked = check_results(results, gt, path, mapping, class_agnostic)
    moved = sum(k != v for k, v in mapping.items())
    report(f"note: results matched to the ground truth's images by file name ({source})"
           + (f"; {moved} of {len(mapping)} image ids differ from the ground truth's" if moved
              else ""))
    missing = sorted(set(gt.getImgIds()) - set(mapping.values()))
    if missing:
        name = gt.imgs[missing[0]].get("file_name", missing[0])
        report(f"warning: {len(missing)} ground-truth images are not among the results' images "
               f"(e.g. {name}): scored as images where nothing was found")
    return checked


def many_detections(results: list, gt, max_dets: int):
    """A warning line if some image has more detections than AP reads (``max_dets``), else
    None."""
    per_image = Counter(r["image_id"] for r in results)
    over = {i: n for i, n in per_image.items() if n > max_dets}
    if not over:
        return None
    worst = max(over, key=over.get)
    name = gt.imgs[worst].get("file_name", worst)
    return (f"warning: {len(over)} image(s) have more than --max-dets {max_dets} detections "
            f"(most: {over[worst]}, {name}): AP reads only each image's {max_dets} best; pass "
            f"--max-dets {max(over.values())} to score them all")


def find_label_file(folder: str, file_name: str, files: list) -> str:
    """The label image of ``file_name`` in ``folder``: same stem, or the stem followed by
    '_' and a suffix (Cellpose writes <stem>_cp_masks.tif)."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    exact = [f for f in files if os.path.splitext(f)[0] == stem]
    found = exact or [f for f in files if os.path.splitext(f)[0].startswith(stem + "_")]
    if not found:
        raise ScoringError(f"{folder}: no label image for {file_name} (expected {stem}.tif, "
                           f"{stem}.png or {stem}_*.tif)")
    if len(found) > 1:
        raise ScoringError(f"{folder}: several label images for {file_name}: "
                           f"{', '.join(sorted(found))}")
    return os.path.join(folder, found[0])


def read_label(path: str, height: int, width: int) -> np.ndarray:
    try:
        label = read_unchanged(path)
    except ImageReadError as e:
        raise ScoringError(str(e)) from None
    label = np.squeeze(label)
    if label.shape != (height, width) or not np.issubdtype(label.dtype, np.integer):
        raise ScoringError(f"{path}: expected a {height}x{width} integer label image, got "
                           f"{'x'.join(map(str, label.shape))} {label.dtype}")
    return label


def read_label_scores(folder: str, files: list) -> dict | None:
    """{(label file, cell id): score} from ``folder``/scores.csv (columns file, label, score:
    a tool's confidence in each labelled cell, e.g. tools/peers/cellpose.py's), or None."""
    import csv

    path = os.path.join(folder, SCORES_CSV)
    if not os.path.isfile(path):
        return None
    scores = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        missing = {"file", "label", "score"} - set(rows.fieldnames or ())
        if missing:
            raise ScoringError(f"{path}: no column {sorted(missing)[0]!r} (expected file, "
                               f"label, score)")
        for line, row in enumerate(rows, start=2):
            try:
                key, score = (row["file"], int(row["label"])), float(row["score"])
            except (TypeError, ValueError):
                raise ScoringError(f"{path} row {line}: label must be an integer and score a "
                                   f"number, got {row['label']!r}, {row['score']!r}") from None
            if not np.isfinite(score) or key in scores:
                raise ScoringError(f"{path} row {line}: " + ("score is not finite" if key not in
                                   scores else f"{key[0]} label {key[1]} listed twice"))
            scores[key] = score
    return scores


def results_from_labels(folder: str, gt, progress: bool = True) -> list:
    """COCO results from label images (each labelled region one detection). Scores come from
    a scores.csv in the folder (file, label, score; every cell must be listed), else every
    cell scores 1. A cell takes its image's ground-truth class where the image has one (as in
    Sartorius and LIVECell, one cell type per image); otherwise scoring must be
    class-agnostic."""
    if not os.path.isdir(folder):
        raise ScoringError(f"{folder}: results are neither a JSON file nor a folder of label images")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(LABEL_EXTENSIONS))
    scores = read_label_scores(folder, files)
    results = []
    for img in tqdm(gt.loadImgs(gt.getImgIds()), desc="reading labels", unit="img",
                    disable=not progress):
        h, w = img["height"], img["width"]
        path = find_label_file(folder, img.get("file_name", str(img["id"])), files)
        label = read_label(path, h, w).astype(np.int64, copy=False)
        classes = {a["category_id"] for a in gt.loadAnns(gt.getAnnIds(imgIds=[img["id"]]))}
        cat = classes.pop() if len(classes) == 1 else min(gt.getCatIds())
        for c in cells_from_label(label):
            x0, y0, x1, y1 = c.bounds
            score = 1.0
            if scores is not None:
                r, k = np.argwhere(c.mask)[0]
                key = (os.path.basename(path), int(label[y0 + r, x0 + k]))
                if key not in scores:
                    raise ScoringError(f"{os.path.join(folder, SCORES_CSV)}: no score for "
                                       f"{key[0]} label {key[1]}")
                score = scores[key]
            results.append({"image_id": img["id"], "category_id": cat, "score": score,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "segmentation": coco_rle(c, h, w)})
    return results


def images_mix_classes(gt) -> bool:
    return any(len({a["category_id"] for a in gt.loadAnns(gt.getAnnIds(imgIds=[i]))}) > 1
               for i in gt.getImgIds())


def agnostic(gt, results: list):
    """Ground truth and results with every category merged into one, "cell"."""
    from faster_coco_eval import COCO

    data = dict(gt.dataset)
    data["annotations"] = [dict(a, category_id=1) for a in data["annotations"]]
    data["categories"] = [{"id": 1, "name": "cell"}]
    return COCO(data), [dict(r, category_id=1) for r in results]


def coco_metrics(gt, results: list, iou_type: str, max_dets, names: list,
                 area_bands=COCO_AREA_BANDS, class_agnostic: bool = False):
    """Training's metrics for one task: {"AP": .., "AP-<class>": .., "AR@<n>": .., ...} in %,
    and the per-class table; ``max_dets`` is the three maxDets (AP read at the last). With
    ``class_agnostic`` (LIVECell's protocol) the overall numbers ignore the classes and each
    class is scored over the images holding it."""
    if not results:
        raise ScoringError("no detections to score")
    e = evaluate_coco(gt, results, iou_type, tuple(max_dets), area_bands=area_bands,
                      use_cats=not class_agnostic)
    metrics = {m: float(e.stats[i] * 100) if e.stats[i] >= 0 else float("nan")
               for i, m in enumerate(METRICS)}
    metrics.update(recall_metrics(e.stats, max_dets))
    table = per_class_agnostic(e, names) if class_agnostic else \
        per_class_metrics(e.eval["precision"], e.params.iouThrs, names)
    for name, values in table.items():
        for m, v in values.items():
            metrics[f"{m}-{name}"] = v
    return metrics, table


def kaggle_metric(gt, results: list, score_thresh: float, names: list) -> dict:
    """The competition metric (see kaggle_metric.py) of results above ``score_thresh``, made
    non-overlapping (higher score wins), overall and per class, in %."""
    by_image = {}
    for r in results:
        if r["score"] > score_thresh:
            by_image.setdefault(r["image_id"], []).append(r)
    cat_ids = sorted(gt.getCatIds())
    overall, per_class = [], {c: [] for c in cat_ids}
    for img in gt.loadImgs(sorted(gt.getImgIds())):
        h, w = img["height"], img["width"]
        cells = []
        for r in by_image.get(img["id"], []):
            cut = tight(rle_mask(r["segmentation"], h, w), 0, 0)
            if cut is not None:
                cells.append(Cell(cut[1], cut[2], cut[0], float(r["score"]), r["category_id"],
                                  np.zeros(4)))
        _, cells = paint_labels(cells, (h, w))
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[img["id"]]))
        score, by_class = score_image(anns, h, w, cells)
        overall.append(score)
        for c, s in by_class.items():
            per_class[c].append(s)
    out = {"score": float(np.mean(overall)) * 100 if overall else float("nan")}
    for c, name in zip(cat_ids, names):
        if per_class[c]:
            out[f"score-{name}"] = float(np.mean(per_class[c])) * 100
    return out


def rle_mask(segmentation, height: int, width: int) -> np.ndarray:
    rle = annotation_rles([{"segmentation": segmentation}], height, width)[0]
    if isinstance(rle.get("counts"), str):
        rle = dict(rle, counts=rle["counts"].encode("ascii"))
    return mask_util.decode(rle).astype(bool)
