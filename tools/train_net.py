#!/usr/bin/env python
"""Train / evaluate YOLACT (or Detectron2's Mask R-CNN) on the registered cell datasets.

    tools/train_net.py --config-file configs/synthetic_R18_cpu.yaml [--eval-only] [--resume]
                       [--num-gpus N] [KEY VALUE ...]

SOLVER.EPOCHS > 0 sets the iterations from the training set size (see cellseg_d2/config.py).
--num-gpus N runs N processes: one per GPU, or on a machine without CUDA N CPU processes
(gloo) sharing the cores; SOLVER.IMS_PER_BATCH is the total over the processes.
"""
import logging
import os
import re
import sys

import torch
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm

import cellseg_d2  # noqa: F401  (registers datasets and the Yolact meta-architecture)
from cellseg_d2.checkpoint import FittingCheckpointer, check_weights, load_weights
from cellseg_d2.config import SetupError, apply_epochs, load_cfg, num_classes
from cellseg_d2.data.coco_checks import COCOFormatError
from cellseg_d2.data.datasets import DatasetMissingError
from cellseg_d2.diameter import training_cell_diameters
from cellseg_d2.engine import Trainer
from cellseg_d2.utils import keep_freed_memory, write_json


class TrainingDiverged(RuntimeError):
    pass


def setup(args):
    cfg = load_cfg(args.config_file, args.opts)
    check_weights(cfg.MODEL.WEIGHTS)
    per_epoch = apply_epochs(cfg)
    if not args.eval_only and cfg.DATASETS.TRAIN:
        # A property of the training cells, recorded in OUTPUT_DIR/config.yaml with the model
        # (predict --diameter scales by it).
        cfg.MODEL.CELL_DIAMETER, cfg.MODEL.CELL_DIAMETER_BY_CLASS = \
            training_cell_diameters(cfg.DATASETS.TRAIN, num_classes(cfg))
    cfg.freeze()
    default_setup(cfg, args)
    if per_epoch:
        logging.getLogger("cellseg_d2").info(
            f"{cfg.SOLVER.EPOCHS:g} epochs x {per_epoch} iterations = {cfg.SOLVER.MAX_ITER} "
            f"iterations, LR steps at {cfg.SOLVER.STEPS}, eval every {cfg.TEST.EVAL_PERIOD}")
    return cfg


def diverged(error: FloatingPointError, cfg) -> TrainingDiverged:
    """Detectron2's 'Loss became infinite or NaN at iteration=N! loss_dict = {...}' as one line
    that says which setting to look at."""
    text = str(error)
    it = re.search(r"iteration=(\d+)", text)
    losses = re.search(r"loss_dict = (\{.*\})", text, re.S)
    return TrainingDiverged(
        f"training diverged at iteration {it.group(1) if it else '?'}: non-finite loss "
        f"{losses.group(1).replace(chr(10), ' ') if losses else ''}; lower SOLVER.BASE_LR "
        f"(now {cfg.SOLVER.BASE_LR:g}) or enable SOLVER.CLIP_GRADIENTS "
        f"(now {'on' if cfg.SOLVER.CLIP_GRADIENTS.ENABLED else 'off'})")


class _NoNonFiniteTraceback(logging.Filter):
    """Detectron2's training loop logs the FloatingPointError of a diverging run with a full
    traceback before re-raising it; train_net reports it as one line instead."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], FloatingPointError))


def run(args):
    keep_freed_memory()  # before the first large allocation
    if args.num_gpus > 1 and not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // args.num_gpus))
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(FittingCheckpointer(model, save_dir=cfg.OUTPUT_DIR), cfg.MODEL.WEIGHTS,
                     args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            path = os.path.join(cfg.OUTPUT_DIR, "inference", "results.json")
            write_json(path, results)
            logging.getLogger("cellseg_d2").info(f"all metrics -> {path}")
        return results
    trainer = Trainer(cfg)
    load_weights(trainer.checkpointer, cfg.MODEL.WEIGHTS, args.resume)
    if args.resume and trainer.checkpointer.has_checkpoint():
        trainer.start_iter = trainer.iter + 1
    logging.getLogger("detectron2.engine.train_loop").addFilter(_NoNonFiniteTraceback())
    try:
        return trainer.train()
    except FloatingPointError as e:
        raise diverged(e, cfg) from None


def main(args):
    """Runs in every process; a user error is one line on stderr and exit status 1."""
    try:
        return run(args)
    except (SetupError, DatasetMissingError, COCOFormatError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    parser = default_argument_parser()
    args = parser.parse_args()
    if args.num_machines == 1 and args.dist_url == parser.get_default("dist_url"):
        args.dist_url = "auto"  # a free port: two runs on one machine do not collide
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except mp.ProcessExitedException as e:  # a worker already printed its error line
        sys.exit(e.exit_code or 1)
