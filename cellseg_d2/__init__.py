"""cellseg_d2: YOLACT cell instance segmentation on Detectron2.

Importing the package registers the datasets (cellseg_d2.data) and the YOLACT
meta-architecture (cellseg_d2.modeling).
"""
from . import data  # noqa: F401  (registers datasets)
