from .datasets import register_all
from .image_io import read_image
from .livecell import LIVECELL_CLASSES
from .rle import RLEError, rle_decode, rle_encode
from .sartorius import SARTORIUS_CLASSES, convert_sartorius

register_all()

__all__ = ["LIVECELL_CLASSES", "RLEError", "SARTORIUS_CLASSES", "convert_sartorius", "read_image",
           "register_all", "rle_decode", "rle_encode"]
