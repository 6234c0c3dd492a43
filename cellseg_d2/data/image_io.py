"""Image reading for phase-contrast microscopy: 8-bit PNG/TIF, 16-bit and float TIFF.

8-bit images are used as they are. Images with more than 8 bits (16-bit TIFF, float) are scaled
linearly so that their 0.5th percentile maps to 0 and the 99.5th to 255 (clipped), which keeps
the dim phase-contrast range instead of dividing by 65535 and getting a black image; alpha is
dropped first and non-finite pixels (NaN, inf) are left out of the percentiles and drawn black;
so is (left out, drawn clipped) a stitched well's padding: the lowest or highest value where
it alone fills more than 0.5% of the image, apart from the other values (a saturated tail,
contiguous with them, stays in) or filling both percentiles.
Grayscale is replicated to 3 channels, since Detectron2 models expect 3-channel input.

TIFFs are read with tifffile (any compression, planar or interleaved samples, several pages);
other formats with OpenCV. Files are read as bytes, so any file name works (OpenCV's own file
reading crashes on names that are not UTF-8). Of a multi-page TIFF the first page that is not
blank is segmented; of an image whose channels are not 1, 3 or 4, the first channel. Both are
said once per file, on stderr.
"""
from __future__ import annotations

import os
import sys

import cv2
import numpy as np

from ..utils import printable

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
PERCENTILES = (0.5, 99.5)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_warned = set()


class ImageReadError(OSError):
    pass


def warn_once(path: str, message: str) -> None:
    """One ``warning:`` line per file and message in this process (training reads every image
    many times)."""
    if (path, message) not in _warned:
        _warned.add((path, message))
        print(f"warning: {printable(path)}: {message}", file=sys.stderr, flush=True)


def value_counts(image: np.ndarray) -> tuple:
    """(sorted distinct finite values, their counts) of an array: what value_range needs, and
    what can be summed over an image's chunks (merge_counts) without holding it whole."""
    values = image.ravel()
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    return np.unique(values, return_counts=True)


def merge_counts(parts: list) -> tuple:
    if not parts:
        return np.zeros(0), np.zeros(0, np.int64)
    values = np.concatenate([v for v, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    merged, inverse = np.unique(values, return_inverse=True)
    return merged, np.bincount(inverse.ravel(), weights=counts, minlength=len(merged)) \
        .astype(np.int64)


def value_range(counts: tuple) -> tuple | None:
    """(lo, hi): the PERCENTILES of the values (linear between order statistics, as
    numpy.percentile), from value_counts; None for an image with no finite value. Padding is
    left out of them: see _padding."""
    values, n = counts
    if n.sum() == 0:
        return None
    lo, hi = _percentiles(values, n)
    padding = _padding(values, n, collapsed=hi <= lo)
    if padding:
        keep = np.ones(len(n), bool)
        keep[padding] = False
        lo, hi = _percentiles(values[keep], n[keep])
    return lo, (hi if hi > lo else lo + 1.0)


def _padding(values: np.ndarray, n: np.ndarray, collapsed: bool) -> list:
    """The ends (0, -1) of the sorted values that are a stitched well's padding: one value
    alone filling more than a percentile clips, apart from the other values (by more than 1%
    of their range) or filling both percentiles. Such a value would set the range by itself and
    squeeze the cells' grey levels (a well of 0.3% fields in zeros had every cell at 255, and
    no cell found). A saturated tail (65535 next to 65534, ...) is the image's own brightest
    pixels and stays in."""
    if len(n) < 3:
        return []
    found, v = [], values.astype(np.float64)
    for end, nearest, far in ((0, 1, -1), (len(n) - 1, -2, 0)):
        apart = abs(v[nearest] - v[end]) > 0.01 * abs(v[far] - v[nearest])
        if n[end] > PERCENTILES[0] / 100.0 * n.sum() and (apart or collapsed):
            found.append(end)
    return found if len(found) < len(n) - 1 else []


def _percentiles(values: np.ndarray, n: np.ndarray) -> tuple:
    total = int(n.sum())
    cumulative = np.cumsum(n)
    out = []
    for q in PERCENTILES:
        pos = q / 100.0 * (total - 1)
        i = int(np.floor(pos))
        a = float(values[np.searchsorted(cumulative, i, side="right")])
        b = float(values[np.searchsorted(cumulative, min(i + 1, total - 1), side="right")])
        out.append(a + (b - a) * (pos - i))
    return tuple(out)


def to_uint8(image: np.ndarray, scaling: tuple = None) -> np.ndarray:
    """Scale a grayscale or colour array of any dtype to uint8 (see module docstring);
    ``scaling``: the image's (lo, hi), computed once over a whole image read in parts."""
    if image.dtype == np.uint8:
        return image
    if scaling is None:
        scaling = value_range(value_counts(image))
    if scaling is None:
        return np.zeros(image.shape, np.uint8)
    lo, hi = scaling
    img = image.astype(np.float32)
    img[~np.isfinite(img)] = lo
    return np.clip((img - np.float32(lo)) * np.float32(255.0 / (hi - lo)), 0, 255).round() \
        .astype(np.uint8)


def _read_tiff(path: str, data: bytes) -> np.ndarray:
    """The page to segment, as (H, W) or (H, W, C) with colour in BGR order."""
    import io

    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        pages = [p for p in tif.pages if p.shape]
        if not pages:
            raise ValueError("no image in the file")
        chosen, image = 0, None
        for k, page in enumerate(pages):
            image = page.asarray()
            if len(pages) == 1 or image.min() != image.max():
                chosen = k
                break
        else:  # every page blank: the first
            chosen, image = 0, pages[0].asarray()
        page = pages[chosen]
        if page.axes.startswith("S"):  # planar samples -> interleaved
            image = np.moveaxis(image, 0, -1)
        if image.ndim == 3 and str(page.photometric.name) == "RGB" and image.shape[2] in (3, 4):
            image = image[:, :, [2, 1, 0, 3][:image.shape[2]]]  # BGR(A), as OpenCV reads it
    if len(pages) > 1:
        why = ", the first that is not blank" if chosen else ""
        warn_once(path, f"{len(pages)} pages (a stack?): segmenting only page {chosen + 1}{why}; "
                        f"save each page as its own file to segment the others")
    return image


def is_ome_zarr(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".zattrs"))


def ome_zarr_plane(path: str):
    """The full-resolution level of an OME-Zarr image as a lazy zarr array, and how to make it
    (H, W) or (H, W, C) in BGR order: (array, index of the plane, channel axis or None)."""
    import json

    import zarr

    with open(os.path.join(path, ".zattrs")) as f:
        multiscales = json.load(f).get("multiscales")
    if not multiscales:
        raise ValueError("no 'multiscales' in .zattrs: not an OME-Zarr image")
    level = zarr.open(os.path.join(path, multiscales[0]["datasets"][0]["path"]), mode="r")
    axes = [a["name"] if isinstance(a, dict) else a for a in multiscales[0].get("axes", [])] \
        or ["t", "c", "z", "y", "x"][-level.ndim:]
    if axes[-2:] != ["y", "x"]:
        raise ValueError(f"axes {axes}: y, x last expected")
    colour = "c" in axes and level.shape[axes.index("c")] > 1
    index = tuple(slice(None) if a in ("y", "x") or (a == "c" and colour) else 0 for a in axes)
    if any(level.shape[i] > 1 for i, a in enumerate(axes) if a not in ("y", "x", "c")):
        warn_once(path, f"shape {level.shape} (axes {''.join(axes)}): segmenting the first "
                        f"plane")
    return level, index, axes.index("c") if colour else None


def _ome_zarr_image(path: str, rows=slice(None), cols=slice(None)) -> np.ndarray:
    level, index, channel = ome_zarr_plane(path)
    index = index[:-2] + (rows, cols)
    image = np.asarray(level[index])  # the axes left: (c,) y, x
    if channel is not None:
        image = np.moveaxis(image, 0, -1)
        if image.shape[2] in (3, 4):
            image = image[:, :, [2, 1, 0, 3][:image.shape[2]]]  # RGB(A) -> BGR(A)
    return image


def read_unchanged(path: str) -> np.ndarray:
    """The 2-D image stored in ``path`` (its own dtype and channels; of several pages, the one
    read_image segments; an OME-Zarr folder's full-resolution plane); one ImageReadError naming
    the file if it is missing or unreadable."""
    name = printable(path)
    if is_ome_zarr(path):
        try:
            image = _ome_zarr_image(path)
        except Exception as e:  # zarr raises many types for damaged stores
            raise ImageReadError(f"{name}: not a readable OME-Zarr image ({e})") from None
        return _check_channels(path, image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1
                               else image)
    if not os.path.isfile(path):
        raise ImageReadError(f"{name}: image file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(f"{name}: cannot be read ({e.strerror})") from None
    image = None
    if data[:4] in _TIFF_MAGIC:
        try:
            image = _read_tiff(path, data)
        except Exception as e:  # tifffile and its codecs raise many types for damaged files
            raise ImageReadError(f"{name}: not a readable TIFF ({e})") from None
    elif data:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"{name}: not a readable image (PNG/TIFF/JPEG expected)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return _check_channels(path, image)


def _check_channels(path: str, image: np.ndarray) -> np.ndarray:
    name = printable(path)
    if image.ndim > 3 or (image.ndim == 3 and image.shape[2] not in (3, 4)) or image.ndim < 2:
        shape = "x".join(map(str, image.shape))
        if image.ndim < 2 or min(image.shape[:2]) == 0:
            raise ImageReadError(f"{name}: not a 2-D image (shape {shape})")
        warn_once(path, f"array of shape {shape}, not 1, 3 or 4 channels; segmenting its "
                        f"first channel")
        image = image.reshape(*image.shape[:2], -1)[:, :, 0]
    return image


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """Read ``path`` as an HxWx3 uint8 array in ``format`` ("BGR" or "RGB")."""
    return as_uint8_color(read_unchanged(path), format)


def as_uint8_color(image: np.ndarray, format: str = "BGR", order: str = "BGR",
                   scaling: tuple = None) -> np.ndarray:
    """An (H, W) or (H, W, 3|4) array of any dtype, colour in ``order`` (read_unchanged's is
    BGR; napari's layers hold RGB), as read_image returns it: HxWx3 uint8 in ``format``
    (``scaling``: to_uint8's, for a part of a larger image)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4) and order == "RGB":
        image = image[:, :, [2, 1, 0, 3][:image.shape[2]]]
    image = drop_alpha(image)
    image = to_uint8(image, scaling)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if format == "RGB":
        image = image[:, :, ::-1]
    elif format != "BGR":
        raise ValueError(f"unsupported image format {format!r} (BGR or RGB)")
    return np.ascontiguousarray(image)


def drop_alpha(image: np.ndarray) -> np.ndarray:
    """Alpha is not part of the picture, nor of its percentiles."""
    return image[:, :, :3] if image.ndim == 3 and image.shape[2] == 4 else image


def decoded_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file after decoding all of it, so that a truncated or
    corrupt file is caught here rather than at training time."""
    image = read_unchanged(path)
    return image.shape[0], image.shape[1]
