#!/usr/bin/env python
"""Train / evaluate YOLACT (or Detectron2's Mask R-CNN) on the registered cell datasets.

    tools/train_net.py --config-file configs/synthetic_R18_cpu.yaml [--eval-only] [--resume]
                       [--num-gpus N] [KEY VALUE ...]

SOLVER.EPOCHS > 0 sets the iterations from the training set size (see cellseg_d2/config.py).
"""
import logging
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch

import cellseg_d2  # noqa: F401  (registers datasets and the Yolact meta-architecture)
from cellseg_d2.data.datasets import DatasetMissingError
from cellseg_d2.engine import Trainer
from cellseg_d2.setup_cfg import SetupError, apply_epochs, check_weights, load_cfg, load_weights
from cellseg_d2.utils import keep_freed_memory


def setup(args):
    cfg = load_cfg(args.config_file, args.opts)
    check_weights(cfg.MODEL.WEIGHTS)
    per_epoch = apply_epochs(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    if per_epoch:
        logging.getLogger("cellseg_d2").info(
            f"{cfg.SOLVER.EPOCHS:g} epochs x {per_epoch} iterations = {cfg.SOLVER.MAX_ITER} "
            f"iterations, LR steps at {cfg.SOLVER.STEPS}, eval every {cfg.TEST.EVAL_PERIOD}")
    return cfg


def main(args):
    keep_freed_memory()  # before the first large allocation; see its docstring
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR), cfg.MODEL.WEIGHTS,
                     args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    load_weights(trainer.checkpointer, cfg.MODEL.WEIGHTS, args.resume)
    if args.resume and trainer.checkpointer.has_checkpoint():
        trainer.start_iter = trainer.iter + 1
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except (SetupError, DatasetMissingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
