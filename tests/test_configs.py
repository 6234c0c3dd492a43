import glob
import json
import os

import numpy as np
import pytest
import torch
import yaml
from detectron2.modeling import build_model

import cellseg_d2  # noqa: F401
from cellseg_d2.config import SetupError, load_cfg
from cellseg_d2.engine import CPUAutocastTrainer, Trainer

from .conftest import CONFIG, REPO, TINY

CONFIGS = sorted(glob.glob(str(REPO / "configs" / "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_builds(path):
    cfg = load_cfg(path, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    # cells per image reach ~800 in Sartorius; LIVECell's evaluation keeps 2000
    livecell = any(d.startswith("livecell") for d in cfg.DATASETS.TEST)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == (2000 if livecell else 1000)
    if cfg.MODEL.META_ARCHITECTURE == "Yolact":
        assert cfg.MODEL.YOLACT.TOPK_CANDIDATES_TEST >= cfg.TEST.DETECTIONS_PER_IMAGE
    expected = "Yolact" if cfg.MODEL.META_ARCHITECTURE == "Yolact" else "GeneralizedRCNN"
    assert type(model).__name__ == expected


def test_wrong_key_and_missing_file_are_one_line_errors():
    with pytest.raises(SetupError, match="unknown config key MODEL.YOLACT.NOPE"):
        load_cfg(CONFIGS[0], ["MODEL.YOLACT.NOPE", "1"])
    with pytest.raises(SetupError, match="nope.yaml: config file not found"):
        load_cfg("nope.yaml")
    with pytest.raises(SetupError, match="YOLACT's is MODEL.YOLACT.TEST_FLIPS"):
        load_cfg(str(REPO / "configs" / "real_R18_cpu.yaml"), ["TEST.AUG.ENABLED", "True"])


def test_optimizer_choice():
    cfg = load_cfg(str(REPO / "configs" / "overfit12_R18_cpu.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == cfg.SOLVER.BASE_LR
    cfg.defrost()
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(Trainer.build_optimizer(cfg, model), torch.optim.SGD)
    with pytest.raises(SetupError, match="SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got 'Adam'"):
        load_cfg(CONFIGS[0], ["SOLVER.OPTIMIZER", "Adam"])


def _keys_set(path) -> set:
    """Dotted keys a YAML config and its _BASE_ chain set."""
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    keys = set()
    if "_BASE_" in data:
        keys |= _keys_set(os.path.join(os.path.dirname(path), data.pop("_BASE_")))

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                keys.add(prefix + k)
    walk(data, "")
    return keys


@pytest.mark.parametrize("name", ["Base-MaskRCNN.yaml", "maskrcnn_R18_cpu.yaml",
                                  "real_maskrcnn_R18_cpu.yaml"])
def test_maskrcnn_baseline_keeps_detectron2_defaults(name):
    """add_yolact_config only adds keys: every stock key a Mask R-CNN config does not set has
    Detectron2's default value (e.g. the anchor offset, 0.0, not YOLACT's 0.5)."""
    from detectron2.config import get_cfg

    path = str(REPO / "configs" / name)
    cfg, stock = load_cfg(path), get_cfg()
    set_here = _keys_set(path) | {"MODEL.DEVICE"}  # load_cfg picks cpu without CUDA

    def walk(node, ours, prefix):
        for k, v in node.items():
            key = prefix + k
            if hasattr(v, "items"):
                walk(v, ours[k], key + ".")
            elif key not in set_here:
                assert ours[k] == v, key
    walk(stock, cfg, "")
    assert cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.0


def test_mask_rcnn_test_time_augmentation_wraps_every_evaluation(monkeypatch):
    """TEST.AUG applies in Trainer.test, which both --eval-only and the evaluation at the end of
    tools/train_real.py's training go through."""
    from detectron2.engine import DefaultTrainer
    from detectron2.modeling import GeneralizedRCNNWithTTA

    cfg = load_cfg(str(REPO / "configs" / "real_maskrcnn_R18_cpu.yaml"), ["MODEL.DEVICE", "cpu"])
    assert cfg.TEST.AUG.ENABLED
    model = build_model(cfg)
    seen = []
    monkeypatch.setattr(DefaultTrainer, "test", classmethod(
        lambda cls, cfg, model, evaluators=None: seen.append(model)))
    Trainer.test(cfg, model)
    cfg.defrost()
    cfg.TEST.AUG.ENABLED = False
    Trainer.test(cfg, model)
    assert isinstance(seen[0], GeneralizedRCNNWithTTA) and seen[1] is model


def test_amp_on_cpu_trains_in_bfloat16(tiny_synthetic, tmp_path, monkeypatch):
    """SOLVER.AMP.ENABLED on a CPU (Detectron2's AMPTrainer needs CUDA): convolutions run in
    bfloat16, the weights, their gradients and the logged losses stay float32, and the model
    learns (the update moves every trained layer)."""
    monkeypatch.setenv("CELLSEG_DATASETS", str(tiny_synthetic))
    cfg = load_cfg(CONFIG, [*TINY, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "3",
                            "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
                            "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, CPUAutocastTrainer)
    model = trainer.model
    conv_dtypes = []
    model.backbone.bottom_up.stem.conv1.register_forward_hook(
        lambda module, inputs, output: conv_dtypes.append(output.dtype))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    assert conv_dtypes == [torch.bfloat16] * 3
    after = model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    moved = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.bottom_up") for k in moved)
    assert any(k.startswith("protonet") for k in moved), sorted(after)[:20]
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert metrics and all(np.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)
    assert (tmp_path / "model_final.pth").is_file()


def _leaves(node: dict, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _same(a, b) -> bool:
    def norm(v):
        return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v
    return norm(a) == norm(b)


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_child_configs_hold_only_what_they_change(path):
    """A config with a _BASE_ sets only keys whose value differs from its parent's (merged
    with the defaults): a repeated value would hide what the child changes, and stop
    following the parent when the parent changes."""
    child = yaml.safe_load((REPO / "configs" / path).read_text())
    if "_BASE_" not in child:
        return
    from detectron2.config import get_cfg

    from cellseg_d2.config import add_yolact_config

    parent = get_cfg()
    add_yolact_config(parent)
    parent.merge_from_file(str(REPO / "configs" / child.pop("_BASE_")))
    repeated = []
    for key, value in _leaves(child):
        node = parent
        for part in key.split("."):
            node = node[part]
        if _same(node, value):
            repeated.append(f"{key}: {value!r}")
    assert not repeated, f"{path} repeats its parent's " + ", ".join(repeated)


def test_one_schedule_derivation():
    """config.schedule_opts serves SOLVER.EPOCHS, the demo and the recipe's stages."""
    from cellseg_d2.config import schedule_opts
    from cellseg_d2.recipe import schedule

    assert schedule(745) == ["SOLVER.MAX_ITER", 745, "SOLVER.STEPS", "(596, 707)",
                             "SOLVER.WARMUP_ITERS", 30]
    assert schedule(12) == ["SOLVER.MAX_ITER", 12, "SOLVER.STEPS", "()",
                            "SOLVER.WARMUP_ITERS", 3]
    assert schedule_opts(300, (0.8,), max_warmup=50, warmup_divisor=3) == [
        "SOLVER.MAX_ITER", 300, "SOLVER.STEPS", "(240,)", "SOLVER.WARMUP_ITERS", 50]
    cfg = load_cfg(CONFIG, ["SOLVER.MAX_ITER", "7"])
    cfg.merge_from_list([str(v) for v in schedule(40)])
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS) == (40, (32, 38), 10)
