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
import functools
import hashlib
import logging
import pickle
import uuid
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

    @functools.cached_property  # every task looks its worker's segmenter up by it
    def key(self) -> str:
        return hashlib.sha1(pickle.dumps((self.cfg.dump(), self.score_thresh, self.diameter,
                                          self.threads))).hexdigest()


def worker_segmenter(spec: Spec):
    """This worker process's segmenter for ``spec``, built on first use."""
    segmenter = _SEGMENTERS.get(spec.key)
    if segmenter is None:
        import torch

        from .tiling import CellSegmenter
        from .utils import keep_freed_memory

        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: every tile's tensors
        # would go back to the OS and fault in again (a one-worker cluster ran 1.45x slower
        # than in-process without this; BENCHMARKS "Dask cluster")
        keep_freed_memory()
        torch.set_num_threads(spec.threads)
        segmenter = CellSegmenter.from_config(spec.cfg, spec.score_thresh, spec.diameter)
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
    """Submits images' tasks ahead of the client (``submit``: the first ``ahead`` images; each
    ``cells_of`` one more), and hands each image's cells back in input order (``cells_of``,
    predict.predict_files' source of cells). Keeping a bounded number of images in flight
    keeps every worker busy without piling a whole plate's results up in their memory."""

    def __init__(self, client, segmenter, threads: int = 1, ahead: int = None):
        self.client = client
        self.segmenter = segmenter  # the client's: tile plans and stitching, its model unused
        self.spec = Spec(segmenter.cfg, segmenter.score_thresh, segmenter.diameter, threads)
        workers = len(client.scheduler_info().get("workers", {})) or 1
        self.ahead = ahead or max(8, 4 * workers)
        self.run = uuid.uuid4().hex[:12]  # task keys unique on a scheduler shared by runs
        self.files, self.pending, self._spec = [], {}, None

    def submit(self, files: list) -> None:
        self.files = list(files)
        self._spec = self.client.scatter(self.spec, broadcast=True)
        for i in range(min(self.ahead, len(self.files))):
            self._submit(i)

    def _submit(self, i: int) -> None:
        from .data.regions import RegionReader

        path, seg = self.files[i], self.segmenter
        try:
            reader = RegionReader(path)
            try:
                height, width = reader.shape[:2]
                scale = None if seg.diameter in (None, "auto") else seg.scale_for(seg.diameter)
                tiles = None if seg.diameter == "auto" else seg.plan(height, width, scale)
                # once per image: every tile the same intensities
                scaling = None if tiles is None else reader.scaling()
            finally:
                reader.close()
        except Exception as e:  # noqa: BLE001 -- this image's error, raised by cells_of
            self.pending[i] = ("error", e)
            return
        key = f"cellseg-{self.run}-{i}"
        if tiles is None:  # one task: the whole image (and --diameter auto's two passes)
            self.pending[i] = ("whole", self.client.submit(segment_whole, self._spec, path,
                                                           key=f"{key}-whole", pure=False))
            return
        diameter = float(seg.diameter) if scale is not None else seg.model_diameter or None
        self.pending[i] = ("tiles", diameter, [
            self.client.submit(segment_tile, self._spec, path, x, y, side, t, scale, scaling,
                               key=f"{key}-tile{t}", pure=False)
            for t, (x, y, side) in enumerate(tiles)])

    def cells_of(self, index: int) -> tuple:
        """(cells, diameter) of the index-th file; raises what reading or segmenting it
        raised."""
        if index + self.ahead < len(self.files):
            self._submit(index + self.ahead)
        if index not in self.pending:
            self._submit(index)
        entry = self.pending.pop(index)
        if entry[0] == "error":
            raise entry[1]
        if entry[0] == "whole":
            return entry[1].result()
        _, diameter, futures = entry
        return self.segmenter.stitch(self.client.gather(futures)), diameter
