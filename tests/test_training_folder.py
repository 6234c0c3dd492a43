"""The training folder the napari plugin grows (images/, labels/, cell_types.csv) and its reader
for tools/train_real.py --data."""
import numpy as np
import pytest
import tifffile

from cellseg_d2.data.sartorius import ConversionError
from cellseg_d2.data.training_folder import CSV_NAME, append_example, read_training_folder


def example(seed=0, shape=(40, 60), dtype=np.uint16):
    rng = np.random.default_rng(seed)
    image = rng.integers(1000, 3000, shape).astype(dtype)
    label = np.zeros(shape, np.uint16)
    label[5:15, 5:20] = 4  # ids need not be consecutive (a corrected layer)
    label[20:35, 30:50] = 9
    return image, label


def test_examples_round_trip_to_coco(tmp_path):
    folder = tmp_path / "cells"
    image, label = example()
    assert append_example(str(folder), "well A1/field 1", image, label, "astro") == \
        "well_A1_field_1.tif"
    rgb = np.stack([example(1)[0].astype(np.uint8)] * 3, axis=-1)
    append_example(str(folder), "b", rgb, example(1)[1], "cort")
    np.testing.assert_array_equal(tifffile.imread(folder / "images" / "well_A1_field_1.tif"),
                                  image)
    coco = read_training_folder(str(folder), str(tmp_path / "out"), split=(1, 1, 0))
    images = coco["train"]["images"] + coco["val"]["images"]
    assert sorted(im["cell_type"] for im in images) == ["astro", "cort"]
    anns = coco["train"]["annotations"] + coco["val"]["annotations"]
    assert sorted(a["area"] for a in anns) == [150.0, 150.0, 300.0, 300.0]
    assert {a["category_id"] for a in anns} == {2, 3}  # astro, cort
    # saving an image again replaces its entry
    label2 = label.copy()
    label2[label2 == 4] = 0
    append_example(str(folder), "b", rgb, label2, "shsy5y")
    assert (folder / CSV_NAME).read_text().splitlines() == [
        "image,cell_type", "well_A1_field_1.tif,astro", "b.tif,shsy5y"]


def test_what_it_did_not_write_is_never_replaced(tmp_path):
    image, label = example()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="not a training folder"):
        append_example(str(other), "a", image, label, "astro")
    folder = tmp_path / "cells"
    append_example(str(folder), "a", image, label, "astro")
    (folder / "labels" / "c.tif").write_bytes(b"hand-made")
    with pytest.raises(ValueError, match="not listed"):
        append_example(str(folder), "c", image, label, "astro")
    assert (folder / "labels" / "c.tif").read_bytes() == b"hand-made"
    with pytest.raises(ValueError, match="no cell"):
        append_example(str(folder), "d", image, np.zeros_like(label), "astro")
    with pytest.raises(ValueError, match="does not match"):
        append_example(str(folder), "d", image, label[:-1], "astro")
    with pytest.raises(ValueError, match="cell type"):
        append_example(str(folder), "d", image, label, "neuron")
    assert (folder / CSV_NAME).read_text().splitlines() == ["image,cell_type", "a.tif,astro"]


@pytest.mark.parametrize("csv, message", [
    ("image,type\na.tif,astro\n", "header"),
    ("image,cell_type\na.tif,neuron\n", "row 2: cell_type 'neuron'"),
    ("image,cell_type\na.tif,astro\na.tif,cort\n", "row 3: image 'a.tif' listed twice"),
    ("image,cell_type\nmissing.tif,astro\n", "missing.tif: image file not found"),
])
def test_bad_folder_is_one_error_naming_it(tmp_path, csv, message):
    folder = tmp_path / "cells"
    append_example(str(folder), "a", *example(), "astro")
    (folder / CSV_NAME).write_text(csv)
    with pytest.raises(ConversionError, match=message):
        read_training_folder(str(folder), str(tmp_path / "out"), split=(1, 0, 0))


def test_label_of_another_size_is_named(tmp_path):
    folder = tmp_path / "cells"
    append_example(str(folder), "a", *example(), "astro")
    tifffile.imwrite(folder / "labels" / "a.tif", np.ones((10, 10), np.uint16))
    with pytest.raises(ConversionError, match=r"labels/a.tif: label image \(10, 10\) does not"):
        read_training_folder(str(folder), str(tmp_path / "out"), split=(1, 0, 0))
