"""Trainer: Detectron2's DefaultTrainer with the cell mapper, a per-class COCO evaluator that
keeps up to TEST.DETECTIONS_PER_IMAGE (1000) detections per image, and the Kaggle metric.
Runs as N processes on CPUs too (gloo; `tools/train_net.py --num-gpus N`)."""
import contextlib
import functools
import os
import time
import weakref
from unittest import mock

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, defaults
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.solver import build_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from .checkpoint import FittingCheckpointer
from .data.mapper import CellDatasetMapper
from .evaluation import CellCOCOEvaluator, KaggleMetricEvaluator


def build_cell_evaluator(cfg, dataset_name, output_folder):
    # pycocotools' summarize() reports AP at 100 detections; max_dets_per_image switches to
    # COCOevalMaxDets so AP is read at the real cap (cells per image reach ~800).
    return DatasetEvaluators([
        CellCOCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=True,
                          output_dir=output_folder,
                          max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE),
        KaggleMetricEvaluator(dataset_name, cfg.TEST.INSTANCE_SCORE_THRESH),
    ])


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


@contextlib.contextmanager
def cpu_training(cfg):
    """Detectron2's create_ddp_model passes device_ids=[local rank], which DDP refuses for a
    model on the CPU; there it must be None. Its AMPTrainer needs CUDA: on the CPU,
    SOLVER.AMP.ENABLED takes CPUAutocastTrainer instead."""
    if not cfg.MODEL.DEVICE.startswith("cpu"):
        yield
        return
    ddp = functools.partial(defaults.create_ddp_model, device_ids=None)
    with mock.patch.object(defaults, "create_ddp_model", ddp), \
            mock.patch.object(defaults, "AMPTrainer", CPUAutocastTrainer):
        yield


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        with cpu_training(cfg):
            super().__init__(cfg)
        # Loads (MODEL.WEIGHTS, --resume) refuse a checkpoint that does not fit; saving is
        # unchanged (the checkpoint hook keeps the checkpointer it was built with).
        self.checkpointer = FittingCheckpointer(self._trainer.model, cfg.OUTPUT_DIR,
                                                fine_tune=True, trainer=weakref.proxy(self))

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
        """With TEST.AUG.ENABLED (Mask R-CNN only: config.load_cfg refuses it for YOLACT, whose
        test-time flips live in the model), Detectron2's flip / multi-scale merge, both in
        --eval-only and in the evaluations during training."""
        if cfg.TEST.AUG.ENABLED:
            model = GeneralizedRCNNWithTTA(cfg, model)
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
