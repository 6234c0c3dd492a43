"""YOLACT (Bolya et al., ICCV 2019) as a Detectron2 meta-architecture."""
import math

import torch.nn.functional as F
from detectron2.layers import Conv2d, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_anchor_generator, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from torch.profiler import record_function

from ..box_windows import grown_boxes
from .head import YolactHead
from .inference import fast_nms, semantic_type
from .loss import box_loss, mask_loss, ohem_class_loss, semantic_loss
from .masks import box_maskness, paste_masks
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

    Its test-time policy (flipped views, one type per image, per-type scales) is a wrapper
    beside it: test_time_augmentation.YolactWithTTA.
    """

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
        self.mask_box_grow = y.MASK_BOX_GROW
        self.mask_dice = y.MASK_DICE_WEIGHT
        self.maskness = y.TEST_MASKNESS
        self.semantic_vote = y.TEST_TYPE_VOTE == "semantic"
        self.agnostic = y.AGNOSTIC_DETECTION
        if self.agnostic and not self.semantic_vote:
            raise ValueError("MODEL.YOLACT.AGNOSTIC_DETECTION leaves the type to the semantic "
                             "head: set MODEL.YOLACT.TEST_TYPE_VOTE 'semantic'")
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE

    def forward(self, batched_inputs: list[dict]):
        """DenseDetector's forward, with the prototypes computed beside the head."""
        if not self.training:
            return self.inference(batched_inputs)
        images, features, proto, predictions = self._run_network(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        return self.forward_training(images, features, predictions, proto, gt_instances)

    def inference(self, batched_inputs: list[dict], nms=None, want_masks=True):
        """Detections at the inputs' scale; ``nms`` and ``want_masks`` as in
        inference_single_image."""
        images, features, proto, predictions = self._run_network(batched_inputs)
        with record_function("yolact.head"):
            anchors, logits, deltas, coefs = self._anchors_and_predictions(features, predictions)
            semantic = self.semantic_probs(features) if self.votes_semantic(nms) else None
        return self.detect(images, batched_inputs, anchors, logits, deltas, [coefs], [proto], nms,
                           want_masks, semantic)

    def votes_semantic(self, nms) -> bool:
        """Whether a custom ``nms`` (the one-type vote) gets the semantic head's type."""
        return nms is not None and self.semantic_vote

    def semantic_probs(self, features):
        """The semantic head's per-class probabilities (N, C, h, w) at its feature's stride."""
        return self.semantic_head(features[self.proto_index]).sigmoid()

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
        return (anchors, self.flatten_levels(logits, self.num_classes + 1),
                self.flatten_levels(deltas, 4), self.flatten_levels(coefs, self.num_prototypes))

    def flatten_levels(self, levels, k):
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
        loss_cls = ohem_class_loss(logits, targets.classes, self.negpos_ratio, self.agnostic)
        loss_box = box_loss(deltas[pos], targets.box_deltas[pos], self.smooth_l1_beta)
        loss_mask = proto.sum() * 0.0
        for i, m in enumerate(targets.masks):
            if m is not None:
                loss_mask = loss_mask + mask_loss(proto[i], coefs[i, m.anchors], m.coverage,
                                                  m.boxes, self.proto_stride,
                                                  grow=self.mask_box_grow,
                                                  dice=self.mask_dice)
        losses = {"loss_cls": loss_cls / targets.num_positive,
                  "loss_box": loss_box / targets.num_positive,
                  "loss_mask": loss_mask / targets.num_masks,
                  "loss_semseg": semantic_loss(seg_logits, targets.semantic) / len(pos)}
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    # ---------------------------------------------------------------- inference
    def detect(self, images, batched_inputs, anchors, logits, deltas, coefs_views, protos,
               nms=None, want_masks=True, semantic=None):
        """Each image's detections; coefs_views and protos hold one batch tensor per test view;
        semantic: None or the batch's semantic_probs (averaged over the views)."""
        results = []
        for i, image_size in enumerate(images.image_sizes):
            output_size = (batched_inputs[i].get("height", image_size[0]),
                           batched_inputs[i].get("width", image_size[1]))
            results.append({"instances": self.inference_single_image(
                anchors, logits[i], deltas[i], [c[i] for c in coefs_views],
                [p[i] for p in protos], image_size, output_size, nms, want_masks,
                None if semantic is None else semantic[i])})
        return results

    def nms(self, boxes, scores):
        """Per-class Fast NMS at the config's thresholds: (indices, classes, scores)."""
        return fast_nms(boxes, scores, self.score_thresh, self.nms_thresh, self.topk_candidates,
                        self.max_detections)

    def inference_single_image(self, anchors, logits, deltas, coefs_views, protos, image_size,
                               output_size, nms=None, want_masks=True, semantic=None):
        """One image's detections, its candidates suppressed by ``nms`` ((boxes, scores,
        quality, image_type) -> (indices, classes, scores); default self.nms; quality: None, or
        with TEST_MASKNESS a function of candidate indices giving their box_maskness;
        image_type: the semantic head's type of the image (from ``semantic``, its (C, h, w)
        probabilities), or None); masks pasted unless ``want_masks`` (a bool, or a function of
        the Instances) says no. coefs_views and protos hold one entry per test view (the
        views' mask probabilities are averaged)."""
        s = self.proto_stride  # prototypes of the image, without the batch's padding:
        rows, cols = math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)
        image_proto = [p[:, :rows, :cols] for p in protos]
        image_type = None
        if semantic is not None:  # at the semantic head's stride, twice the prototypes'
            semantic = semantic[:, :math.ceil(image_size[0] / (2 * s)),
                                :math.ceil(image_size[1] / (2 * s))]
            image_type = semantic_type(semantic)
            if image_type is None and self.agnostic:  # its detections' classes are untrained
                image_type = int(semantic.mean(dim=(1, 2)).argmax())
        with record_function("yolact.nms"):
            scores = F.softmax(logits, dim=-1)[:, :self.num_classes]
            candidates = (scores.max(dim=1).values > self.score_thresh).nonzero().squeeze(1)
            boxes = Boxes(self.box2box_transform.apply_deltas(deltas[candidates],
                                                              anchors.tensor[candidates]))
            boxes.clip(image_size)
            scores = scores[candidates]
            if nms is None:
                keep, classes, kept_scores = self.nms(boxes.tensor, scores)
            else:
                candidate_boxes = boxes.tensor
                quality = None if not self.maskness else lambda idx: box_maskness(
                    image_proto, [c[candidates[idx]] for c in coefs_views], candidate_boxes[idx],
                    s, self.mask_thresh)
                keep, classes, kept_scores = nms(candidate_boxes, scores, quality, image_type)
        with record_function("yolact.postprocess"):
            out_h, out_w = int(output_size[0]), int(output_size[1])
            scale_y, scale_x = out_h / image_size[0], out_w / image_size[1]
            boxes = Boxes(boxes.tensor[keep])
            boxes.scale(scale_x, scale_y)
            boxes.clip((out_h, out_w))
            result = Instances((out_h, out_w), pred_boxes=boxes, scores=kept_scores,
                               pred_classes=classes)
        if not (want_masks(result) if callable(want_masks) else want_masks):
            return result
        with record_function("yolact.masks"):
            kept_coefs = [c[candidates][keep] for c in coefs_views]
            windows = grown_boxes(boxes.tensor, self.mask_box_grow)
            pasted = paste_masks(image_proto, kept_coefs, windows, (out_h, out_w),
                                 (s * scale_y, s * scale_x), self.mask_thresh,
                                 maskness=self.maskness)
            if self.maskness:
                result.pred_masks, mean_prob = pasted
                result.scores = result.scores * mean_prob
                result = result[result.scores.argsort(descending=True)]
            else:
                result.pred_masks = pasted
        return result
