"""YOLACT's test-time policy, beside the model as Detectron2 keeps Mask R-CNN's
(GeneralizedRCNNWithTTA): flipped views averaged anchor by anchor, one cell type per image,
and each image segmented again at its voted type's scale. ``with_test_time_policy`` wraps a
model where the config asks for any of it (the trainer's evaluations, predict.CellPredictor,
tools/visualize_samples.py, the benchmark)."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

FLIP_DIMS = {"horizontal": 3, "vertical": 2}  # image tensor dims (N, C, H, W)


def vote_type(classes: torch.Tensor, scores: torch.Tensor, thresh: float, num_classes: int):
    """An image's type: the class most of its detections scoring above ``thresh`` hold (None
    if there are none; a tie goes to the lower class index)."""
    votes = torch.bincount(classes[scores > thresh], minlength=num_classes)
    return None if votes.sum() == 0 else int(votes.argmax())


def one_type_nms(model, vote_thresh: float):
    """The NMS of TEST_ONE_TYPE_PER_IMAGE for ``model`` (a Yolact): per-class Fast NMS to vote
    the image's type; then, if there is one, class-agnostic Fast NMS on the foreground
    probability (the classes' sum), every detection of that type. A cell the classifier splits
    between two types is then kept once, not once per type. With a ``quality`` (TEST_MASKNESS)
    the vote counts scores x maskness: a crowd of loosely outlined detections of a wrong type
    then no longer outvotes fewer crisp ones of the right type (BENCHMARKS.md, "Astrocytes,
    fifth round"); where no detection passes the threshold that way, scores alone vote. An
    ``image_type`` given (TEST_TYPE_VOTE "semantic": the semantic head's) replaces the vote."""
    def nms(boxes, scores, quality=None, image_type=None):
        keep, classes, kept_scores = model.nms(boxes, scores)
        if image_type is None and quality is not None:
            voters = kept_scores > vote_thresh  # maskness <= 1: only these can pass
            vote_scores = torch.zeros_like(kept_scores)
            vote_scores[voters] = kept_scores[voters] * quality(keep[voters])
            image_type = vote_type(classes, vote_scores, vote_thresh, model.num_classes)
        if image_type is None:
            image_type = vote_type(classes, kept_scores, vote_thresh, model.num_classes)
        if image_type is None:
            return keep, classes, kept_scores
        keep, _, kept_scores = model.nms(boxes, scores.sum(dim=1, keepdim=True))
        return keep, torch.full_like(keep, image_type), kept_scores
    return nms


def calibrated_scores(scores: torch.Tensor, classes: torch.Tensor, thresholds: list,
                      target: float = 0.5) -> torch.Tensor:
    """Scores remapped per class, s ** (ln target / ln t_c): class c's threshold t_c becomes
    ``target``, 0 and 1 stay, and the order within a class is kept."""
    from ..evaluation.calibration import exponents

    gamma = torch.as_tensor(exponents(thresholds, target), dtype=scores.dtype,
                            device=scores.device)
    return scores.clamp(min=0) ** gamma[classes]


def rescaled_input(inputs: dict, factor: float) -> dict:
    """A model input with its image resized by ``factor``, output at the original size."""
    image = inputs["image"]
    size = (max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor)))
    scaled = F.interpolate(image[None].float(), size=size, mode="bilinear",
                           align_corners=False)[0]
    if not image.dtype.is_floating_point:  # the mapper's uint8 (or a caller's integers)
        limits = torch.iinfo(image.dtype)
        scaled = scaled.round().clamp(limits.min, limits.max)
    return dict(inputs, image=scaled.to(image.dtype), height=inputs.get("height", image.shape[-2]),
                width=inputs.get("width", image.shape[-1]))


class YolactWithTTA(nn.Module):
    """A Yolact with MODEL.YOLACT's test-time settings; called as the model is (a list of
    input dicts -> [{"instances": ...}]), at inference only.

    TEST_FLIPS: the image is also run flipped, in every combination of the listed flips; each
    view's class probabilities, box deltas and mask probabilities are mapped back and averaged
    anchor by anchor before Fast NMS. TEST_ONE_TYPE_PER_IMAGE: one_type_nms.
    TEST_RESCALE_BY_TYPE: each image is segmented at the test scale, its type voted on its
    detections (TEST_TYPE_VOTE_THRESH), and segmented again at that type's factor where it is
    not 1 (its first pass then pastes no masks). TEST_SCORE_THRESH_BY_CLASS: the final scores
    remapped per class (calibrated_scores)."""

    def __init__(self, cfg, model):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.check(cfg)
        y = cfg.MODEL.YOLACT
        self.rescale_by_type = [float(f) for f in y.TEST_RESCALE_BY_TYPE]
        self.thresholds = [float(t) for t in y.TEST_SCORE_THRESH_BY_CLASS]
        self.vote_thresh = y.TEST_TYPE_VOTE_THRESH
        self.nms = one_type_nms(model, self.vote_thresh) if y.TEST_ONE_TYPE_PER_IMAGE else None
        dims = sorted({FLIP_DIMS[f] for f in y.TEST_FLIPS})
        self.views = [v for r in range(len(dims) + 1) for v in itertools.combinations(dims, r)]

    @staticmethod
    def check(cfg) -> None:
        """ValueError (one line) for test-time settings it cannot run."""
        y = cfg.MODEL.YOLACT
        unknown = set(y.TEST_FLIPS) - set(FLIP_DIMS)
        if unknown:
            raise ValueError(f"MODEL.YOLACT.TEST_FLIPS: unknown flip(s) {sorted(unknown)}; "
                             f"use {sorted(FLIP_DIMS)}")
        factors = list(y.TEST_RESCALE_BY_TYPE)
        if factors and (len(factors) != y.NUM_CLASSES or min(factors) <= 0):
            raise ValueError(f"MODEL.YOLACT.TEST_RESCALE_BY_TYPE needs one positive factor per "
                             f"class ({y.NUM_CLASSES}), got {factors}")
        if y.TEST_TYPE_VOTE not in ("detections", "semantic"):
            raise ValueError(f"MODEL.YOLACT.TEST_TYPE_VOTE must be 'detections' or 'semantic', "
                             f"got {y.TEST_TYPE_VOTE!r}")
        if y.TEST_TYPE_VOTE == "semantic" and not y.TEST_ONE_TYPE_PER_IMAGE:
            raise ValueError("MODEL.YOLACT.TEST_TYPE_VOTE 'semantic' decides the type of "
                             "TEST_ONE_TYPE_PER_IMAGE: set that True too")
        thresholds = list(y.TEST_SCORE_THRESH_BY_CLASS)
        if thresholds and (len(thresholds) != y.NUM_CLASSES or
                           not all(0 < t < 1 for t in thresholds)):
            raise ValueError(f"MODEL.YOLACT.TEST_SCORE_THRESH_BY_CLASS needs one threshold in "
                             f"(0, 1) per class ({y.NUM_CLASSES}), got {thresholds}")

    def forward(self, batched_inputs: list[dict]):
        assert not self.training, "YolactWithTTA is for inference"
        if not self.rescale_by_type:
            results = self.inference(batched_inputs)
        else:
            results = self.inference(batched_inputs, want_masks=lambda i: self.factor(i) == 1.0)
            for i, (inputs, result) in enumerate(zip(batched_inputs, results)):
                inst = result["instances"]  # masks were pasted where the vote gave factor 1
                factor = 1.0 if inst.has("pred_masks") else self.factor(inst)
                if factor != 1.0:
                    results[i] = self.inference([rescaled_input(inputs, factor)])[0]
        if self.thresholds:
            for r in results:
                inst = r["instances"]
                inst.scores = calibrated_scores(inst.scores, inst.pred_classes, self.thresholds)
        return results

    def factor(self, instances) -> float:
        """The test scale factor of the type ``instances`` vote for (1 without a type)."""
        image_type = vote_type(instances.pred_classes, instances.scores, self.vote_thresh,
                               self.model.num_classes)
        return 1.0 if image_type is None else self.rescale_by_type[image_type]

    def inference(self, batched_inputs, want_masks=True):
        """Detections at the inputs' scale, averaged over the flipped views if any."""
        if len(self.views) == 1:
            return self.model.inference(batched_inputs, self.nms, want_masks)
        return self.flipped_views(batched_inputs, want_masks)

    def flipped_views(self, batched_inputs, want_masks=True):
        m = self.model
        with record_function("yolact.backbone+fpn"):
            # Padded to the coarsest level's stride so that every level's anchor grid maps onto
            # itself under a flip of the padded tensor. The padding (up to 127 px, at the top or
            # left in flipped views) takes each image's mean value: an edge between the image
            # and a constant border is what a cell's edge looks like (a small uniform image
            # otherwise got detections along it).
            images = m.preprocess_image(batched_inputs)
            div = max(m.anchor_generator.strides)
            h, w = images.tensor.shape[-2:]
            padded = F.pad(images.tensor, (0, -w % div, 0, -h % div))
            for i, (ih, iw) in enumerate(images.image_sizes):
                mean = padded[i, :, :ih, :iw].mean(dim=(1, 2))[:, None, None]
                padded[i, :, ih:, :] = mean
                padded[i, :, :ih, iw:] = mean
        probs, deltas, coefs, protos, semantic = [], [], [], [], []
        for dims in self.views:
            with record_function("yolact.backbone+fpn"):
                features = m.backbone(padded.flip(dims))
                features = [features[f] for f in m.head_in_features]
            with record_function("yolact.protonet"):
                protos.append(m.protonet(features[m.proto_index]).flip(dims))
            with record_function("yolact.head"):
                if m.votes_semantic(self.nms):
                    semantic.append(m.semantic_probs(features).flip(dims))
                view_logits, view_deltas, view_coefs = m.head(features)
                coefs.append(m.flatten_levels([c.flip(dims) for c in view_coefs],
                                              m.num_prototypes))
                probs.append([unflip(F.softmax(per_anchor(x, m.num_classes + 1), dim=2), dims)
                              for x in view_logits])
                deltas.append([unflip(per_anchor(x, 4), dims, negate=True) for x in view_deltas])
        with record_function("yolact.head"):
            n = len(self.views)
            # log of the mean probability: the softmax in inference_single_image gives it back.
            logits = [torch.log((sum(v) / n).clamp(min=1e-12)).flatten(1, 2) for v in zip(*probs)]
            deltas = [(sum(v) / n).flatten(1, 2) for v in zip(*deltas)]
            logits = m.flatten_levels(logits, m.num_classes + 1)
            deltas = m.flatten_levels(deltas, 4)
            anchors = Boxes.cat(m.anchor_generator(features))
            semantic = sum(semantic) / n if semantic else None
        return m.detect(images, batched_inputs, anchors, logits, deltas, coefs, protos, self.nms,
                        want_masks, semantic)


def per_anchor(x, k):
    """(N, A*k, H, W) -> (N, A, k, H, W)."""
    return x.view(x.shape[0], -1, k, *x.shape[-2:])


def unflip(x, dims, negate=False):
    """Flip a (N, A, k, H, W) map back; with ``negate``, box deltas: a horizontal flip mirrors
    dx (component 0), a vertical one dy (component 1)."""
    if not dims:
        return x
    x = x.flip([d + 1 for d in dims])
    if negate:
        sign = torch.ones(x.shape[2], dtype=x.dtype, device=x.device)
        sign[[1 - (d - 2) for d in dims]] = -1  # dim 3 (width) -> dx, dim 2 (height) -> dy
        x = x * sign[:, None, None]
    return x


def asks_for_test_time_policy(cfg) -> bool:
    y = cfg.MODEL.YOLACT
    return bool(y.TEST_FLIPS or y.TEST_RESCALE_BY_TYPE or y.TEST_ONE_TYPE_PER_IMAGE or
                y.TEST_SCORE_THRESH_BY_CLASS or y.TEST_TYPE_VOTE != "detections")


def with_test_time_policy(cfg, model):
    """``model`` as the config runs it at test time: a Yolact wrapped in YolactWithTTA where
    MODEL.YOLACT asks for flips, a type vote or per-type scales, in the model's training / eval
    mode; else the model itself (Mask R-CNN's TEST.AUG is engine.Trainer.test's, as in
    Detectron2)."""
    if cfg.MODEL.META_ARCHITECTURE != "Yolact" or not asks_for_test_time_policy(cfg):
        return model
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return YolactWithTTA(cfg, inner).train(inner.training)
