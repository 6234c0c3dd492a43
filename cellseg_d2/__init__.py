"""cellseg_d2: YOLACT cell instance segmentation on Detectron2.

Importing the package registers the datasets (cellseg_d2.data), the YOLACT
meta-architecture and its backbone (cellseg_d2.modeling).
"""
from . import data, modeling  # noqa: F401  (registration side effects)
from .config import add_yolact_config

__all__ = ["add_yolact_config"]
