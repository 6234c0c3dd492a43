import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CELLSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """2 small images per cell type in the Kaggle layout, converted to COCO (train 4 / val 2)."""
    from cellseg_d2.data.sartorius import convert_sartorius
    from cellseg_d2.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("data")
    out = root / "synthetic"
    generate_dataset(str(out), images_per_type=2, height=160, width=224, seed=1, progress=False)
    convert_sartorius(str(out), str(out), split=(4, 2, 0), progress=False)
    return root
