import cv2
import numpy as np
import pytest

from cellseg_d2.data.image_io import ImageReadError, read_image, to_uint8


def test_8bit_png_is_kept_and_made_3_channel(tmp_path):
    img = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    out = read_image(str(tmp_path / "a.png"))
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], img)
    np.testing.assert_array_equal(out[:, :, 2], img)


def test_16bit_tiff_percentile_scaling(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(20000, 21000, (50, 60)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.tif"), img)
    out = read_image(str(tmp_path / "a.tif"))
    assert out.shape == (50, 60, 3) and out.dtype == np.uint8
    # 0.5 / 99.5 percentiles map to 0 / 255: the narrow 16-bit range fills the 8-bit range.
    assert out.min() == 0 and out.max() == 255
    assert 100 < out.mean() < 155
    # Order is preserved.
    flat_in, flat_out = img.ravel(), out[:, :, 0].ravel()
    order = np.argsort(flat_in, kind="stable")
    assert (np.diff(flat_out[order].astype(int)) >= 0).all()


@pytest.mark.parametrize("pad", [0, 65535])
@pytest.mark.parametrize("share", [0.003, 0.3])
def test_padding_of_a_stitched_canvas_does_not_set_the_grey_levels(pad, share):
    """Fields on a canvas of one value (a stitched well's padding, or saturation): the fields
    get the grey levels they have alone, whether they fill 0.3% of the canvas (where the
    padding filled both percentiles and every field pixel came out 255) or 30%."""
    rng = np.random.default_rng(3)
    field = rng.integers(3000, 4000, (40, 50)).astype(np.uint16)
    side = int(round((field.size / share) ** 0.5))
    canvas = np.full((side, side), pad, np.uint16)
    canvas[5:45, 7:57] = field
    out = to_uint8(canvas)
    np.testing.assert_array_equal(out[5:45, 7:57], to_uint8(field))
    assert (out[canvas == pad] == (0 if pad == 0 else 255)).all()  # drawn, clipped


def test_a_saturated_tail_stays_in_the_percentiles():
    """2% of the pixels at 65535 next to a distribution that runs up to it (a phase-contrast
    halo clipped by the camera, as in Usiigaci's images): plain percentiles, as numpy's."""
    from cellseg_d2.data.image_io import value_counts, value_range

    rng = np.random.default_rng(4)
    img = rng.integers(20000, 65535, (100, 100)).astype(np.uint16)
    img.ravel()[rng.choice(img.size, 200, replace=False)] = 65535
    np.testing.assert_allclose(value_range(value_counts(img)), np.percentile(img, [0.5, 99.5]))


def test_an_image_of_two_values_keeps_both():
    img = np.zeros((10, 10), np.uint16)
    img[:, 5:] = 1000
    out = to_uint8(img)
    assert out[0, 0] == 0 and out[0, 9] == 255


def test_constant_image_does_not_divide_by_zero():
    assert to_uint8(np.full((4, 4), 7, np.uint16)).max() == 0


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(str(tmp_path / "bad.png"))
    with pytest.raises(ImageReadError, match="not found"):
        read_image(str(tmp_path / "missing.png"))


def test_16bit_rgba_drops_alpha_before_scaling(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(20000, 40000, (50, 60)).astype(np.uint16)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 65535)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    out = read_image(str(tmp_path / "rgba.png"))
    np.testing.assert_array_equal(out, read_image(str(tmp_path / "grey.png")))
    assert 100 < out.mean() < 155  # alpha inside the percentiles gave a mean of ~3


def test_float_tiff_ignores_non_finite_pixels(tmp_path):
    import tifffile

    rng = np.random.default_rng(2)
    img = rng.random((50, 60)).astype(np.float32)
    clean = read_image(str(_tiff(tmp_path / "clean.tif", img)))
    img[3, 4], img[10, 11], img[20, 30] = np.nan, np.inf, -np.inf
    out = read_image(str(_tiff(tmp_path / "nan.tif", img)))
    assert out[3, 4].max() == 0 and out[10, 11].max() == 0  # drawn black
    assert tifffile.imread(tmp_path / "nan.tif").dtype == np.float32
    finite = np.isfinite(img)
    assert np.abs(out[finite].astype(int) - clean[finite].astype(int)).max() <= 1
    assert 100 < out.mean() < 155


def _tiff(path, array, **kwargs):
    import tifffile

    tifffile.imwrite(path, array, **kwargs)
    return path


def test_multipage_tiff_segments_the_first_page_not_blank_and_says_so(tmp_path, capsys):
    rng = np.random.default_rng(3)
    cells = rng.integers(1000, 3000, (40, 50)).astype(np.uint16)
    stack = np.stack([np.zeros_like(cells), cells, cells // 2])
    path = _tiff(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = read_image(str(path))
    np.testing.assert_array_equal(out[:, :, 0], to_uint8(cells))
    err = capsys.readouterr().err
    assert "stack.tif: 3 pages" in err and "page 2, the first that is not blank" in err
    read_image(str(path))
    assert capsys.readouterr().err == ""  # once per file
    plain = _tiff(tmp_path / "first.tif", np.stack([cells, cells // 2]), photometric="minisblack")
    np.testing.assert_array_equal(read_image(str(plain))[:, :, 0], to_uint8(cells))
    assert "segmenting only page 1;" in capsys.readouterr().err


def test_other_channel_counts_take_the_first_and_planar_rgb_is_read(tmp_path, capsys):
    rng = np.random.default_rng(4)
    two = rng.integers(0, 255, (30, 40, 2)).astype(np.uint8)
    path = _tiff(tmp_path / "two.tif", two, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(str(path))[:, :, 0], two[:, :, 0])
    assert "two.tif: array of shape 30x40x2, not 1, 3 or 4 channels; segmenting its first" \
        in capsys.readouterr().err
    rgb = rng.integers(0, 255, (3, 30, 40)).astype(np.uint8)  # planar R, G, B
    path = _tiff(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    bgr = read_image(str(path))
    for c in range(3):
        np.testing.assert_array_equal(bgr[:, :, c], rgb[2 - c])


def test_lzw_tiff_and_a_name_that_is_not_utf8(tmp_path):
    import os

    rng = np.random.default_rng(5)
    img = rng.integers(0, 255, (30, 40)).astype(np.uint8)
    name = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.tif"))
    _tiff(name, img, compression="lzw")
    np.testing.assert_array_equal(read_image(name)[:, :, 1], img)
    with pytest.raises(ImageReadError, match="caf%E9.png: image file not found"):
        read_image(name[:-4] + ".png")
