import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "synthetic_R18_cpu.yaml")
# CPU-test scale: 160 px inputs (the tiny synthetic images' native size, so scale 1), 64-channel
# FPN and prototypes.
TINY = ["INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224", "INPUT.MIN_SIZE_TEST",
        "160", "INPUT.MAX_SIZE_TEST", "224", "TEST.TILE.NATIVE_SHORT_SIDE", "160",
        "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.YOLACT.PROTONET_CHANNELS", "64",
        "DATALOADER.NUM_WORKERS", "0"]
SHARED_DATA = Path(os.environ.get("CELLSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def small_synthetic_root(root: Path, images_per_type: int, seed: int, split) -> Path:
    """A data root whose synthetic/ holds small (160x224) generated images in the Kaggle layout,
    converted to COCO with ``split``."""
    from cellseg_d2.data.sartorius import convert_sartorius
    from cellseg_d2.data.synthetic import generate_dataset

    out = root / "synthetic"
    generate_dataset(str(out), images_per_type=images_per_type, height=160, width=224, seed=seed,
                     progress=False)
    convert_sartorius(str(out), str(out), split=split, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """2 small images per cell type in the Kaggle layout, converted to COCO (train 4 / val 2)."""
    return small_synthetic_root(tmp_path_factory.mktemp("data"), 2, seed=1, split=(4, 2, 0))


def tool(name, *args, env_root=None, check=True, umask=None):
    """Run tools/<name> as a user would; ``umask`` sets the child's umask."""
    env = dict(os.environ)
    if env_root:
        env["CELLSEG_DATASETS"] = str(env_root)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def trained(tiny_synthetic, tmp_path_factory):
    """A 12-iteration YOLACT trained on tiny_synthetic (a real train + evaluation)."""
    out = tmp_path_factory.mktemp("run")
    tool("train_net.py", "--config-file", CONFIG, *TINY, "SOLVER.MAX_ITER", 12,
         "SOLVER.WARMUP_ITERS", 4, "SOLVER.STEPS", "(10,)", "SOLVER.CHECKPOINT_PERIOD", 12,
         "TEST.EVAL_PERIOD", 12, "OUTPUT_DIR", out, env_root=tiny_synthetic)
    return out
