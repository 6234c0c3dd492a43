"""Image reading for phase-contrast microscopy: 8-bit PNG/TIF and 16-bit TIFF.

8-bit images are used as they are. Images with more than 8 bits (16-bit TIFF, float) are scaled
linearly so that their 0.5th percentile maps to 0 and the 99.5th to 255 (clipped), which keeps
the dim phase-contrast range instead of dividing by 65535 and getting a black image.
Grayscale is replicated to 3 channels, since Detectron2 models expect 3-channel input.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
PERCENTILES = (0.5, 99.5)


class ImageReadError(OSError):
    pass


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale a grayscale or colour array of any dtype to uint8 (see module docstring)."""
    if image.dtype == np.uint8:
        return image
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, PERCENTILES)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)


def read_unchanged(path: str) -> np.ndarray:
    """The array stored in ``path`` (its own dtype and channels); one ImageReadError naming the
    file if it is missing or unreadable."""
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (PNG/TIFF/JPEG expected)")
    return image


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """Read ``path`` as an HxWx3 uint8 array in ``format`` ("BGR" or "RGB")."""
    image = to_uint8(read_unchanged(path))
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if format == "RGB":
        image = image[:, :, ::-1]
    elif format != "BGR":
        raise ValueError(f"unsupported image format {format!r} (BGR or RGB)")
    return np.ascontiguousarray(image)


def decoded_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file after decoding all of it, so that a truncated or
    corrupt file is caught here rather than at training time."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            width, height = im.size
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except Exception as e:  # PIL raises several types for unreadable files
        raise ImageReadError(f"{path}: not a readable image ({e})") from None
    return height, width
