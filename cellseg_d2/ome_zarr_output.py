"""OME-Zarr output (ome-zarr-py's layout and metadata; napari, Fiji's MoBIE and OMERO read
it): the image as the model saw it, as a multiscale pyramid, and the label image beside it as
``labels/cells`` with the same levels. Written chunk by chunk from functions that give a
region, so a whole well never needs to be in memory: level 0 from the sources, each further
level from the one below it (every second pixel: nearest-neighbour halving)."""
from __future__ import annotations

import math
import os
import shutil

import numpy as np


def pyramid_levels(shape: tuple, chunk: int) -> int:
    """Levels below full resolution: halving until the image fits one chunk."""
    side = max(shape)
    return max(1, math.ceil(math.log2(side / chunk))) if side > chunk else 1


def is_grey(image_block, shape: tuple, band: int) -> bool:
    """Whether an HxWx3 BGR image's three channels agree everywhere (read band by band)."""
    for y in range(0, shape[0], band):
        b = image_block(y, min(y + band, shape[0]), 0, shape[1])
        if not (np.array_equal(b[:, :, 0], b[:, :, 1]) and np.array_equal(b[:, :, 0], b[:, :, 2])):
            return False
    return True


def _write_levels(group, shape: tuple, dtype, block, channels: int, levels: int, chunk: int):
    """Arrays "0".."levels" in ``group``: "0" filled chunk by chunk from ``block(y0, y1, x0,
    x1)`` ((h, w) or (c, h, w)), each next one every second pixel of the one before."""
    lead = (channels,) if channels else ()
    arrays = []
    for k in range(levels + 1):
        h, w = (-(-shape[0] // 2 ** k), -(-shape[1] // 2 ** k))
        arrays.append(group.create_dataset(str(k), shape=lead + (h, w), dtype=dtype,
                                           chunks=lead + (chunk, chunk),
                                           dimension_separator="/"))
    for k, arr in enumerate(arrays):
        h, w = arr.shape[-2:]
        for y in range(0, h, chunk):
            for x in range(0, w, chunk):
                y1, x1 = min(y + chunk, h), min(x + chunk, w)
                if k == 0:
                    part = block(y, y1, x, x1)
                else:  # from the level below: its pixels (2y, 2x)
                    below = arrays[k - 1][..., 2 * y:2 * y1, 2 * x:2 * x1]
                    part = below[..., ::2, ::2]
                arr[..., y:y1, x:x1] = part


def write_ome_zarr(path: str, shape: tuple, image_block, label_block, label_dtype,
                   chunk: int = 1024) -> None:
    """``image_block(y0, y1, x0, x1)``: that region of the HxWx3 uint8 BGR image (stored grey
    where its channels agree, else as RGB planes); ``label_block``: of the label image
    (``label_dtype``). Written in a temporary folder, then renamed into place; the bytes
    depend only on the pixels (single-threaded Blosc: threaded Blosc lays its blocks out in the
    order they finish)."""
    import numcodecs
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    height, width = shape[:2]
    levels = pyramid_levels((height, width), chunk)
    grey = is_grey(image_block, (height, width), chunk)
    def datasets(channel: bool) -> list:
        return [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * channel + [float(2 ** k)] * 2}]}
            for k in range(levels + 1)]
    yx = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    axes = yx if grey else [{"name": "c", "type": "channel"}, *yx]

    def image_part(y0, y1, x0, x1):
        b = image_block(y0, y1, x0, x1)
        return b[:, :, 0] if grey else np.moveaxis(b[:, :, ::-1], -1, 0)

    tmp = f"{path}.{os.getpid()}.tmp"
    blosc_threads, numcodecs.blosc.use_threads = numcodecs.blosc.use_threads, False
    try:
        root = zarr.group(store=parse_url(tmp, mode="w").store)
        _write_levels(root, (height, width), np.uint8, image_part, 0 if grey else 3, levels,
                      chunk)
        write_multiscales_metadata(root, datasets(not grey), axes=axes, name="/")
        labels = root.create_group("labels")
        cells = labels.create_group("cells")
        _write_levels(cells, (height, width), label_dtype, label_block, 0, levels, chunk)
        write_multiscales_metadata(cells, datasets(False), axes=yx, name="cells")
        write_label_metadata(labels, "cells")
        os.replace(tmp, path)
    finally:
        numcodecs.blosc.use_threads = blosc_threads
        shutil.rmtree(tmp, ignore_errors=True)
