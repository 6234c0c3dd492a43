"""Checkpoint loading that refuses a file that does not fit the model, in one line.

Detectron2 (through fvcore) loads what matches and only logs warnings for the rest, so a
checkpoint of another architecture silently leaves the model at random weights. For inference
(predict, --eval-only) every tensor must load. For training (``fine_tune``) also accepted:
- class-prediction layers of another shape (a fine-tune to other classes re-initialises them
  on purpose);
- a backbone-only checkpoint (ImageNet weights): every tensor of the ResNet trunk must load,
  the FPN and heads start from their initialisation.
"""
import os
import urllib.error

from detectron2.checkpoint import DetectionCheckpointer

from .config import SetupError

TRUNK = "backbone.bottom_up."
# Layers whose output size is a function of the number of classes.
CLASS_LAYERS = ("head.cls.", "semantic_head.", "roi_heads.box_predictor.",
                "roi_heads.mask_head.predictor.")


def _examples(keys, n: int = 2) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def fit_problems(model_keys, incompatible, fine_tune: bool = False) -> list:
    """What does not fit, as short phrases (empty when the checkpoint fits)."""
    wrong_shape = {k: (tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes}
    missing = set(incompatible.missing_keys) - set(wrong_shape)  # fvcore lists them in both
    unexpected = set(incompatible.unexpected_keys)
    loaded = set(model_keys) - missing - set(wrong_shape)
    if not loaded:
        return ["no tensor of it matches the model (a checkpoint of another architecture?)"]
    full = any(not k.startswith(TRUNK) for k in loaded)
    if fine_tune and not full:  # backbone-only: the trunk must load whole, the rest starts fresh
        missing = {k for k in missing if k.startswith(TRUNK)}
        unexpected = set()
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensor(s) missing: {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the model does not have: "
                        f"{_examples(unexpected)}")
    shapes = {k: v for k, v in wrong_shape.items()
              if not (fine_tune and k.startswith(CLASS_LAYERS))}
    if shapes:
        k = sorted(shapes)[0]
        problems.append(f"{len(shapes)} tensor(s) of another shape, e.g. {k} {list(shapes[k][0])} "
                        f"in the file vs {list(shapes[k][1])} in the model")
    return problems


class FittingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that raises SetupError (one line, naming the file) for an
    unreadable checkpoint or one that does not fit the model (see module docstring)."""

    def __init__(self, model, save_dir: str = "", *, fine_tune: bool = False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.fine_tune = fine_tune

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch.load / pickle raise many types for a file that is not one
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise SetupError(f"{filename}: not a readable checkpoint "
                             f"({type(e).__name__}: {first})") from None

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = fit_problems(self.model.state_dict().keys(), incompatible, self.fine_tune)
        if problems:
            name = type(self.model).__name__
            use = "fine-tuning" if self.fine_tune else "inference"
            raise SetupError(f"{self._loading}: checkpoint does not fit this {name} model "
                             f"for {use}: "
                             + "; ".join(problems))
        return incompatible

    def load(self, path, *args, **kwargs):
        self._loading = path
        return super().load(path, *args, **kwargs)


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
