"""tools/predict.py --cluster: a Dask LocalCluster gives the in-process outputs, file for file,
with a blank, a corrupt and a several-tile image among the inputs, and a worker killed
mid-run loses nothing."""
import contextlib
import os
import shutil

import cv2
import numpy as np
import pytest
import tifffile

from .conftest import tool

pytest.importorskip("distributed")

RECORD = ".cellseg_d2_run.json"  # the run record: files' mtimes, so it differs between runs


@pytest.fixture(scope="module")
def mixed_inputs(tiny_synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    images = sorted((tiny_synthetic / "synthetic" / "train").glob("*.png"))
    for p in images[:3]:
        shutil.copy(p, folder / p.name)
    cv2.imwrite(str(folder / "blank.png"), np.full((160, 224), 128, np.uint8))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    tiles = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in images[:4]]
    well = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:4])])  # 320 x 448: 4+ tiles
    cv2.imwrite(str(folder / "well.png"), well)
    # an OME-Zarr image among the files (a folder)
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    write_image(tiles[3], zarr.group(store=parse_url(str(folder / "field.zarr"), mode="w").store),
                axes="yx", storage_options={"chunks": (64, 64)})
    # the same well as a 16-bit tiled TIFF: read by region on the workers, scaled as a whole
    tifffile.imwrite(folder / "well16.tif", well.astype(np.uint16) * 37 + 1000, tile=(64, 64),
                     compression="zlib")
    return folder


def outputs(folder):
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return {str(f): (folder / f).read_bytes() for f in files if f.name != RECORD}


def predict(trained, inputs, out, *extra):
    return tool("predict.py", "--config-file", trained / "config.yaml", "--weights",
                trained / "model_final.pth", "--input", inputs, "--output", out,
                "--score-thresh", 0.05, "--save-tif", "--save-rois", "--save-png", "--save-zarr",
                *extra,
                check=False)


def test_cluster_outputs_equal_in_process(trained, mixed_inputs, tmp_path):
    local = predict(trained, mixed_inputs, tmp_path / "in_process", "--threads", 1)
    assert local.returncode == 3, local.stderr  # corrupt.png skipped
    cluster = predict(trained, mixed_inputs, tmp_path / "cluster", "--cluster", "local:2")
    assert cluster.returncode == 3, cluster.stderr
    a, b = outputs(tmp_path / "in_process"), outputs(tmp_path / "cluster")
    assert sorted(a) == sorted(b)
    assert "labels/well.tif" in a and "labels/well16.tif" in a and "skipped.csv" in a
    assert "labels/field.tif" in a
    assert [f for f in a if a[f] != b[f]] == []
    assert b"corrupt.png" in a["skipped.csv"]
    label = tifffile.imread(tmp_path / "in_process" / "labels" / "well16.tif")
    assert label.max() > 0, "no cell compared"
    # The OME-Zarr labels, read back by ome-zarr-py, are the label TIFF
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(tmp_path / "cluster" / "zarr" / "well16.zarr")))())
    image, cells = nodes[0], [n for n in nodes if "labels" in str(n.zarr)][-1]
    assert image.data[0].shape == label.shape
    np.testing.assert_array_equal(np.asarray(cells.data[0]), label)


def test_bad_cluster_address_is_one_line(trained, mixed_inputs, tmp_path):
    proc = predict(trained, mixed_inputs, tmp_path / "out", "--cluster", "local:zero")
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    assert "local:N" in proc.stderr and not (tmp_path / "out").exists()


def test_worker_killed_mid_run_loses_nothing(trained, mixed_inputs, tmp_path):
    """One of two workers is killed once every task is submitted: Dask runs its tasks again
    on the other (or on its restarted self) and the outputs are the in-process ones."""
    from dask.distributed import Client, LocalCluster
    from detectron2.data import MetadataCatalog

    from cellseg_d2.cluster import ClusterSegmentation
    from cellseg_d2.config import load_cfg
    from cellseg_d2.data.image_io import read_image
    from cellseg_d2.predict import list_images, predict_files
    from cellseg_d2.tiling import CellSegmenter

    class KillAfterSubmit(ClusterSegmentation):
        def submit(self, files):
            super().submit(files)
            pids = self.client.run(os.getpid)
            victim = sorted(pids)[0]
            with contextlib.suppress(Exception):  # the worker dies answering
                self.client.run(os._exit, 1, workers=[victim])
            self.killed = victim

    cfg = load_cfg(str(trained / "config.yaml"), weights=str(trained / "model_final.pth"))
    cfg.TEST.INSTANCE_SCORE_THRESH = 0.05
    segmenter = CellSegmenter(None, cfg, 0.05)
    files = list_images(str(mixed_inputs))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        cluster = KillAfterSubmit(client, segmenter, 1)
        predict_files(segmenter, files, read_image, str(tmp_path / "cluster"),
                      MetadataCatalog.get(cfg.DATASETS.TEST[0]),
                      save=("tif", "rois", "png", "zarr"),
                      progress=False, cluster=cluster)
        assert cluster.killed
    local = predict(trained, mixed_inputs, tmp_path / "in_process", "--threads", 1)
    assert local.returncode == 3
    a, b = outputs(tmp_path / "in_process"), outputs(tmp_path / "cluster")
    assert sorted(a) == sorted(b) and [f for f in a if a[f] != b[f]] == []
