"""YOLACT (Bolya et al., ICCV 2019) as a Detectron2 meta-architecture."""
import itertools
import math

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_anchor_generator, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from torch.profiler import record_function

from .head import YolactHead
from .inference import fast_nms
from .loss import box_loss, mask_loss, ohem_class_loss, semantic_loss
from .masks import paste_masks
from .protonet import ProtoNet
from .targets import TargetBuilder


@META_ARCH_REGISTRY.register()
class Yolact(DenseDetector):
    """Backbone + FPN (P3-P7), ProtoNet on P3, a shared head predicting class, box and mask
    coefficients per anchor; masks are sigmoid(prototypes x coefficients), cropped to the box.

    Input/output follow Detectron2's conventions: a list of dicts with "image" (CHW, in
    ``INPUT.FORMAT``), optional "height"/"width" (output size) and, in training, "instances"
    with gt_boxes, gt_classes, gt_masks. Inference returns [{"instances": Instances}] with
    pred_boxes, scores, pred_classes and pred_masks (bool, at the output size). Inference
    stages are labelled for torch.profiler ("yolact.*", see tools/benchmark.py).

    ``MODEL.YOLACT.TEST_FLIPS`` (test-time augmentation): the image is also run flipped, in
    every combination of the listed flips; each view's class probabilities, box deltas, and
    mask probabilities are mapped back and averaged anchor by anchor before Fast NMS.
    """
    FLIP_DIMS = {"horizontal": 3, "vertical": 2}

    def __init__(self, cfg):
        y = cfg.MODEL.YOLACT
        backbone = build_backbone(cfg)
        backbone._size_divisibility = y.SIZE_DIVISIBILITY  # FPN's own is P7's stride
        shapes = backbone.output_shape()
        if y.PROTO_FEATURE not in y.IN_FEATURES:
            raise ValueError(f"MODEL.YOLACT.PROTO_FEATURE {y.PROTO_FEATURE!r} must be one of "
                             f"MODEL.YOLACT.IN_FEATURES {list(y.IN_FEATURES)}")
        feature_shapes = [shapes[f] for f in y.IN_FEATURES]
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        num_anchors = anchor_generator.num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR must give every level the same number of "
                             f"anchors per location for a shared head, got {num_anchors}")
        head = YolactHead(feature_shapes[0].channels, num_anchors[0], y.NUM_CLASSES,
                          y.NUM_PROTOTYPES, y.NUM_HEAD_CONVS, y.HEAD_NORM)
        super().__init__(backbone, head, list(y.IN_FEATURES), pixel_mean=cfg.MODEL.PIXEL_MEAN,
                         pixel_std=cfg.MODEL.PIXEL_STD)
        self.anchor_generator = anchor_generator
        proto_in = shapes[y.PROTO_FEATURE]
        self.proto_index = list(y.IN_FEATURES).index(y.PROTO_FEATURE)
        self.protonet = ProtoNet(proto_in.channels, y.PROTONET_CHANNELS, y.NUM_PROTOTYPES,
                                 y.PROTONET_NORM, y.PROTO_ACTIVATION)
        self.proto_stride = proto_in.stride / 2
        self.semantic_head = Conv2d(proto_in.channels, y.NUM_CLASSES, 1)
        self.num_classes, self.num_prototypes = y.NUM_CLASSES, y.NUM_PROTOTYPES
        self.box2box_transform = Box2BoxTransform(weights=tuple(y.BBOX_REG_WEIGHTS))
        self.build_targets = TargetBuilder(y.NUM_CLASSES, self.box2box_transform, y.POS_IOU,
                                           y.NEG_IOU, y.MASKS_TO_TRAIN, int(self.proto_stride),
                                           proto_in.stride, y.PART_IOU)
        self.negpos_ratio = y.NEGPOS_RATIO
        self.smooth_l1_beta = y.SMOOTH_L1_BETA
        self.loss_weights = {"loss_cls": y.CLASS_LOSS_WEIGHT, "loss_box": y.BOX_LOSS_WEIGHT,
                             "loss_mask": y.MASK_LOSS_WEIGHT, "loss_semseg": y.SEMSEG_LOSS_WEIGHT}
        self.score_thresh = y.SCORE_THRESH_TEST
        self.nms_thresh = y.NMS_THRESH_TEST
        self.topk_candidates = y.TOPK_CANDIDATES_TEST
        self.mask_thresh = y.MASK_THRESH_TEST
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE
        unknown = set(y.TEST_FLIPS) - set(self.FLIP_DIMS)
        if unknown:
            raise ValueError(f"MODEL.YOLACT.TEST_FLIPS: unknown flip(s) {sorted(unknown)}; "
                             f"use {sorted(self.FLIP_DIMS)}")
        self.rescale_by_type = [float(f) for f in y.TEST_RESCALE_BY_TYPE]
        if self.rescale_by_type and (len(self.rescale_by_type) != y.NUM_CLASSES
                                     or min(self.rescale_by_type) <= 0):
            raise ValueError(f"MODEL.YOLACT.TEST_RESCALE_BY_TYPE needs one positive factor per "
                             f"class ({y.NUM_CLASSES}), got {list(y.TEST_RESCALE_BY_TYPE)}")
        self.type_vote_thresh = y.TEST_TYPE_VOTE_THRESH
        self.one_type_per_image = y.TEST_ONE_TYPE_PER_IMAGE
        dims = sorted({self.FLIP_DIMS[f] for f in y.TEST_FLIPS})
        self.test_views = [v for r in range(len(dims) + 1) for v in itertools.combinations(dims, r)]

    def forward(self, batched_inputs: list[dict]):
        """DenseDetector's forward, with the prototypes computed beside the head."""
        if not self.training:
            if self.rescale_by_type:
                return self.forward_rescaled_by_type(batched_inputs)
            return self.inference(batched_inputs)
        images, features, proto, predictions = self._run_network(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        return self.forward_training(images, features, predictions, proto, gt_instances)

    def inference(self, batched_inputs: list[dict], vote: bool = False):
        """Detections at the input's scale, averaged over the test-time flips if any. With
        ``vote``, each output also holds "rescale": its voted type's factor in
        MODEL.YOLACT.TEST_RESCALE_BY_TYPE, and its instances have no masks where that is not 1."""
        if len(self.test_views) > 1:
            return self.forward_flipped_views(batched_inputs, vote)
        images, features, proto, predictions = self._run_network(batched_inputs)
        return self.forward_inference(images, features, predictions, proto, batched_inputs, vote)

    def _run_network(self, batched_inputs):
        with record_function("yolact.backbone+fpn"):
            images = self.preprocess_image(batched_inputs)
            features = self.backbone(images.tensor)
            features = [features[f] for f in self.head_in_features]
        with record_function("yolact.protonet"):
            proto = self.protonet(features[self.proto_index])
        with record_function("yolact.head"):
            predictions = self.head(features)
        return images, features, proto, predictions

    def _anchors_and_predictions(self, features, predictions):
        """All levels' anchors as one Boxes, predictions as (N, R, K) per kind."""
        anchors = Boxes.cat(self.anchor_generator(features))
        logits, deltas, coefs = predictions
        return (anchors, self._flatten(logits, self.num_classes + 1), self._flatten(deltas, 4),
                self._flatten(coefs, self.num_prototypes))

    def _flatten(self, levels, k):
        """Per-level (N, A*k, H, W) maps -> (N, R, k), all levels' anchors in order."""
        return cat(self._transpose_dense_predictions([levels], [k])[0], dim=1)

    # ---------------------------------------------------------------- training
    def forward_training(self, images, features, predictions, proto, gt_instances):
        seg_logits = self.semantic_head(features[self.proto_index])
        anchors, logits, deltas, coefs = self._anchors_and_predictions(features, predictions)
        grid = [(f.shape[-2], f.shape[-1], s) for f, s in zip(features,
                                                               self.anchor_generator.strides)]
        targets = self.build_targets(gt_instances, anchors, grid, images.tensor.shape[-2:])
        return self.losses(targets, logits, deltas, coefs, proto, seg_logits)

    def losses(self, targets, logits, deltas, coefs, proto, seg_logits):
        pos = targets.positive
        loss_cls = ohem_class_loss(logits, targets.classes, self.negpos_ratio)
        loss_box = box_loss(deltas[pos], targets.box_deltas[pos], self.smooth_l1_beta)
        loss_mask = proto.sum() * 0.0
        for i, m in enumerate(targets.masks):
            if m is not None:
                loss_mask = loss_mask + mask_loss(proto[i], coefs[i, m.anchors], m.coverage,
                                                  m.boxes, self.proto_stride)
        losses = {"loss_cls": loss_cls / targets.num_positive,
                  "loss_box": loss_box / targets.num_positive,
                  "loss_mask": loss_mask / targets.num_masks,
                  "loss_semseg": semantic_loss(seg_logits, targets.semantic) / len(pos)}
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    # ---------------------------------------------------------------- inference
    def forward_inference(self, images, features, predictions, proto, batched_inputs,
                          vote=False):
        with record_function("yolact.head"):
            anchors, logits, deltas, coefs = self._anchors_and_predictions(features, predictions)
        return self._detect(images, batched_inputs, anchors, logits, deltas, [coefs], [proto],
                            vote)

    def _detect(self, images, batched_inputs, anchors, logits, deltas, coefs_views, protos,
                vote=False):
        """Each image's detections; coefs_views and protos hold one batch tensor per test view."""
        results = []
        for i, image_size in enumerate(images.image_sizes):
            output_size = (batched_inputs[i].get("height", image_size[0]),
                           batched_inputs[i].get("width", image_size[1]))
            instances, factor = self.inference_single_image(
                anchors, logits[i], deltas[i], [c[i] for c in coefs_views],
                [p[i] for p in protos], image_size, output_size, vote)
            results.append({"instances": instances, "rescale": factor} if vote else
                           {"instances": instances})
        return results

    def forward_flipped_views(self, batched_inputs, vote=False):
        """Inference averaged over ``self.test_views`` (tuples of flipped tensor dims)."""
        with record_function("yolact.backbone+fpn"):
            # Padded to the coarsest level's stride so that every level's anchor grid maps onto
            # itself under a flip of the padded tensor. The padding (up to 127 px, at the top or
            # left in flipped views) takes each image's mean value: an edge between the image
            # and a constant border is what a cell's edge looks like (a small uniform image
            # otherwise got detections along it).
            images = self.preprocess_image(batched_inputs)
            div = max(self.anchor_generator.strides)
            h, w = images.tensor.shape[-2:]
            padded = F.pad(images.tensor, (0, -w % div, 0, -h % div))
            for i, (ih, iw) in enumerate(images.image_sizes):
                mean = padded[i, :, :ih, :iw].mean(dim=(1, 2))[:, None, None]
                padded[i, :, ih:, :] = mean
                padded[i, :, :ih, iw:] = mean
        probs, deltas, coefs, protos = [], [], [], []
        for dims in self.test_views:
            with record_function("yolact.backbone+fpn"):
                features = self.backbone(padded.flip(dims))
                features = [features[f] for f in self.head_in_features]
            with record_function("yolact.protonet"):
                protos.append(self.protonet(features[self.proto_index]).flip(dims))
            with record_function("yolact.head"):
                view_logits, view_deltas, view_coefs = self.head(features)
                coefs.append(self._flatten([c.flip(dims) for c in view_coefs],
                                           self.num_prototypes))
                probs.append([self._unflip(F.softmax(self._per_anchor(x, self.num_classes + 1),
                                                     dim=2), dims) for x in view_logits])
                deltas.append([self._unflip(self._per_anchor(x, 4), dims, negate=True)
                               for x in view_deltas])
        with record_function("yolact.head"):
            n = len(self.test_views)
            # log of the mean probability: the softmax in inference_single_image gives it back.
            logits = [torch.log((sum(v) / n).clamp(min=1e-12)).flatten(1, 2) for v in zip(*probs)]
            deltas = [(sum(v) / n).flatten(1, 2) for v in zip(*deltas)]
            logits = self._flatten(logits, self.num_classes + 1)
            deltas = self._flatten(deltas, 4)
            anchors = Boxes.cat(self.anchor_generator(features))
        return self._detect(images, batched_inputs, anchors, logits, deltas, coefs, protos, vote)

    def forward_rescaled_by_type(self, batched_inputs):
        """Inference at the test scale, then again at the voted type's scale where it differs
        (see MODEL.YOLACT.TEST_RESCALE_BY_TYPE)."""
        results = self.inference(batched_inputs, vote=True)
        for i, (inputs, result) in enumerate(zip(batched_inputs, results)):
            factor = result.pop("rescale")
            if factor == 1.0:
                continue
            image = inputs["image"]
            size = (max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor)))
            scaled = F.interpolate(image[None].float(), size=size, mode="bilinear",
                                   align_corners=False)[0]
            if not image.dtype.is_floating_point:  # the mapper's uint8 (or a caller's integers)
                limits = torch.iinfo(image.dtype)
                scaled = scaled.round().clamp(limits.min, limits.max)
            again = dict(inputs, image=scaled.to(image.dtype),
                         height=inputs.get("height", image.shape[-2]),
                         width=inputs.get("width", image.shape[-1]))
            results[i] = self.inference([again])[0]
        return results

    def _per_anchor(self, x, k):
        """(N, A*k, H, W) -> (N, A, k, H, W)."""
        return x.view(x.shape[0], -1, k, *x.shape[-2:])

    @staticmethod
    def _unflip(x, dims, negate=False):
        """Flip a (N, A, k, H, W) map back; with ``negate``, box deltas: a horizontal flip
        mirrors dx (component 0), a vertical one dy (component 1)."""
        if not dims:
            return x
        x = x.flip([d + 1 for d in dims])
        if negate:
            sign = torch.ones(x.shape[2], dtype=x.dtype, device=x.device)
            sign[[1 - (d - 2) for d in dims]] = -1  # dim 3 (width) -> dx, dim 2 (height) -> dy
            x = x * sign[:, None, None]
        return x

    def inference_single_image(self, anchors, logits, deltas, coefs_views, protos, image_size,
                               output_size, vote=False):
        """One image's detections (all of the image's voted type with
        MODEL.YOLACT.TEST_ONE_TYPE_PER_IMAGE) and the test scale factor of that type (1.0
        without ``vote``; masks are left out where it is not 1, as the image is segmented again);
        coefs_views and protos hold one entry per test view (the views' mask probabilities are
        averaged)."""
        with record_function("yolact.nms"):
            scores = F.softmax(logits, dim=-1)[:, :self.num_classes]
            candidates = (scores.max(dim=1).values > self.score_thresh).nonzero().squeeze(1)
            boxes = Boxes(self.box2box_transform.apply_deltas(deltas[candidates],
                                                              anchors.tensor[candidates]))
            boxes.clip(image_size)
            scores = scores[candidates]
            keep, classes, kept_scores = fast_nms(boxes.tensor, scores, self.score_thresh,
                                                  self.nms_thresh, self.topk_candidates,
                                                  self.max_detections)
            image_type = self._voted_type(classes, kept_scores) \
                if vote or self.one_type_per_image else None
            if self.one_type_per_image and image_type is not None:
                keep, _, kept_scores = fast_nms(boxes.tensor, scores.sum(dim=1, keepdim=True),
                                                self.score_thresh, self.nms_thresh,
                                                self.topk_candidates, self.max_detections)
                classes = torch.full_like(keep, image_type)
        with record_function("yolact.postprocess"):
            out_h, out_w = int(output_size[0]), int(output_size[1])
            scale_y, scale_x = out_h / image_size[0], out_w / image_size[1]
            boxes = Boxes(boxes.tensor[keep])
            boxes.scale(scale_x, scale_y)
            boxes.clip((out_h, out_w))
            result = Instances((out_h, out_w), pred_boxes=boxes, scores=kept_scores,
                               pred_classes=classes)
        factor = 1.0 if image_type is None or not vote else self.rescale_by_type[image_type]
        if factor != 1.0:
            return result, factor
        with record_function("yolact.masks"):
            s = self.proto_stride  # prototypes of the image, without the batch's padding:
            rows, cols = math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)
            image_proto = [p[:, :rows, :cols] for p in protos]
            kept_coefs = [c[candidates][keep] for c in coefs_views]
            result.pred_masks = paste_masks(image_proto, kept_coefs, boxes.tensor,
                                            (out_h, out_w), (s * scale_y, s * scale_x),
                                            self.mask_thresh)
        return result, factor

    def _voted_type(self, classes, scores):
        """The class most detections above the vote threshold hold (None if there are none)."""
        votes = torch.bincount(classes[scores > self.type_vote_thresh], minlength=self.num_classes)
        return None if votes.sum() == 0 else int(votes.argmax())
