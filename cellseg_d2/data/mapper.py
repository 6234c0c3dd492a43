"""Dataset mapper: reads 8/16-bit microscopy images, keeps bitmask annotations, and applies
resize + flips, transposes (cells have no preferred orientation) and random crops.

Cell images carry hundreds of masks, so masks are decoded and transformed as one stack
(Detectron2's per-annotation path decodes, resizes and flips each mask separately, ~4 ms a mask).
"""
import copy

import detectron2.data.transforms as T
import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

from ..config import inference_scale
from .image_io import read_image
from .segmentation import annotation_rles


class TransposeTransform(T.Transform):
    """Swap rows and columns. With horizontal and vertical flips it gives all 8 orientations
    (rot90 = transpose + flip)."""

    def apply_image(self, img):
        return np.ascontiguousarray(np.swapaxes(img, 0, 1))

    def apply_coords(self, coords):
        return coords[:, ::-1].copy()

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation)

    def inverse(self):
        return self


class RandomTranspose(T.Augmentation):
    def __init__(self, prob: float = 0.5):
        super().__init__()
        self.prob = prob

    def get_transform(self, image):
        return TransposeTransform() if self._rand_range() < self.prob else T.NoOpTransform()


class RandomScale(T.Augmentation):
    """Resize by a factor drawn uniformly from [low, high] (Detectron2's ResizeScale fits a
    target box instead)."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return ScaleBy(self._rand_range(self.low, self.high)).get_transform(image)


class ScaleBy(T.Augmentation):
    """Resize by a fixed factor (rounded as ResizeShortestEdge rounds)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def get_transform(self, image):
        h, w = image.shape[:2]
        return T.ResizeTransform(h, w, max(1, int(h * self.factor + 0.5)),
                                 max(1, int(w * self.factor + 0.5)))


class ScaleFromNative(T.ResizeShortestEdge):
    """ResizeShortestEdge's random short side, as the factor it gives an image of the native
    short side (TEST.TILE.NATIVE_SHORT_SIDE): an image of any size is scaled like a native one,
    so its cells keep the size they have at test time (config.inference_scale)."""

    def __init__(self, short_edge_length, native_short_side: int, sample_style="choice"):
        super().__init__(short_edge_length, sample_style=sample_style)
        self.native_short_side = native_short_side

    def get_transform(self, image):
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        return ScaleBy(size / self.native_short_side).get_transform(image)


def build_augmentations(cfg, is_train: bool):
    """Test: resize by config.inference_scale (every path: evaluation, predict, tiles). Training: a
    random crop of the original image (INPUT.CROP, as in Detectron2's DatasetMapper: crop
    first, so masks are cut before they are resized), then a random scale factor in
    INPUT.TRAIN_SCALE (low, high), or else INPUT.MIN_SIZE_TRAIN as factors of the native short
    side (ScaleFromNative), then flips and, with INPUT.TRANSPOSE, a random transpose."""
    if not is_train:
        return [ScaleBy(inference_scale(cfg))]
    augs = []
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.TRAIN_SCALE:
        augs.append(RandomScale(*cfg.INPUT.TRAIN_SCALE))
    else:
        augs.append(ScaleFromNative(cfg.INPUT.MIN_SIZE_TRAIN, cfg.TEST.TILE.NATIVE_SHORT_SIDE,
                                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    if cfg.INPUT.VERTICAL_FLIP:
        augs.append(T.RandomFlip(horizontal=False, vertical=True))
    if cfg.INPUT.TRANSPOSE:
        augs.append(RandomTranspose())
    return augs


def decode_masks(annotations, height: int, width: int) -> np.ndarray:
    """(n, H, W) uint8 masks from COCO RLE / polygon segmentations."""
    rles = annotation_rles(annotations, height, width)
    if not rles:
        return np.zeros((0, height, width), np.uint8)
    # decode() gives (H, W, n) in Fortran order: the (n, H, W) view is free, a copy is not.
    return mask_util.decode(rles).transpose(2, 0, 1)


def transform_masks(masks: np.ndarray, transforms: T.TransformList) -> torch.Tensor:
    """Apply flips and resizes to a whole (n, H, W) stack; other transforms mask by mask."""
    t = torch.from_numpy(masks.transpose(0, 2, 1)).transpose(1, 2)  # same view, torch strides
    for tfm in transforms.transforms:
        if isinstance(tfm, T.HFlipTransform):
            t = t.flip(2)
        elif isinstance(tfm, T.VFlipTransform):
            t = t.flip(1)
        elif isinstance(tfm, TransposeTransform):
            t = t.transpose(1, 2)
        elif isinstance(tfm, T.CropTransform):
            t = t[:, tfm.y0:tfm.y0 + tfm.h, tfm.x0:tfm.x0 + tfm.w]
        elif isinstance(tfm, T.ResizeTransform):
            if not len(t):  # no cell here (e.g. a crop of background)
                t = t.new_zeros((0, tfm.new_h, tfm.new_w))
            elif (tfm.new_h, tfm.new_w) != tuple(t.shape[1:]):
                t = F.interpolate(t[None].float(), size=(tfm.new_h, tfm.new_w),
                                  mode="nearest")[0].to(torch.uint8)
        elif not isinstance(tfm, T.NoOpTransform):
            t = torch.from_numpy(np.stack([tfm.apply_segmentation(m) for m in t.numpy()])) \
                if len(t) else t
    return t.bool()


def inside_crop(anns, crop: T.CropTransform) -> list:
    """The annotations whose box meets the crop window (the others would be empty after it):
    a 256 px crop of a 704x520 image then decodes a sixth of the masks."""
    x0, y0, x1, y1 = crop.x0, crop.y0, crop.x0 + crop.w, crop.y0 + crop.h
    out = []
    for a in anns:
        bx, by, bw, bh = BoxMode.convert(a["bbox"], a.get("bbox_mode", BoxMode.XYWH_ABS),
                                         BoxMode.XYWH_ABS)
        # 1 px of slack: a polygon's float box can be a pixel short of its rasterised mask
        if bx - 1 < x1 and bx + bw + 1 > x0 and by - 1 < y1 and by + bh + 1 > y0:
            out.append(a)
    return out


class CellDatasetMapper(DatasetMapper):
    def __init__(self, cfg, is_train: bool = True):
        super().__init__(cfg, is_train)
        self.augmentations = T.AugmentationList(build_augmentations(cfg, is_train))

    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], self.image_format)
        utils.check_image_size(d, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        anns = [a for a in d.pop("annotations", []) if not a.get("iscrowd", 0)]
        if self.is_train and transforms.transforms and \
                isinstance(transforms.transforms[0], T.CropTransform):
            anns = inside_crop(anns, transforms.transforms[0])
        if self.is_train:
            d["instances"] = self.instances(anns, transforms, dataset_dict, image.shape[:2])
        return d

    @staticmethod
    def instances(anns, transforms, record, image_hw) -> Instances:
        masks = transform_masks(decode_masks(anns, record["height"], record["width"]), transforms)
        classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        keep = masks.flatten(1).any(dim=1) if len(masks) else torch.zeros(0, dtype=torch.bool)
        inst = Instances(image_hw)
        inst.gt_masks = BitMasks(masks[keep])
        # Tight boxes of the transformed masks (exact, unlike transformed annotation boxes).
        inst.gt_boxes = Boxes(inst.gt_masks.get_bounding_boxes().tensor)
        inst.gt_classes = classes[keep]
        return inst
