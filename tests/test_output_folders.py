"""No tool deletes or replaces what it did not write: output folders (run_folder) and the tools
that write them, with users' files in the way, empty folders, symlinks, the current folder,
failing last steps and file names that are not UTF-8."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cellseg_d2 import run_folder
from cellseg_d2.run_folder import (
    MANIFEST,
    OutputFolderError,
    check_output_dir,
    run_in_place,
    staged_run,
)

from .conftest import CONFIG, REPO, TINY, tool

TOOL = "tools/x.py"


def write_run(folder, names=("labels/a.tif", "counts.csv"), overwrite=False, content="run"):
    check_output_dir(str(folder), TOOL, overwrite)
    with staged_run(str(folder), TOOL) as stage:
        for n in names:
            os.makedirs(os.path.join(stage, os.path.dirname(n)), exist_ok=True)
            with open(os.path.join(stage, n), "w") as f:
                f.write(f"{content} {n}")


def listing(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder)
                  for r, _, fs in os.walk(folder) for f in fs)


def test_new_folder_gets_the_run_and_its_record(tmp_path):
    out = tmp_path / "out"
    write_run(out)
    assert listing(out) == [MANIFEST, "counts.csv", "labels/a.tif"]
    record = json.loads((out / MANIFEST).read_text())
    assert record["tool"] == TOOL and set(record["files"]) == {"counts.csv", "labels/a.tif"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_earlier_run_is_refused_then_replaced_exactly(tmp_path):
    out = tmp_path / "out"
    write_run(out, names=("labels/a.tif", "labels/b.tif", "counts.csv"))
    with pytest.raises(OutputFolderError, match="holds an earlier run of tools/x.py; pass "
                                                "--overwrite"):
        check_output_dir(str(out), TOOL, overwrite=False)
    with pytest.raises(OutputFolderError, match="holds a run of tools/x.py, not of tools/y.py"):
        check_output_dir(str(out), "tools/y.py", overwrite=True)
    write_run(out, names=("labels/a.tif",), overwrite=True, content="new")
    assert listing(out) == [MANIFEST, "labels/a.tif"]  # b.tif and counts.csv were the old run's
    assert (out / "labels" / "a.tif").read_text() == "new labels/a.tif"


@pytest.mark.parametrize("change, named", [
    ("added", "'labels/corrected.tif', which it did not write"),
    ("edited", "'labels/a.tif', which was changed after it wrote it"),
    ("folder", "the folder 'notes', which it did not make"),
])
def test_users_files_inside_an_earlier_run_make_overwrite_refuse(tmp_path, change, named):
    out = tmp_path / "out"
    write_run(out)
    if change == "added":
        (out / "labels" / "corrected.tif").write_text("hand-corrected")
    elif change == "edited":
        (out / "labels" / "a.tif").write_text("hand-corrected, saved over the tool's file")
    else:
        (out / "notes").mkdir()
    before = listing(out)
    with pytest.raises(OutputFolderError, match=f"also holds {named}"):
        check_output_dir(str(out), TOOL, overwrite=True)
    assert listing(out) == before


def test_folder_of_users_files_is_refused_and_untouched(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "ideas.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="holds files this tool did not write "
                                                    "\\(e.g. 'ideas.txt'\\)"):
            check_output_dir(str(out), TOOL, overwrite)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="exists and is not a folder"):
        check_output_dir(str(tmp_path / "file"), TOOL, False)
    assert (out / "ideas.txt").read_text() == "mine"


def test_empty_folder_and_symlink_are_written_into_not_replaced(tmp_path):
    empty = tmp_path / "mount"
    empty.mkdir()
    inode = os.stat(empty).st_ino
    write_run(empty)
    assert os.stat(empty).st_ino == inode and (empty / "counts.csv").is_file()
    target = tmp_path / "other_disk"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    write_run(link)
    assert link.is_symlink() and (target / "labels" / "a.tif").is_file()
    write_run(link, overwrite=True, content="again")
    assert link.is_symlink() and (target / "counts.csv").read_text() == "again counts.csv"


@pytest.fixture
def mount_point(tmp_path):
    """An empty tmpfs mounted on a folder (a container volume), where this machine allows it."""
    point = tmp_path / "volume"
    point.mkdir()
    mount = ["mount", "-t", "tmpfs", "none", str(point)]
    if not shutil.which("mount") or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield point
    subprocess.run(["umount", str(point)], check=False)


def test_mount_point_is_written_into(mount_point):
    write_run(mount_point)
    write_run(mount_point, overwrite=True, content="again")
    assert listing(mount_point) == [MANIFEST, "counts.csv", "labels/a.tif"]
    assert (mount_point / "counts.csv").read_text() == "again counts.csv"


def test_failing_run_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    write_run(out)
    before = {p: open(os.path.join(out, p)).read() for p in listing(out)}
    with pytest.raises(RuntimeError), staged_run(str(out), TOOL) as stage:
        (open(os.path.join(stage, "counts.csv"), "w")).write("half")
        raise RuntimeError("image 7 failed")
    assert {p: open(os.path.join(out, p)).read() for p in listing(out)} == before
    with pytest.raises(RuntimeError), staged_run(str(tmp_path / "new"), TOOL):
        raise RuntimeError("failed at once")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failing_last_step_keeps_both_runs_and_says_where(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_run(out)
    before = {p: open(os.path.join(out, p)).read() for p in listing(out)}
    real_replace, new_moved = os.replace, []

    def replace(src, dst):  # moving the new run's second entry into place fails
        parent = os.path.basename(os.path.dirname(src))
        if parent.startswith(".cellseg_d2_partial.") and "old." not in parent:
            new_moved.append(src)
            if len(new_moved) == 2:
                raise OSError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(run_folder.os, "replace", replace)
    with pytest.raises(OutputFolderError) as e:
        write_run(out, overwrite=True, content="new")
    monkeypatch.undo()
    message = str(e.value)
    assert "the run is complete" in message and "\n" not in message
    stage = message.split("its outputs are in ")[1]
    assert listing(stage) == ["counts.csv", "labels/a.tif"]
    assert open(os.path.join(stage, "counts.csv")).read() == "new counts.csv"
    assert {p: open(os.path.join(out, p)).read() for p in listing(out)
            if not p.startswith(".cellseg_d2_partial")} == before


def test_run_in_place_records_what_it_wrote_even_when_it_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), run_in_place(str(out), TOOL):
        (out / "pretrain.log").write_text("diverged")
        raise RuntimeError("diverged")
    record = json.loads((out / MANIFEST).read_text())
    assert record["complete"] is False and list(record["files"]) == ["pretrain.log"]
    check_output_dir(str(out), TOOL, overwrite=True)  # a failed run is replaceable
    with run_in_place(str(out), TOOL):
        (out / "model_final.pth").write_text("weights")
    assert listing(out) == [MANIFEST, "model_final.pth"]
    with pytest.raises(ValueError), run_in_place(str(tmp_path / "never"), TOOL):
        raise ValueError("bad --data")
    assert not (tmp_path / "never").exists()  # made, nothing written, removed again


# ------------------------------------------------------------------ the tools themselves
def test_predict_refuses_users_file_inside_labels(trained, tiny_synthetic, tmp_path):
    src = sorted((tiny_synthetic / "synthetic" / "train").iterdir())[0]
    out = tmp_path / "out"
    args = ["--config-file", CONFIG, "--weights", trained / "model_final.pth", "--input", src,
            "--output", out, *TINY]
    tool("predict.py", *args)
    (out / "labels" / "corrected.tif").write_bytes(b"hand-corrected labels")
    proc = tool("predict.py", *args[:-len(TINY)], "--overwrite", *TINY, check=False)
    assert proc.returncode == 1 and "labels/corrected.tif" in proc.stderr
    assert (out / "labels" / "corrected.tif").read_bytes() == b"hand-corrected labels"


def test_predict_into_the_current_empty_folder(trained, tiny_synthetic, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    src = sorted((tiny_synthetic / "synthetic" / "train").iterdir())[0]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), "--config-file",
                           CONFIG, "--weights", str(trained / "model_final.pth"), "--input",
                           str(src), "--output", ".", *TINY], cwd=here, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (here / "counts.csv").is_file() and (here / "labels" / f"{src.stem}.tif").is_file()
    assert sorted(p.name for p in here.iterdir()) == [
        MANIFEST, "cells.csv", "coco_results.json", "counts.csv", "images.json", "labels",
        "overlays", "submission.csv"]


def test_image_name_that_is_not_utf8_is_segmented(trained, tiny_synthetic, tmp_path):
    folder = tmp_path / "share"
    folder.mkdir()
    src = sorted((tiny_synthetic / "synthetic" / "train").iterdir())[0]
    (folder / "good.png").write_bytes(src.read_bytes())
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as f:
        f.write(src.read_bytes())
    out = tmp_path / "out"
    proc = tool("predict.py", "--config-file", CONFIG, "--weights", trained / "model_final.pth",
                "--input", folder, "--output", out, *TINY, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["caf%E9.tif", "good.tif"]
    counts = (out / "counts.csv").read_text(encoding="utf-8")
    assert "caf%E9.png" in counts
    a = cv2.imread(str(out / "labels" / "caf%E9.tif"), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(out / "labels" / "good.tif"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(a, b)  # the same pixels give the same cells


def test_two_channel_image_is_segmented_as_its_first_channel(trained, tiny_synthetic, tmp_path):
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    src = sorted((tiny_synthetic / "synthetic" / "train").iterdir())[0]
    (folder / "a.png").write_bytes(src.read_bytes())
    grey = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    tifffile.imwrite(folder / "two_channels.tif", np.stack([grey, grey // 2], axis=-1),
                     photometric="minisblack", planarconfig="contig")
    out = tmp_path / "out"
    proc = tool("predict.py", "--config-file", CONFIG, "--weights", trained / "model_final.pth",
                "--input", folder, "--output", out, *TINY, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "two_channels.tif: array of shape" in proc.stderr and "first channel" in proc.stderr
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["a", "two_channels"]


@pytest.mark.parametrize("name, args", [
    ("evaluate.py", ["--gt", "{gt}", "--results", "{gt}"]),
    ("visualize_samples.py", ["--config-file", CONFIG, "--weights", "{weights}"]),
    ("demo.py", []),
])
def test_every_folder_tool_refuses_a_folder_of_users_files(trained, tmp_path, name, args):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    args = [a.format(gt=gt, weights=trained / "model_final.pth") for a in args]
    for extra in ([], ["--overwrite"]):
        proc = tool(name, *args, "--output", out, *extra, check=False)
        assert proc.returncode == 1, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and "'notes.txt'" in errors[0], proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_train_real_reads_data_before_writing_and_keeps_users_files(tiny_synthetic, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.txt").write_text("mine")
    proc = tool("train_real.py", "--data", tmp_path / "missing", "--output", notes, check=False)
    assert proc.returncode == 1 and "missing" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["plan.txt"]
    proc = tool("train_real.py", "--data", tiny_synthetic / "synthetic", "--split", "4,2,0",
                "--output", notes, "--overwrite", check=False)
    assert proc.returncode == 1 and "'plan.txt'" in proc.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["plan.txt"]
    # --output the folder holding the --data JSON
    data = json.loads((tiny_synthetic / "synthetic" / "annotations" / "train.json").read_text())
    export = tmp_path / "export"
    export.mkdir()
    for im in data["images"]:
        im["file_name"] = str((tiny_synthetic / "synthetic" / im["file_name"]).resolve())
    (export / "cells.json").write_text(json.dumps(data))
    proc = tool("train_real.py", "--data", export / "cells.json", "--output", export, check=False)
    assert proc.returncode == 1 and "'cells.json'" in proc.stderr
    assert json.loads((export / "cells.json").read_text()) == data
    proc = tool("train_real.py", "--data", tmp_path / "missing", "--output", tmp_path / "new",
                check=False)
    assert proc.returncode == 1 and not (tmp_path / "new").exists()


class FailingOn:
    """A segmenter (tiling.CellSegmenter's interface) that finds no cells, and raises on the
    image whose name holds ``bad``."""

    def __init__(self, bad):
        self.bad, self.seen = bad, []

    def fits_one_tile(self, height, width):
        return True

    def __call__(self, image):
        self.seen.append(image)
        if len(self.seen) == 2:
            raise MemoryError("Unable to allocate 48.0 GiB")
        return []


def test_image_whose_segmentation_fails_is_skipped_and_listed(tmp_path):
    from detectron2.data import MetadataCatalog

    from cellseg_d2.data.image_io import read_image
    from cellseg_d2.predict import predict_files

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(folder / f"{name}.png"), np.full((40, 60), 100, np.uint8))
    out = tmp_path / "out"
    files = sorted(str(p) for p in folder.iterdir())
    counts, skipped = predict_files(FailingOn("b"), files, read_image, str(out),
                                    MetadataCatalog.get("synthetic_val"), progress=False)
    assert [c["image"] for c in counts] == ["a", "c"]
    assert len(skipped) == 1 and skipped[0]["file"].endswith("b.png")
    assert "MemoryError: Unable to allocate" in skipped[0]["reason"]
    for folder_name in ("labels", "overlays"):
        assert sorted(p.stem for p in (out / folder_name).iterdir()) == ["a", "c"]
    assert [i["output_name"] for i in json.loads((out / "images.json").read_text())] == ["a", "c"]
    assert "b.png" in (out / "skipped.csv").read_text()
