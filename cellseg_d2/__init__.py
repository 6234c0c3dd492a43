"""cellseg_d2: YOLACT cell instance segmentation on Detectron2.

Importing the package registers the datasets (cellseg_d2.data), the YOLACT
meta-architecture and its backbone (cellseg_d2.modeling).
"""
import warnings

# Known-harmless warnings from Detectron2/fvcore internals that would otherwise clutter every
# tool's output (anchor grids via torch.meshgrid; flipped read-only views turned into tensors).
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

from . import data, modeling  # noqa: E402, F401  (registration side effects)
from .config import add_yolact_config  # noqa: E402

__all__ = ["add_yolact_config"]
