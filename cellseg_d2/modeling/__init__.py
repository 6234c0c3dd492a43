from .backbone import build_yolact_resnet_fpn_backbone
from .yolact import Yolact

__all__ = ["Yolact", "build_yolact_resnet_fpn_backbone"]
