"""tools/evaluate.py on what users bring: results numbered unlike the ground truth, more
detections than --max-dets, and malformed ground truths and results (one line each)."""
import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as mask_util
import pytest

from .conftest import REPO

H, W = 60, 80
NAMES = ["a.png", "b.png", "c.png"]


def rectangles(k):
    """4 non-overlapping rectangles of image k, as (x0, y0, x1, y1)."""
    return [(5 + 18 * i, 5 + 3 * k, 15 + 18 * i, 20 + 3 * k + i) for i in range(4)]


def rle(x0, y0, x1, y1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    r = mask_util.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": r["counts"].decode("ascii")}


def ground_truth(ids=(1, 2, 3), polygons=False):
    images = [{"id": i, "file_name": f"data/{n}", "height": H, "width": W}
              for i, n in zip(ids, NAMES)]
    anns = []
    for k, i in enumerate(ids):
        for x0, y0, x1, y1 in rectangles(k):
            seg = [[x0, y0, x1, y0, x1, y1, x0, y1]] if polygons else rle(x0, y0, x1, y1)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + k % 2,
                         "segmentation": seg, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "astro"}, {"id": 2, "name": "cort"}]}


def predictions(gt):
    """Perfect detections of ``gt``, numbered 0..N-1 in file-name order as predict numbers
    them, and the images.json predict writes beside them."""
    by_name = sorted(gt["images"], key=lambda im: im["file_name"])
    new_id = {im["id"]: k for k, im in enumerate(by_name)}
    results = [{"image_id": new_id[a["image_id"]], "category_id": a["category_id"], "score": 1.0,
                "bbox": a["bbox"], "segmentation": a["segmentation"]} for a in gt["annotations"]]
    images = [{"id": new_id[im["id"]], "file_name": f"/home/me/images/{im['file_name'][5:]}",
               "output_name": im["file_name"][5:-4], "height": H, "width": W} for im in by_name]
    return results, images


@pytest.fixture
def run_tool(capsys):
    """tools/evaluate.py's main in this process (the tool as a user runs it, without the
    seconds of a new interpreter): (exit status, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(*args):
        capsys.readouterr()
        code = module.main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def evaluate(run_tool, tmp_path, gt, results, images=None, *args, check=True):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "coco_results.json").write_text(json.dumps(results))
    if images is not None:
        (run / "images.json").write_text(json.dumps(images))
    elif (run / "images.json").exists():
        (run / "images.json").unlink()
    out = tmp_path / "evaluation"
    proc = run_tool("--gt", tmp_path / "gt.json", "--results", run / "coco_results.json",
                    "--output", out, "--overwrite", *args)
    assert proc.returncode == 0 or not check, proc.stderr
    report = json.loads((out / "results.json").read_text()) if proc.returncode == 0 else None
    return proc, report


@pytest.mark.parametrize("ids", [(0, 1, 2), (2, 0, 1), (100, 7, 42)])
def test_results_are_matched_by_file_name_however_the_truth_is_numbered(run_tool, tmp_path, ids):
    results, images = predictions(ground_truth())
    proc, report = evaluate(run_tool, tmp_path, ground_truth(ids), results, images)
    assert report["segm"]["AP"] == pytest.approx(100) and report["kaggle"]["score"] == 100
    assert report["bbox"]["AP"] == pytest.approx(100)
    assert "matched to the ground truth's images by file name" in proc.stderr
    moved = sum(i != k for k, i in enumerate(ids))
    assert (f"{moved} of 3 image ids differ" in proc.stderr) == (moved > 0)


def test_results_without_names_are_matched_by_id_and_say_so(run_tool, tmp_path):
    gt = ground_truth()
    results, _ = predictions(gt)
    proc, _ = evaluate(run_tool, tmp_path, gt, results, None, check=False)
    assert proc.returncode == 1 and "image_id 0, not an image of the ground truth" in proc.stderr
    for r in results:
        r["image_id"] += 1
    proc, report = evaluate(run_tool, tmp_path, gt, results)
    assert report["segm"]["AP"] == pytest.approx(100)
    assert "names no image files (no images.json beside it)" in proc.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda ims: ims[0].update(file_name="/x/other.png"),
     "image 0 is other.png, which the ground truth does not hold"),
    (lambda ims: ims[1].update(file_name=ims[0]["file_name"]), "images 0 and 1 are both a.png"),
    (lambda ims: ims[2].update(height=520), "c.png is 80x520 in the results but 80x60"),
    (lambda ims: ims.pop(), "detection 8 has image_id 2, which the results' image list does "
                            "not name"),
])
def test_names_and_ids_that_disagree_are_refused(run_tool, tmp_path, edit, message):
    results, images = predictions(ground_truth())
    edit(images)
    proc, _ = evaluate(run_tool, tmp_path, ground_truth(), results, images, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_more_detections_than_max_dets_warns_with_the_count(run_tool, tmp_path):
    gt = ground_truth()
    results, images = predictions(gt)
    extra = [dict(r, score=0.5) for r in results if r["image_id"] == 1] * 5  # 20 more on b.png
    proc, report = evaluate(run_tool, tmp_path, gt, results + extra, images, "--max-dets", "10")
    assert "1 image(s) have more than --max-dets 10 detections (most: 24, data/b.png)" \
        in proc.stderr and "--max-dets 24" in proc.stderr
    proc, _ = evaluate(run_tool, tmp_path, gt, results, images, "--max-dets", "10")
    assert "more than --max-dets" not in proc.stderr


def test_polygon_and_uncompressed_rle_results_are_scored(run_tool, tmp_path):
    gt = ground_truth(polygons=True)
    results, images = predictions(gt)  # polygons, as the ground truth's
    _, report = evaluate(run_tool, tmp_path, gt, results, images)
    assert report["segm"]["AP"] == pytest.approx(100)
    gt = ground_truth()
    results, images = predictions(gt)
    for r in results:
        m = mask_util.decode(dict(r["segmentation"], counts=r["segmentation"]["counts"].encode()))
        flat = np.r_[0, m.T.ravel(), 0]
        edges = np.flatnonzero(np.diff(flat)) + 1  # run boundaries, column-major
        r["segmentation"] = {"size": [H, W],
                             "counts": np.diff(np.r_[1, edges, H * W + 1]).tolist()}
    _, report = evaluate(run_tool, tmp_path, gt, results, images)
    assert report["segm"]["AP"] == pytest.approx(100) and report["kaggle"]["score"] == 100


def _dup_image(gt):
    gt["images"][1]["id"] = gt["images"][0]["id"]


def _past_image(gt):
    x = mask_util.encode(np.asfortranarray(np.ones((H + 5, W), np.uint8)))
    gt["annotations"][2]["segmentation"] = {"size": [H, W], "counts": x["counts"].decode()}


@pytest.mark.parametrize("edit, message", [
    (_dup_image, "images[1] has id 1, which images[0] also has"),
    (lambda gt: gt["images"][0].update(id="1"), "images[0] has id '1'; image ids must be "
                                               "integers"),
    (lambda gt: gt["images"][2].update(file_name="data/a.png"),
     "images[2] (id 3) is data/a.png, which images[0] also is"),
    (lambda gt: gt["annotations"][0].update(image_id=9), "annotations[0] (id 1) has image_id 9, "
                                                         "not an image of the file"),
    (lambda gt: gt["annotations"][3].update(category_id=7), "annotations[3] (id 4) has "
                                                            "category_id 7, not a category"),
    (lambda gt: gt["categories"][1].pop("name"), "categories[1] (id 2) has no name"),
    (_past_image, "annotations[2] (id 3) has an RLE that runs past its image (5200 pixels for "
                  "4800)"),
    (lambda gt: gt["annotations"][1].update(segmentation=[[1, 2, 3, 4]]),
     "a polygon of 4 coordinates (3 or more x, y points needed)"),
    (lambda gt: gt["annotations"][1].update(segmentation=rle(0, 0, 5, 5, h=520, w=704)),
     "an RLE of size 704x520 on a 80x60 image"),
])
def test_bad_ground_truth_is_one_line(run_tool, tmp_path, edit, message):
    gt = ground_truth()
    results, images = predictions(ground_truth())
    edit(gt)
    proc, _ = evaluate(run_tool, tmp_path, gt, results, images, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr
    assert "gt.json" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda r: r[3].update(segmentation=rle(0, 0, 5, 5, h=520, w=704)),
     "detection 3 (image 1) has an RLE of size 704x520 on a 80x60 image"),
    (lambda r: r[0].update(segmentation=[]), "detection 0 (image 1) has an empty segmentation"),
    (lambda r: r[5].update(score="0.9"), "detection 5 has score '0.9'; a number is needed"),
    (lambda r: r[1].update(image_id="0"), "detection 1 has image_id '0'; image ids are "
                                          "integers"),
    (lambda r: r[2].update(category_id=7), "detection 2 has category_id 7, not a category"),
])
def test_bad_results_are_one_line(run_tool, tmp_path, edit, message):
    gt = ground_truth()
    results, images = predictions(gt)
    edit(results)
    proc, _ = evaluate(run_tool, tmp_path, gt, results, images, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
