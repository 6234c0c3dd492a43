#!/usr/bin/env python
"""Train / evaluate YOLACT (or any Detectron2 model) on the registered cell datasets.

    tools/train_net.py --config-file configs/synthetic_R18_cpu.yaml [--eval-only] [--resume]
                       [--num-gpus N] [KEY VALUE ...]
"""
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch

import cellseg_d2  # noqa: F401  (registers datasets and the Yolact meta-architecture)
from cellseg_d2 import add_yolact_config
from cellseg_d2.engine import Trainer


def setup(args):
    cfg = get_cfg()
    add_yolact_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    sys.exit(launch(main, args.num_gpus, num_machines=args.num_machines,
                    machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,)) and 0)
