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


def test_constant_image_does_not_divide_by_zero():
    assert to_uint8(np.full((4, 4), 7, np.uint16)).max() == 0


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(str(tmp_path / "bad.png"))
    with pytest.raises(ImageReadError, match="not found"):
        read_image(str(tmp_path / "missing.png"))
