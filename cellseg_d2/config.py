"""Configuration: ``add_yolact_config(cfg)`` adds this project's keys (``cfg.MODEL.YOLACT``
and a few more); ``load_cfg`` loads a config file with one-line errors for the usual
mistakes; ``apply_epochs`` turns SOLVER.EPOCHS into iterations."""
import math
import os

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

OPTIMIZERS = ("SGD", "AdamW")  # SOLVER.OPTIMIZER; see engine.Trainer.build_optimizer


def add_yolact_config(cfg):
    cfg.MODEL.YOLACT = CN()
    _C = cfg.MODEL.YOLACT
    _C.NUM_CLASSES = 3
    _C.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.PROTO_FEATURE = "p3"
    # Protonet: 3 x (3x3 conv + ReLU), x2 upsample, 3x3 conv + ReLU, 1x1 conv to k, ReLU.
    _C.NUM_PROTOTYPES = 32
    _C.PROTONET_CHANNELS = 256
    _C.PROTONET_NORM = ""
    # "relu" as in the reference; "none" keeps prototypes linear, which cannot die (all-zero
    # ReLU prototypes stop mask learning, seen from random initialisation).
    _C.PROTO_ACTIVATION = "relu"
    # Shared prediction head: NUM_HEAD_CONVS x (3x3 conv + ReLU) before the three 3x3 outputs.
    _C.NUM_HEAD_CONVS = 1
    _C.HEAD_NORM = ""
    # Matching: IoU >= POS_IOU positive, < NEG_IOU background, between ignored; every ground
    # truth also gets its best anchor.
    _C.POS_IOU = 0.5
    _C.NEG_IOU = 0.4
    # Background anchors centred on a cell's mask, no larger than its box, with IoU below
    # PART_IOU with that cell (pieces of a large cell: ~190 per astrocyte against ~40 per cort
    # cell) are ignored instead: as OHEM's hardest negatives they teach the shared head that a
    # large cell's own texture is background. Anchors larger than the cell stay background.
    # 0 = off; NEG_IOU (0.4): no piece of a cell is background (BENCHMARKS.md, "Astrocytes").
    _C.PART_IOU = 0.0
    _C.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # YOLACT's variances 0.1 / 0.2
    _C.SMOOTH_L1_BETA = 1.0
    _C.NEGPOS_RATIO = 3  # OHEM: hardest background anchors per positive
    _C.CLASS_LOSS_WEIGHT = 1.0
    _C.BOX_LOSS_WEIGHT = 1.5
    _C.MASK_LOSS_WEIGHT = 6.125
    # Each instance's mask loss is its BCE (a per-pixel mean over its box) plus this weight x
    # its Dice loss over the same box, which scores overlap and so the thin processes of a
    # sprawling cell that BCE averages away. 0: BCE alone, as YOLACT. At 1.0 no astro gain on
    # a cross-validation fold of real cells (BENCHMARKS.md, "Astrocytes, eighth round").
    _C.MASK_DICE_WEIGHT = 0.0
    _C.SEMSEG_LOSS_WEIGHT = 1.0
    # Masks trained per image (random subset of positives); the reference uses 100, cell
    # images have up to ~800 cells.
    _C.MASKS_TO_TRAIN = 300
    # Inference keeps detections above SCORE_THRESH_TEST (COCO AP ranks them all); of those,
    # TEST.INSTANCE_SCORE_THRESH picks the ones written out as cells.
    _C.SCORE_THRESH_TEST = 0.05
    _C.NMS_THRESH_TEST = 0.5
    _C.TOPK_CANDIDATES_TEST = 2000  # per class, before Fast NMS
    _C.MASK_THRESH_TEST = 0.5
    # Masks are trained and read over each box grown by this fraction of its width and height
    # per side (0: training reads the box plus a prototype pixel, inference the box). A
    # predicted box that stops short of a thin process otherwise cuts its mask straight.
    # Measured worse on real cells at 0.2 (BENCHMARKS.md, "Astrocytes, fourth round").
    _C.MASK_BOX_GROW = 0.0
    # Each detection's score multiplied by its mask's mean probability over the mask's pixels
    # (SOLOv2's "maskness"), and the detections re-sorted: the class score says a cell is there,
    # not how well its mask outlines it, so a loosely outlined fragment can outrank a crisp mask.
    _C.TEST_MASKNESS = False
    # Test-time augmentation: also run the image flipped ("horizontal", "vertical"; both:
    # all 4 combinations) and average the views anchor by anchor. Costs one pass per view.
    _C.TEST_FLIPS = []
    # An image's type: the class most of its detections above TEST_TYPE_VOTE_THRESH hold (after
    # per-class Fast NMS). Used by the two options below, for images that hold one cell type
    # (Sartorius, LIVECell).
    _C.TEST_TYPE_VOTE_THRESH = 0.5
    # Every detection takes the image's type, scored by its foreground probability (1 - the
    # background's), and Fast NMS runs again over that one class: a cell the classifier
    # splits between two types is one detection of the image's type, not two of either.
    _C.TEST_ONE_TYPE_PER_IMAGE = False
    # How TEST_ONE_TYPE_PER_IMAGE decides the type: "detections" (the vote above) or "semantic":
    # the class whose semantic-head probability (the auxiliary per-pixel head, otherwise unused
    # at test time) is highest on average over the image's cell pixels (any class above 0.5;
    # the detections vote where there are none). The whole image's pixels weigh in, not a
    # count of detections that a crowd of unsure ones can swing.
    _C.TEST_TYPE_VOTE = "detections"
    # Detections trained as cell or background (each positive's loss on the classes' summed
    # probability), so that no anchor learns to tell one type from another; the image's type
    # comes from the semantic head alone (needs TEST_TYPE_VOTE "semantic"; where the head sees
    # no cell pixel, its highest mean over the image). One type per image only.
    _C.AGNOSTIC_DETECTION = False
    # Test scale per cell type: one factor per class (empty: off). Where the image's type's
    # factor is not 1 the image is segmented again at factor x the test scale, and those
    # detections are kept. Costs a second pass for those images.
    _C.TEST_RESCALE_BY_TYPE = []
    # Each class's score at which its detections are called cells (empty: off), chosen on
    # validation images where its F1 is best (evaluation/calibration.py; tools/train_real.py
    # writes it): scores are remapped per class, s ** (ln 0.5 / ln t), so that each class's
    # threshold lands on 0.5 (TEST.INSTANCE_SCORE_THRESH's default) and its order is kept (its
    # AP unchanged). A class the model is less sure of (astrocytes) gets a lower one.
    _C.TEST_SCORE_THRESH_BY_CLASS = []
    # Padding multiple for the input batch. P6/P7 come from P5 by strided convs, so 32 (the
    # FPN top-down path's need) is enough; the FPN's own 128 would pad 520 to 640.
    _C.SIZE_DIVISIBILITY = 32

    # Training length in epochs (0: use SOLVER.MAX_ITER as given). tools/train_net.py turns
    # epochs into iterations from the training set's size and SOLVER.IMS_PER_BATCH, LR steps
    # into fractions of it, and TEST.EVAL_PERIOD_EPOCHS into TEST.EVAL_PERIOD.
    cfg.SOLVER.OPTIMIZER = "SGD"  # or "AdamW" (see engine.Trainer.build_optimizer)
    # Wall-time limit of training in seconds (0: none): past it the remaining iterations are
    # skipped, the last checkpoint and evaluation still made (engine.TimeLimit).
    cfg.SOLVER.MAX_SECONDS = 0
    cfg.SOLVER.EPOCHS = 0
    cfg.SOLVER.STEP_FRACTIONS = (0.8, 0.95)
    cfg.TEST.EVAL_PERIOD_EPOCHS = 0

    # Only new keys here: YOLACT's values for Detectron2's own keys are in
    # configs/Base-YOLACT.yaml, so the Mask R-CNN baseline keeps Detectron2's defaults.
    cfg.INPUT.VERTICAL_FLIP = True
    cfg.INPUT.TRANSPOSE = False  # random transpose: with both flips, all 8 orientations
    # (low, high): in training, scale by a random factor in [low, high] (after INPUT.CROP);
    # (): by MIN_SIZE_TRAIN / TEST.TILE.NATIVE_SHORT_SIDE (mapper.ScaleFromNative).
    cfg.INPUT.TRAIN_SCALE = ()
    # COCO evaluation: the three maxDets (empty: 1, 10, DETECTIONS_PER_IMAGE; AP is read at the
    # last) and the small / medium / large area limits in px^2 (COCO's 32^2, 96^2; LIVECell's
    # protocol: maxDets 100, 500, 2000, limits 324, 961, class-agnostic).
    cfg.TEST.EVAL_MAX_DETS = []
    cfg.TEST.EVAL_AREA_BANDS = [32**2, 96**2]
    # True: the overall AP / AR ignore the classes, and each class is scored class-agnostically
    # over the images holding it (LIVECell's evaluation, useCats 0; one cell type per image).
    cfg.TEST.EVAL_CLASS_AGNOSTIC = False
    # Score above which a detection counts as a cell in label images, counts, the Kaggle
    # submission and the Kaggle metric (COCO AP uses every detection).
    cfg.TEST.INSTANCE_SCORE_THRESH = 0.5
    # Median equivalent diameter (px, at the images' own resolution) of the training cells,
    # written by training (tools/train_net.py); predict --diameter rescales by it (diameter.py).
    # 0: not recorded. Each class's, by contiguous class id (what --diameter auto compares an
    # image's cells with).
    cfg.MODEL.CELL_DIAMETER = 0.0
    cfg.MODEL.CELL_DIAMETER_BY_CLASS = []
    # Every image is resized by one factor at test time, its training scale (inference_scale below):
    # INPUT.TRAIN_SCALE where set, else MIN_SIZE_TEST / NATIVE_SHORT_SIDE, the factor an image of
    # the native size gets (Sartorius and LIVECell images are 704x520); training without
    # TRAIN_SCALE scales every image by MIN_SIZE_TRAIN / NATIVE_SHORT_SIDE likewise. Images
    # larger than INPUT.MIN_SIZE_TEST x MAX_SIZE_TEST at that scale are segmented in
    # overlapping tiles (cellseg_d2/tiling.py).
    cfg.TEST.TILE = CN()
    cfg.TEST.TILE.NATIVE_SHORT_SIDE = 520
    cfg.TEST.TILE.SIZE = 0  # tile side in network pixels; 0: INPUT.MIN_SIZE_TEST
    # Overlap of neighbouring tiles in network pixels, to exceed the largest cell; -1: SIZE // 4.
    cfg.TEST.TILE.OVERLAP = -1


class SetupError(ValueError):
    pass


def inference_scale(cfg) -> float:
    """The factor every image is resized by at test time, whatever its size and whichever the
    path (evaluation, predict, tiles, crops): its training scale. That is the middle of
    INPUT.TRAIN_SCALE where it is set, else the factor INPUT.MIN_SIZE_TEST gives an image of the
    native short side TEST.TILE.NATIVE_SHORT_SIDE (Sartorius and LIVECell: 520 px), which
    training also applies to every image (mapper.ScaleFromNative)."""
    if cfg.INPUT.TRAIN_SCALE:
        low, high = cfg.INPUT.TRAIN_SCALE
        return (low + high) / 2
    return cfg.INPUT.MIN_SIZE_TEST / cfg.TEST.TILE.NATIVE_SHORT_SIDE


def _floats_where_floats(cfg, opts: list) -> list:
    """KEY VALUE overrides with a whole number given for a float key (MODEL.CELL_DIAMETER 12)
    made a float: yacs refuses int for float ("Type mismatch")."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        node, value = cfg, out[i + 1]
        for part in str(out[i]).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, float) and not isinstance(value, bool):
            if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit()):
                out[i + 1] = float(value)
    return out


def load_cfg(config_file: str, opts=(), weights: str = None, device: str = None):
    if not os.path.isfile(config_file):
        raise SetupError(f"{config_file}: config file not found")
    cfg = get_cfg()
    add_yolact_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(_floats_where_floats(cfg, list(opts)))
    except (KeyError, AssertionError) as e:
        # yacs: KeyError "Non-existent config key: X" (file), AssertionError "Non-existent key: X"
        msg = str(e.args[0] if e.args else e)
        if "Non-existent" not in msg:
            raise SetupError(f"{config_file}: bad config: {msg}") from None
        raise SetupError(f"{config_file}: unknown config key {msg.split(':')[-1].strip()}") from None
    except ValueError as e:
        raise SetupError(f"{config_file}: bad config value: {e}") from None
    if cfg.SOLVER.OPTIMIZER not in OPTIMIZERS:
        names = " or ".join(repr(o) for o in OPTIMIZERS)
        raise SetupError(f"{config_file}: SOLVER.OPTIMIZER must be {names}, "
                         f"got {cfg.SOLVER.OPTIMIZER!r}")
    if cfg.MODEL.META_ARCHITECTURE == "Yolact":  # the test-time policy's settings, checked
        # before a training whose final evaluation would meet them
        from .modeling.test_time_augmentation import YolactWithTTA

        try:
            YolactWithTTA.check(cfg)
        except ValueError as e:
            raise SetupError(f"{config_file}: {e}") from None
    if cfg.TEST.AUG.ENABLED and cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise SetupError(f"{config_file}: TEST.AUG is Detectron2's test-time augmentation for "
                         f"Mask R-CNN; YOLACT's is MODEL.YOLACT.TEST_FLIPS")
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def num_classes(cfg) -> int:
    return cfg.MODEL.YOLACT.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE == "Yolact" \
        else cfg.MODEL.ROI_HEADS.NUM_CLASSES


def schedule_opts(iters: int, step_fractions=(0.8, 0.95), max_warmup: int = 30,
                  warmup_divisor: int = 4, min_iters_for_steps: int = 0) -> list:
    """The learning-rate schedule of a run of ``iters`` iterations, as KEY VALUE overrides:
    steps (x0.1 each, Base-YOLACT's GAMMA) at ``step_fractions`` of it (none below
    ``min_iters_for_steps``), linear warm-up over ``iters // warmup_divisor`` iterations, at
    most ``max_warmup``. The one derivation for SOLVER.EPOCHS, the demo and the recipe."""
    steps = tuple(int(f * iters) for f in step_fractions) if iters >= min_iters_for_steps else ()
    return ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", min(max_warmup, iters // warmup_divisor)]


def apply_epochs(cfg) -> int:
    """Set SOLVER.MAX_ITER / STEPS / CHECKPOINT_PERIOD and TEST.EVAL_PERIOD from SOLVER.EPOCHS
    and the number of training images; returns the iterations per epoch (0 if unused)."""
    if cfg.SOLVER.EPOCHS <= 0:
        return 0
    from detectron2.data import DatasetCatalog

    images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
    per_epoch = max(1, math.ceil(images / cfg.SOLVER.IMS_PER_BATCH))
    cfg.merge_from_list([str(v) for v in schedule_opts(
        max(1, round(cfg.SOLVER.EPOCHS * per_epoch)), cfg.SOLVER.STEP_FRACTIONS,
        max_warmup=cfg.SOLVER.WARMUP_ITERS)])
    cfg.SOLVER.CHECKPOINT_PERIOD = min(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER)
    if cfg.TEST.EVAL_PERIOD_EPOCHS > 0:
        cfg.TEST.EVAL_PERIOD = max(1, round(cfg.TEST.EVAL_PERIOD_EPOCHS * per_epoch))
    return per_epoch
