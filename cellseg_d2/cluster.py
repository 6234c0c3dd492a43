"""Prediction on a Dask distributed cluster (tools/predict.py --cluster ADDRESS).

The client plans the work and writes every output; workers only segment. An image that fits
one tile is one task (its whole CellSegmenter call, --diameter auto included); a larger image
is one task per tile (CellSegmenter.tile_cells), and the client stitches the tiles' cells with
CellSegmenter.stitch, so a giant well uses every worker and the cells are exactly those of the
in-process run. Each worker process loads the model once (a module-level cache keyed by the
configuration). A worker that dies has its tasks run again elsewhere (Dask's own rule); a task
that raises is one skipped image, as in-process.

Outputs equal the in-process run's byte for byte when both run the network with the same
number of torch threads (--threads; a worker uses 1 by default): across thread counts float32
scores may differ in their last bit.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
from dataclasses import dataclass

LOCAL = "local:"
_SEGMENTERS = {}  # in a worker process: spec key -> CellSegmenter


class ClusterError(RuntimeError):
    pass


def local_workers(address: str) -> int | None:
    """N of "local:N" (None for a scheduler address); ClusterError for a bad N."""
    if not address.startswith(LOCAL):
        return None
    text = address[len(LOCAL):]
    if not text.isdigit() or int(text) < 1:
        raise ClusterError(f"--cluster {address}: local:N takes a number of workers >= 1")
    return int(text)


@contextlib.contextmanager
def connect(address: str):
    """A Client of ``address``: local:N starts a LocalCluster of N single-threaded worker
    processes here (closed on exit); anything else is an existing scheduler's address."""
    from dask.distributed import Client, LocalCluster

    n = local_workers(address)
    if n is not None:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout="30s")
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"--cluster {address}: no scheduler reachable ({e})") from None
    with client:
        yield client


@dataclass(frozen=True)
class Spec:
    """What a worker needs to build the client's segmenter."""
    cfg: object  # a frozen Detectron2 CfgNode (pickles)
    score_thresh: float
    diameter: object  # None, a number of px or "auto"
    threads: int

    @property
    def key(self) -> str:
        return hashlib.sha1(pickle.dumps((self.cfg.dump(), self.score_thresh, self.diameter,
                                          self.threads))).hexdigest()


def worker_segmenter(spec: Spec):
    """This worker process's segmenter for ``spec``, built on first use."""
    segmenter = _SEGMENTERS.get(spec.key)
    if segmenter is None:
        import torch

        from .predict import CellPredictor
        from .tiling import CellSegmenter

        torch.set_num_threads(spec.threads)
        segmenter = CellSegmenter(CellPredictor(spec.cfg), spec.cfg, spec.score_thresh,
                                  diameter=spec.diameter)
        _SEGMENTERS[spec.key] = segmenter
    return segmenter


def segment_whole(spec: Spec, path: str) -> tuple:
    """Task: (cells, diameter segmented for) of one image."""
    from .data.image_io import read_image

    segmenter = worker_segmenter(spec)
    cells = segmenter(read_image(path))
    return cells, segmenter.last_diameter


_READERS = {}  # in a worker process: the last image's RegionReader


def region_reader(path: str):
    from .data.regions import RegionReader

    if path not in _READERS:
        for old in _READERS.values():
            old.close()
        _READERS.clear()
        _READERS[path] = RegionReader(path)
    return _READERS[path]


def segment_tile(spec: Spec, path: str, x: int, y: int, side: int, t: int, scale,
                 scaling) -> tuple:
    """Task: (cells, depths) of one tile of an image, read by region (data.regions: a TIFF's
    tile costs a tile's memory) with the whole image's intensity ``scaling``."""
    reader = region_reader(path)
    height, width = reader.shape[:2]
    tile = reader.bgr_region(y, min(y + side, height), x, min(x + side, width), scaling)
    return worker_segmenter(spec).tile_cells(tile, x, y, t, (height, width), scale)


class ClusterSegmentation:
    """Submits every image's tasks up front (``submit``), then hands each image's cells back in
    input order (``cells_of``, predict.predict_files' source of cells)."""

    def __init__(self, client, segmenter, threads: int = 1):
        self.client = client
        self.segmenter = segmenter  # the client's: tile plans and stitching, its model unused
        self.spec = Spec(segmenter.cfg, segmenter.score_thresh, segmenter.diameter, threads)
        self.pending = {}

    def submit(self, files: list) -> None:
        from .data.regions import RegionReader

        spec = self.client.scatter(self.spec, broadcast=True)
        for i, path in enumerate(files):
            try:
                reader = RegionReader(path)
                height, width = reader.shape[:2]
            except Exception:  # noqa: BLE001 -- reported when its outputs are made, as in-process
                continue
            scale = None
            if self.segmenter.diameter not in (None, "auto"):
                scale = self.segmenter.scale_for(self.segmenter.diameter)
            tiles = None if self.segmenter.diameter == "auto" else \
                self.segmenter.plan(height, width, scale)
            if tiles is None:  # one task: the whole image (and --diameter auto's two passes)
                reader.close()
                self.pending[i] = ("whole", self.client.submit(
                    segment_whole, spec, path, key=f"cellseg-{i}-whole", pure=False))
            else:
                scaling = reader.scaling()  # once per image: every tile the same intensities
                reader.close()
                diameter = self.segmenter.diameter if scale is not None else \
                    self.segmenter.model_diameter or None
                self.pending[i] = ("tiles", diameter, [self.client.submit(
                    segment_tile, spec, path, x, y, side, t, scale, scaling,
                    key=f"cellseg-{i}-tile{t}", pure=False) for t, (x, y, side) in enumerate(tiles)])

    def cells_of(self, index: int) -> tuple:
        """(cells, diameter) of the index-th file; raises what its task raised."""
        entry = self.pending.pop(index)
        if entry[0] == "whole":
            return entry[1].result()
        _, diameter, futures = entry
        return self.segmenter.stitch(self.client.gather(futures)), diameter
