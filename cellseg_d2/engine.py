"""Trainer: Detectron2's DefaultTrainer with the cell mapper, a per-class COCO evaluator that
keeps up to TEST.DETECTIONS_PER_IMAGE (1000) detections per image, and the Kaggle metric, and a
wall-time limit (SOLVER.MAX_SECONDS). Runs as N processes on CPUs too (gloo;
`tools/train_net.py --num-gpus N`)."""
import logging
import os
import sys
import time
import weakref

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    HookBase,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import DatasetMapperTTA, GeneralizedRCNNWithTTA
from detectron2.solver import build_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpoint import FittingCheckpointer
from .config import inference_scale
from .data.mapper import CellDatasetMapper
from .evaluation import CellCOCOEvaluator, KaggleMetricEvaluator
from .modeling.test_time_augmentation import with_test_time_policy

# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic; without them PyTorch emulates
# bfloat16 on the CPU, ~30x slower than float32 (measured on an AVX2-only AMD EPYC).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); False where it cannot
    be told (not Linux, not x86)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def build_cell_evaluator(cfg, dataset_name, output_folder):
    # pycocotools' summarize() reports AP at 100 detections; AP is read at the real cap
    # (cells per image reach ~800), or at TEST.EVAL_MAX_DETS, with TEST.EVAL_AREA_BANDS, per
    # class or TEST.EVAL_CLASS_AGNOSTIC (LIVECell's protocol).
    return DatasetEvaluators([
        CellCOCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=True,
                          output_dir=output_folder,
                          max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                          max_dets=cfg.TEST.EVAL_MAX_DETS, area_bands=cfg.TEST.EVAL_AREA_BANDS,
                          class_agnostic=cfg.TEST.EVAL_CLASS_AGNOSTIC),
        KaggleMetricEvaluator(dataset_name, cfg.TEST.INSTANCE_SCORE_THRESH),
    ])


class TimeLimit(HookBase):
    """SOLVER.MAX_SECONDS: once training has run this long (from its first iteration), the
    remaining iterations are skipped; the learning-rate schedule, the last checkpoint and the
    final evaluation still come at their iterations, so a run ends within a wall-time budget.
    The iteration where it stopped is logged and stored as "time_limit_iter"."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.reached_at = None

    def before_train(self):
        self._start = time.perf_counter()

    def before_step(self):
        if self.reached_at is not None:
            return
        over = time.perf_counter() - self._start > self.seconds
        if comm.get_world_size() > 1:  # every process skips from the same iteration
            over = comm.all_gather(over)[0]
        if over:
            self.reached_at = self.trainer.iter
            self.trainer.storage.put_scalar("time_limit_iter", self.trainer.iter,
                                            smoothing_hint=False)
            logging.getLogger("cellseg_d2").warning(
                f"SOLVER.MAX_SECONDS ({self.seconds:.0f} s) reached at iteration "
                f"{self.trainer.iter}: the remaining {self.trainer.max_iter - self.trainer.iter} "
                f"iterations are skipped")


class ScaledDatasetMapperTTA(DatasetMapperTTA):
    """Detectron2's test-time augmentation mapper (Mask R-CNN's TEST.AUG), each of
    TEST.AUG.MIN_SIZES taken as the scale it gives a native-size image (MIN_SIZE / MIN_SIZE_TEST
    x config.inference_scale), as every other path scales, instead of an absolute short side
    (which would see the cells of a 1024x1024 image at another size than a 704x520 one's)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        base = inference_scale(cfg) / cfg.INPUT.MIN_SIZE_TEST
        self.factors = [m * base for m in self.min_sizes]

    def __call__(self, dataset_dict):
        image = dataset_dict["image"].permute(1, 2, 0).numpy()
        height, width = dataset_dict["height"], dataset_dict["width"]
        to_input = T.ResizeTransform(height, width, *image.shape[:2]) \
            if image.shape[:2] != (height, width) else T.NoOpTransform()
        views = []
        for f in self.factors:
            resize = T.Resize((max(1, int(height * f + 0.5)), max(1, int(width * f + 0.5))))
            views.append([resize])
            if self.flip:
                views.append([resize, T.RandomFlip(prob=1.0)])
        out = []
        for augs in views:
            new, tfms = T.apply_augmentations(augs, np.copy(image))
            view = dict(dataset_dict, image=torch.from_numpy(np.ascontiguousarray(
                new.transpose(2, 0, 1))), transforms=to_input + tfms)
            out.append(view)
        return out


class CPUAutocastTrainer(SimpleTrainer):
    """SOLVER.AMP.ENABLED on a CPU: the forward pass and the losses run under bfloat16
    autocast (convolutions and matrix products in bfloat16, losses in float32), the backward
    pass and the update as usual. Detectron2's AMPTrainer is CUDA-only (float16 with a
    gradient scaler); bfloat16 keeps float32's exponent range, so gradients need no scaling.
    Worth it where the CPU computes bfloat16 natively (AVX512-BF16 / AMX): there the real-cell
    recipe's iteration takes 0.55-0.7x the time (BENCHMARKS.md); elsewhere it is slower."""

    def run_step(self):
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        """DefaultTrainer's construction, in its order, with two choices it makes for CUDA made
        for the device: DistributedDataParallel gets device_ids=None for a model on the CPU
        (Detectron2's create_ddp_model passes [local rank], which DDP refuses there), and
        SOLVER.AMP.ENABLED on the CPU takes CPUAutocastTrainer (its AMPTrainer is CUDA's
        float16 with a gradient scaler). Loads (MODEL.WEIGHTS, --resume) refuse a checkpoint
        that does not fit (FittingCheckpointer)."""
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = cfg.MODEL.DEVICE.startswith("cpu")
        model = create_ddp_model(model, broadcast_buffers=False,
                                 **({"device_ids": None} if on_cpu else {}))
        loop = SimpleTrainer
        if cfg.SOLVER.AMP.ENABLED:
            loop = CPUAutocastTrainer if on_cpu else AMPTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = FittingCheckpointer(model, cfg.OUTPUT_DIR, fine_tune=True,
                                                trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hooks = super().build_hooks()
        self._time_limit = TimeLimit(self.cfg.SOLVER.MAX_SECONDS) \
            if self.cfg.SOLVER.MAX_SECONDS > 0 else None
        return ([self._time_limit] if self._time_limit else []) + hooks

    def run_step(self):
        if self._time_limit is None or self._time_limit.reached_at is None:
            super().run_step()

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=CellDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=CellDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_cell_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """The model with its test-time policy (YolactWithTTA where MODEL.YOLACT asks for it;
        with TEST.AUG.ENABLED, Mask R-CNN only, Detectron2's flip / multi-scale merge), both in
        --eval-only and in the evaluations during training."""
        model = with_test_time_policy(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            model = GeneralizedRCNNWithTTA(cfg, model, tta_mapper=ScaledDatasetMapperTTA(cfg))
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SOLVER.OPTIMIZER "SGD" is Detectron2's own; "AdamW" (decoupled weight decay) trains
        from random initialisation in far fewer iterations, which the CPU configs need."""
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return build_optimizer(cfg, model)
        # "AdamW": the only other name config.load_cfg accepts.
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY))
