"""Kaggle Sartorius run-length encoding.

The competition's ``annotation`` column is a space separated list of ``start length`` pairs.
Starts are 1-indexed and pixels are numbered row-major (C order) over the image: the competition
page says column-major, but the released data is row-major.
"""
from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """A malformed run-length string; the message names where it came from."""


def _fail(where: str, msg: str):
    raise RLEError(f"{where}: {msg}" if where else msg)


def parse_runs(annotation: str, height: int, width: int, where: str = "") -> np.ndarray:
    """Validate ``annotation`` and return its runs as an (N, 2) int64 array of 0-indexed starts
    and lengths."""
    tokens = str(annotation).split()
    if not tokens:
        _fail(where, "empty annotation")
    if len(tokens) % 2:
        _fail(where, f"odd number of values ({len(tokens)}) in annotation")
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
        _fail(where, f"non-integer value {bad!r} in annotation")
    runs = values.reshape(-1, 2)
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    if (starts < 0).any():
        _fail(where, f"start {int(starts[starts < 0][0]) + 1} is below 1 (starts are 1-indexed)")
    if (lengths <= 0).any():
        _fail(where, f"run length {int(lengths[lengths <= 0][0])} is not positive")
    ends = starts + lengths
    if ends.max() > height * width:
        i = int(np.argmax(ends > height * width))
        _fail(where, f"run {int(starts[i]) + 1}+{int(lengths[i])} goes past the "
                     f"{height}x{width} image ({height * width} pixels)")
    if len(starts) > 1:
        gaps = starts[1:] - ends[:-1]
        if (gaps < 0).any():
            i = int(np.argmax(gaps < 0))
            kind = "unsorted" if starts[i + 1] < starts[i] else "overlapping"
            _fail(where, f"{kind} runs: {int(starts[i]) + 1}+{int(lengths[i])} then "
                         f"{int(starts[i + 1]) + 1}+{int(lengths[i + 1])}")
    return np.stack([starts, lengths], axis=1)


def rle_decode(annotation: str, height: int = 520, width: int = 704, where: str = "") -> np.ndarray:
    """Decode a Kaggle RLE string into a (height, width) uint8 mask of 0/1."""
    runs = parse_runs(annotation, height, width, where)
    flat = np.zeros(height * width + 1, dtype=np.int32)
    np.add.at(flat, runs[:, 0], 1)
    np.add.at(flat, runs[:, 0] + runs[:, 1], -1)
    return np.cumsum(flat[:-1]).astype(np.uint8).reshape(height, width)


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (nonzero = foreground) as a Kaggle RLE string (row-major, 1-indexed)."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    flat = np.concatenate([[0], (np.asarray(mask).ravel() != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts.tolist(), ends.tolist()))
