"""YOLACT (Bolya et al., ICCV 2019) as a Detectron2 meta-architecture."""

import contextlib
import math

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_anchor_generator, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks
from torch import nn

from .head import YolactHead
from .inference import fast_nms
from .loss import box_loss, mask_loss, ohem_class_loss, semantic_loss
from .masks import paste_masks
from .matching import match_anchors
from .protonet import ProtoNet


@META_ARCH_REGISTRY.register()
class Yolact(nn.Module):
    """Backbone + FPN (P3-P7), ProtoNet on P3, a shared head predicting class, box and mask
    coefficients per anchor; masks are sigmoid(prototypes x coefficients), cropped to the box.

    Input/output follow Detectron2's conventions: a list of dicts with "image" (CHW, in
    ``INPUT.FORMAT``), optional "height"/"width" (output size) and, in training, "instances"
    with gt_boxes, gt_classes, gt_masks. Inference returns [{"instances": Instances}] with
    pred_boxes, scores, pred_classes and pred_masks (bool, at the output size).
    """

    def __init__(self, cfg):
        super().__init__()
        y = cfg.MODEL.YOLACT
        self.backbone = build_backbone(cfg)
        self.in_features = list(y.IN_FEATURES)
        self.proto_feature = y.PROTO_FEATURE
        shapes = self.backbone.output_shape()
        feature_shapes = [shapes[f] for f in self.in_features]
        self.anchor_generator = build_anchor_generator(cfg, feature_shapes)
        num_anchors = self.anchor_generator.num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR must give every level the same number of "
                             f"anchors per location for a shared head, got {num_anchors}")
        channels = feature_shapes[0].channels
        self.num_classes = y.NUM_CLASSES
        self.head = YolactHead(channels, num_anchors[0], y.NUM_CLASSES, y.NUM_PROTOTYPES,
                               y.NUM_HEAD_CONVS, y.HEAD_NORM)
        proto_in = shapes[self.proto_feature]
        self.protonet = ProtoNet(proto_in.channels, y.PROTONET_CHANNELS, y.NUM_PROTOTYPES,
                                 y.PROTONET_NORM, y.PROTO_ACTIVATION)
        self.proto_stride = proto_in.stride / 2
        self.semantic_head = Conv2d(proto_in.channels, y.NUM_CLASSES, 1)
        self.box2box_transform = Box2BoxTransform(weights=tuple(y.BBOX_REG_WEIGHTS))
        self.pos_iou, self.neg_iou = y.POS_IOU, y.NEG_IOU
        self.negpos_ratio = y.NEGPOS_RATIO
        self.smooth_l1_beta = y.SMOOTH_L1_BETA
        self.loss_weights = {"loss_cls": y.CLASS_LOSS_WEIGHT, "loss_box": y.BOX_LOSS_WEIGHT,
                             "loss_mask": y.MASK_LOSS_WEIGHT, "loss_semseg": y.SEMSEG_LOSS_WEIGHT}
        self.masks_to_train = y.MASKS_TO_TRAIN
        self.score_thresh = y.SCORE_THRESH_TEST
        self.nms_thresh = y.NMS_THRESH_TEST
        self.topk_candidates = y.TOPK_CANDIDATES_TEST
        self.mask_thresh = y.MASK_THRESH_TEST
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE
        self.size_divisibility = y.SIZE_DIVISIBILITY
        self.input_format = cfg.INPUT.FORMAT
        self.stage_timer = None
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def _stage(self, name: str):
        """Timing hook for tools/benchmark.py: ``self.stage_timer(name)`` when set."""
        return self.stage_timer(name) if self.stage_timer else contextlib.nullcontext()

    def forward(self, batched_inputs: list[dict]):
        with self._stage("backbone+fpn"):
            images = self.preprocess_image(batched_inputs)
            features = self.backbone(images.tensor)
            feats = [features[f] for f in self.in_features]
        with self._stage("protonet"):
            proto = self.protonet(features[self.proto_feature])
        with self._stage("head"):
            logits, deltas, coefs = self.head(feats)
            anchors = Boxes.cat(self.anchor_generator(feats))
            logits = cat([permute_to_N_HWA_K(x, self.num_classes + 1) for x in logits], dim=1)
            deltas = cat([permute_to_N_HWA_K(x, 4) for x in deltas], dim=1)
            coefs = cat([permute_to_N_HWA_K(x, proto.shape[1]) for x in coefs], dim=1)
        if self.training:
            gt = [x["instances"].to(self.device) for x in batched_inputs]
            seg_logits = self.semantic_head(features[self.proto_feature])
            grid = [(f.shape[-2], f.shape[-1], s)
                    for f, s in zip(feats, self.anchor_generator.strides)]
            return self.losses(images, anchors, grid, logits, deltas, coefs, proto, seg_logits,
                               gt)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            height = batched_inputs[i].get("height", image_size[0])
            width = batched_inputs[i].get("width", image_size[1])
            results.append({"instances": self.inference_single(
                anchors, logits[i], deltas[i], coefs[i], proto[i], image_size, (height, width))})
        return results

    # ---------------------------------------------------------------- training
    def _gt_masks(self, inst: Instances, padded_hw, stride: int) -> torch.Tensor:
        """Ground-truth masks as (n, H/stride, W/stride) coverage fractions over the padded
        image: each pixel is the share of its stride x stride block inside the cell.

        Soft targets keep sub-pixel edges: prototypes are at stride 4 and a cell is ~15 px
        across (binarised targets cap mask AP well below the fractions: README, Model).
        Block sums are taken only inside each cell's box (widened by a pixel and rounded out
        to the block grid), so the work follows the cells, not n x H x W."""
        masks = inst.gt_masks
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, *inst.image_size)
        t = masks.tensor.to(self.device)
        n, h, w = t.shape
        ph, pw = padded_hw[0] // stride, padded_hw[1] // stride
        out = torch.zeros((n, ph, pw), device=self.device)
        if n == 0:
            return out
        boxes = inst.gt_boxes.tensor.to(self.device)
        lo = ((boxes[:, :2] - 1) / stride).floor().clamp(min=0).long()
        hi = ((boxes[:, 2:] + 1) / stride).ceil().long()
        hi[:, 0].clamp_(max=-(-w // stride))
        hi[:, 1].clamp_(max=-(-h // stride))
        for i, (x0, y0, x1, y1) in enumerate(torch.cat([lo, hi], 1).tolist()):
            if x1 <= x0 or y1 <= y0:
                continue
            crop = t[i, y0 * stride:y1 * stride, x0 * stride:x1 * stride]
            if crop.shape != ((y1 - y0) * stride, (x1 - x0) * stride):  # at the image edge
                crop = F.pad(crop.to(torch.uint8), (0, (x1 - x0) * stride - crop.shape[1],
                                                    0, (y1 - y0) * stride - crop.shape[0]))
            block = crop.reshape(y1 - y0, stride, x1 - x0, stride)
            out[i, y0:y1, x0:x1] = block.sum(dim=(1, 3), dtype=torch.int32).float()
        return out / (stride * stride)

    def losses(self, images, anchors, grid, logits, deltas, coefs, proto, seg_logits, gt):
        padded_hw = images.tensor.shape[-2:]
        labels, target_deltas, matched = [], [], []
        for inst in gt:
            idx, label = match_anchors(inst.gt_boxes, anchors, self.pos_iou, self.neg_iou,
                                       grid=grid)
            cls = torch.full_like(label, self.num_classes)
            if len(inst):
                cls = torch.where(label == 1, inst.gt_classes[idx], cls)
                target_deltas.append(self.box2box_transform.get_deltas(
                    anchors.tensor, inst.gt_boxes.tensor[idx]))
            else:
                target_deltas.append(torch.zeros_like(anchors.tensor))
            cls[label < 0] = -1
            labels.append(cls)
            matched.append(idx)
        labels = torch.stack(labels)
        target_deltas = torch.stack(target_deltas)
        pos = (labels >= 0) & (labels < self.num_classes)
        num_pos = max(pos.sum().item(), 1)

        loss_cls = ohem_class_loss(logits, labels, self.negpos_ratio) / num_pos
        loss_box = box_loss(deltas[pos], target_deltas[pos], self.smooth_l1_beta) / num_pos

        loss_mask, num_masks = proto.sum() * 0.0, 0
        seg_targets = torch.zeros_like(seg_logits)
        proto_stride = int(self.proto_stride)
        seg_stride = int(images.tensor.shape[-1] // seg_logits.shape[-1])
        for i, inst in enumerate(gt):
            if len(inst) == 0:
                continue
            gt_masks = self._gt_masks(inst, padded_hw, proto_stride)
            seg_masks = self._gt_masks(inst, padded_hw, seg_stride)
            for c in inst.gt_classes.unique().tolist():
                seg_targets[i, c] = seg_masks[inst.gt_classes == c].amax(dim=0)
            pos_idx = pos[i].nonzero().squeeze(1)
            if len(pos_idx) > self.masks_to_train:
                pos_idx = pos_idx[torch.randperm(len(pos_idx), device=pos_idx.device)
                                  [:self.masks_to_train]]
            if len(pos_idx) == 0:
                continue
            gt_idx = matched[i][pos_idx]
            loss_mask = loss_mask + mask_loss(proto[i], coefs[i, pos_idx], gt_masks[gt_idx],
                                              inst.gt_boxes.tensor[gt_idx], self.proto_stride)
            num_masks += len(pos_idx)
        loss_mask = loss_mask / max(num_masks, 1)
        loss_semseg = semantic_loss(seg_logits, seg_targets) / len(gt)
        losses = {"loss_cls": loss_cls, "loss_box": loss_box, "loss_mask": loss_mask,
                  "loss_semseg": loss_semseg}
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    # ---------------------------------------------------------------- inference
    def inference_single(self, anchors, logits, deltas, coefs, proto, image_size, output_size):
        with self._stage("nms"):
            scores = F.softmax(logits, dim=-1)[:, :self.num_classes]
            candidates = (scores.max(dim=1).values > self.score_thresh).nonzero().squeeze(1)
            boxes = self.box2box_transform.apply_deltas(deltas[candidates],
                                                        anchors.tensor[candidates])
            boxes = Boxes(boxes)
            boxes.clip(image_size)
            keep, classes, kept_scores = fast_nms(boxes.tensor, scores[candidates],
                                                  self.score_thresh, self.nms_thresh,
                                                  self.topk_candidates, self.max_detections)
        with self._stage("postprocess"):
            out_h, out_w = int(output_size[0]), int(output_size[1])
            scale_y, scale_x = out_h / image_size[0], out_w / image_size[1]
            boxes = Boxes(boxes.tensor[keep])
            boxes.scale(scale_x, scale_y)
            boxes.clip((out_h, out_w))
            result = Instances((out_h, out_w))
            result.pred_boxes = boxes
            result.scores = kept_scores
            result.pred_classes = classes
        with self._stage("masks"):
            s = self.proto_stride  # prototypes of the image, without the batch's padding:
            image_proto = proto[:, :math.ceil(image_size[0] / s), :math.ceil(image_size[1] / s)]
            result.pred_masks = paste_masks(image_proto, coefs[candidates][keep], boxes.tensor,
                                            (out_h, out_w), (s * scale_y, s * scale_x),
                                            self.mask_thresh)
        return result


