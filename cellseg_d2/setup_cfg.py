"""Config loading shared by the tools, with one-line errors for the usual mistakes."""
import math
import os
import urllib.error

import torch
from detectron2.config import get_cfg

from .config import OPTIMIZERS, add_yolact_config


class SetupError(ValueError):
    pass


def load_cfg(config_file: str, opts=(), weights: str = None, device: str = None):
    if not os.path.isfile(config_file):
        raise SetupError(f"{config_file}: config file not found")
    cfg = get_cfg()
    add_yolact_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
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
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def check_weights(path: str) -> None:
    """Fail early with one line if a local checkpoint is missing."""
    if not path:
        return
    if "://" in path:
        return
    if not os.path.isfile(path):
        raise SetupError(f"{path}: checkpoint not found (MODEL.WEIGHTS / --weights)")


def load_weights(checkpointer, path: str, resume: bool = False):
    """DetectionCheckpointer.resume_or_load with a clear message when a URL is unreachable."""
    try:
        return checkpointer.resume_or_load(path, resume=resume)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        if "://" in (path or ""):
            raise SetupError(f"{path}: cannot download pretrained weights ({e}); download it "
                             f"elsewhere and pass a local file as MODEL.WEIGHTS, or set "
                             f"MODEL.WEIGHTS '' to train from random initialisation") from None
        raise


def apply_epochs(cfg) -> int:
    """Set SOLVER.MAX_ITER / STEPS / CHECKPOINT_PERIOD and TEST.EVAL_PERIOD from SOLVER.EPOCHS
    and the number of training images; returns the iterations per epoch (0 if unused)."""
    if cfg.SOLVER.EPOCHS <= 0:
        return 0
    from detectron2.data import DatasetCatalog

    images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
    per_epoch = max(1, math.ceil(images / cfg.SOLVER.IMS_PER_BATCH))
    cfg.SOLVER.MAX_ITER = max(1, round(cfg.SOLVER.EPOCHS * per_epoch))
    cfg.SOLVER.STEPS = tuple(int(f * cfg.SOLVER.MAX_ITER) for f in cfg.SOLVER.STEP_FRACTIONS)
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER // 4)
    cfg.SOLVER.CHECKPOINT_PERIOD = min(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER)
    if cfg.TEST.EVAL_PERIOD_EPOCHS > 0:
        cfg.TEST.EVAL_PERIOD = max(1, round(cfg.TEST.EVAL_PERIOD_EPOCHS * per_epoch))
    return per_epoch
