"""Images read a region at a time, so that a tile of a whole well costs a tile's memory.

A one-page TIFF (OME-TIFF included: its first series' full-resolution plane) of grey or
interleaved colour pixels is read lazily through tifffile's zarr interface: only the chunks
(TIFF tiles or strips) under a region are decoded; so is a grey OME-Zarr image's
full-resolution level. Any other image is decoded whole, once, by
image_io.read_unchanged, so every region of it is exactly the same as in-process. Regions
come in read_unchanged's conventions (colour in BGR order), and are turned into the model's
uint8 input with the scaling of the whole image (``scaling``: to_uint8's 0.5 / 99.5
percentiles, counted chunk by chunk), so every tile gets the same intensities.
"""
from __future__ import annotations

import numpy as np

from .image_io import (
    _TIFF_MAGIC,
    as_uint8_color,
    drop_alpha,
    is_ome_zarr,
    merge_counts,
    ome_zarr_plane,
    read_unchanged,
    value_counts,
    value_range,
)

BAND_ROWS = 1024  # rows per chunk when counting an image's values


class RegionReader:
    def __init__(self, path: str):
        self.path = path
        self._zarr = self._tif = self._whole = None
        self._rgb = False
        try:
            self._open_lazy(path)
        except Exception:  # noqa: BLE001 -- not a TIFF it can read by region: read whole below
            self.close()
        if self._zarr is None:
            self._whole = read_unchanged(path)
        self.shape = tuple(self._whole.shape if self._zarr is None else
                           self._zarr.shape[len(self._index):])

    def _open_lazy(self, path: str) -> None:
        if is_ome_zarr(path):
            level, index, channel = ome_zarr_plane(path)
            if channel is not None:
                raise ValueError("channels: read whole")
            self._zarr = level
            self._index = index[:-2]
            return
        with open(path, "rb") as f:
            if f.read(4) not in _TIFF_MAGIC:
                return
        import tifffile
        import zarr

        self._tif = tifffile.TiffFile(path)
        pages = [p for p in self._tif.pages if p.shape]
        series = self._tif.series[0]
        if len(pages) != 1 and not (self._tif.is_ome and len(series.pages) == 1):
            raise ValueError("several pages: read_unchanged chooses among them")
        page = series.pages[0] if self._tif.is_ome else pages[0]
        if page.axes not in ("YX", "YXS") or (page.axes == "YXS" and page.shape[2] not in (3, 4)):
            raise ValueError(f"axes {page.axes}")
        store = series.aszarr(level=0) if self._tif.is_ome else page.aszarr()
        self._zarr = zarr.open(store, mode="r")
        self._index = ()
        self._rgb = page.axes == "YXS" and str(page.photometric.name) == "RGB"

    @property
    def lazy(self) -> bool:
        return self._zarr is not None

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] in read_unchanged's dtype, channels and colour order."""
        if self._zarr is None:
            return self._whole[y0:y1, x0:x1]
        part = np.asarray(self._zarr[self._index + (slice(y0, y1), slice(x0, x1))])
        if self._rgb:
            part = part[:, :, [2, 1, 0, 3][:part.shape[2]]]  # BGR(A), as read_unchanged
        return part

    def scaling(self):
        """to_uint8's (lo, hi) for the whole image, counted band by band (None for 8-bit
        images, used as they are)."""
        if self.region(0, 1, 0, 1).dtype == np.uint8:
            return None
        parts = [value_counts(drop_alpha(self.region(y, min(y + BAND_ROWS, self.shape[0]),
                                                     0, self.shape[1])))
                 for y in range(0, self.shape[0], BAND_ROWS)]
        # no finite value at all: every pixel becomes lo, i.e. 0, as to_uint8 makes it
        return value_range(merge_counts(parts)) or (0.0, 1.0)

    def bgr_region(self, y0: int, y1: int, x0: int, x1: int, scaling) -> np.ndarray:
        """The region as read_image gives it for the whole image: HxWx3 uint8, BGR."""
        return as_uint8_color(self.region(y0, y1, x0, x1), "BGR", "BGR", scaling)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        self._tif = self._zarr = None


class ScaledRegions:
    """An image as the model's input, read a region at a time: ``view[y0:y1, x0:x1]`` is that
    region of read_image's HxWx3 uint8 BGR image (the whole image's intensity scaling, counted
    once), without the whole image in memory where the file can be read by region.
    CellSegmenter takes it where it takes an array."""

    def __init__(self, reader: RegionReader):
        self.reader = reader
        self.scaling = reader.scaling()
        self.shape = (*reader.shape[:2], 3)

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        return self.reader.bgr_region(y0, y1, x0, x1, self.scaling)
