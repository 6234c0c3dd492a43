"""The napari plugin in a real viewer (on Xvfb, started here): segment with the widget, compare
with tools/predict.py, correct labels, save as training data, train on that folder."""
import json
import os
import shutil
import zipfile

import cv2
import numpy as np
import pytest

from .conftest import TINY, tool

napari = pytest.importorskip("napari", reason="the napari extra (pip install -e '.[napari]')")


@pytest.fixture(scope="module")
def display():
    from cellseg_d2.napari_plugin.display import ensure_display

    if not os.environ.get("DISPLAY") and not shutil.which("Xvfb"):  # .ci/run installs it
        pytest.skip("no DISPLAY and no Xvfb (Debian: apt-get install xvfb)")
    return ensure_display()


@pytest.fixture
def viewer(display):
    v = napari.Viewer(show=False)
    yield v
    v.close()


def read_tif(path):
    import tifffile

    return tifffile.imread(path)


def test_plugin_is_listed():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("cellseg-d2")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment cells"]
    assert manifest.contributions.writers[0].layer_types == ["labels"]


def test_segment_correct_save_and_retrain(viewer, trained, tiny_synthetic, tmp_path):
    """The loop of a biologist's session: the widget's Labels layer equals tools/predict.py's
    label TIFF for the same file (with a given diameter too), hand-corrected labels are saved
    as training data and tools/train_real.py trains on that folder; the writer saves a label
    TIFF and its ROI zip; the viewer's screenshot is taken."""
    from cellseg_d2.napari_plugin.widget import segment_in_viewer

    images = sorted((tiny_synthetic / "synthetic" / "train").glob("*.png"))[:2]
    widget, image, labels = segment_in_viewer(viewer, trained, str(images[0]), score=0.05)
    assert labels.name == f"{image.name} cells"
    predicted = tmp_path / "predicted"
    tool("predict.py", "--config-file", trained / "config.yaml", "--weights",
         trained / "model_final.pth", "--input", images[0], "--output", predicted,
         "--score-thresh", 0.05, "--save-tif")
    expected = read_tif(predicted / "labels" / f"{images[0].stem}.tif")
    assert expected.max() > 0, "the model found no cell: nothing compared"
    np.testing.assert_array_equal(labels.data, expected)
    counts = json.loads(json.dumps(widget.last.counts))
    assert sum(counts.values()) == expected.max() and str(expected.max()) in widget.status.text()
    assert list(labels.features["index"]) == list(range(1, expected.max() + 1))

    # The same image at twice the size, its cells twice the model's diameter: as predict does.
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(images[0])), None, fx=2, fy=2))
    diameter = 2 * widget.model().diameter
    assert diameter > 0
    _, _, big_labels = segment_in_viewer(viewer, trained, str(big), score=0.05, diameter=diameter)
    tool("predict.py", "--config-file", trained / "config.yaml", "--weights",
         trained / "model_final.pth", "--input", big, "--output", tmp_path / "predicted_big",
         "--score-thresh", 0.05, "--save-tif", "--diameter", diameter)
    np.testing.assert_array_equal(big_labels.data,
                                  read_tif(tmp_path / "predicted_big" / "labels" / "big.tif"))

    # Corrections: delete cell 1, draw a new cell where there was background.
    data = labels.data.copy()
    data[data == 1] = 0
    y, x = np.argwhere(data[:-8, :-8] == 0)[0]
    data[y:y + 8, x:x + 8][data[y:y + 8, x:x + 8] == 0] = data.max() + 1
    labels.data = data
    corrected_cells = len(np.unique(data)) - 1

    folder = tmp_path / "my_cells"
    widget.train_dir.setText(str(folder))
    widget.labels_layer.setCurrentText(labels.name)
    widget.cell_type.setCurrentText("cort")
    assert widget.save_training_data() == f"{image.name}.tif", widget.save_status.text()
    np.testing.assert_array_equal(read_tif(folder / "labels" / f"{image.name}.tif"), data)
    np.testing.assert_array_equal(read_tif(folder / "images" / f"{image.name}.tif"), image.data)
    # a second image, saved with its labels as segmented
    widget2, image2, labels2 = segment_in_viewer(viewer, trained, str(images[1]), score=0.05)
    assert widget2 is widget  # the dock widget is reused
    widget.labels_layer.setCurrentText(labels2.name)
    widget.cell_type.setCurrentText("astro")
    if labels2.data.max() == 0:  # a model this small may find nothing: draw one cell
        labels2.data = np.pad(np.ones((10, 10), np.uint16), ((20, 130), (30, 184)))
    assert widget.save_training_data() == f"{image2.name}.tif", widget.save_status.text()
    rows = (folder / "cell_types.csv").read_text().splitlines()
    assert rows == ["image,cell_type", f"{image.name}.tif,cort", f"{image2.name}.tif,astro"]
    # saving the first again (corrected further) replaces its entry, not a second row
    widget.labels_layer.setCurrentText(labels.name)
    widget.cell_type.setCurrentText("cort")
    assert widget.save_training_data() == f"{image.name}.tif"
    assert len((folder / "cell_types.csv").read_text().splitlines()) == 3

    # The writer: label TIFF + ROI zip named by the layer's (no longer consecutive) ids.
    written = labels.save(str(tmp_path / "saved.tif"), plugin="cellseg-d2")
    assert sorted(os.path.basename(p) for p in written) == ["saved.tif", "saved_rois.zip"]
    np.testing.assert_array_equal(read_tif(tmp_path / "saved.tif"), data)
    with zipfile.ZipFile(tmp_path / "saved_rois.zip") as z:
        ids = sorted(int(n.split(".")[0]) for n in z.namelist())
    assert ids == sorted(int(i) for i in np.unique(data) if i)

    shot = tmp_path / "viewer.png"
    viewer.screenshot(str(shot), canvas_only=False)
    assert cv2.imread(str(shot)).std() > 0

    # Retrain on the folder (fine-tuning only, a few iterations' worth of budget: a timing and
    # a stage start-up took ~45 s on the slowest machine seen).
    out = tmp_path / "retrained"
    tool("train_real.py", "--data", folder, "--output", out, "--minutes", 1.5,
         "--pretrain-share", 0, "--synthetic-per-type", 1, "--split", "1,1,0",
         "--eval-reserve", 5, *TINY)
    assert (out / "model_final.pth").is_file()
    anns = [json.loads((out / "data" / "real" / "annotations" / f"{s}.json").read_text())
            for s in ("train", "val")]
    by_image = {im["file_name"].split(os.sep)[-1]: sum(a["image_id"] == im["id"]
                                                        for a in split["annotations"])
                for split in anns for im in split["images"]}
    assert by_image[f"{image.name}.tif"] == corrected_cells
