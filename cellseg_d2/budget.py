"""How `make train-real` shares its wall-time budget between its training stages.

Every stage is a separate Detectron2 run: it costs a start-up (loading, building the model, the
first data) and then its iterations at the seconds per iteration calibrated on this machine.
The plan sizes the stages to fit the time left; a budget that cannot hold one iteration of each
stage is refused (BudgetError, naming the budget that would), never silently overrun.
"""
from __future__ import annotations

import math

# Planned seconds per iteration over the calibrated (6 iterations): a stage of hundreds drifts
# by about +-2% on an idle machine.
ITERATION_MARGIN = 1.02
# The re-plan counts a pretraining faster than calibrated down to 0.9x: bfloat16 iterations
# speed up over the first ~50 (to ~0.8x the 6 calibrated on one core), float32 ones by +-5%.
MIN_DRIFT = 0.9


class BudgetError(ValueError):
    pass


def _refuse(what: str, needed_s: float, spent_s: float) -> BudgetError:
    minutes = math.ceil((spent_s + needed_s) / 60 * 10) / 10
    return BudgetError(f"the budget leaves too little time for {what} on this machine: pass "
                       f"--minutes {minutes:g} or more")


def plan(left_s: float, s_it: dict, startup_s: float, pretrain_share: float,
         spent_s: float = 0.0) -> tuple[int, int]:
    """(pretraining iterations, fine-tuning iterations) that fit ``left_s`` seconds (the budget
    less the time spent and the evaluation's reserve), at ``s_it`` {"synthetic", "real"}
    seconds per iteration, each stage starting up in ``startup_s``; pretraining gets
    ``pretrain_share`` of the training time (0: none). ``spent_s`` (the time already spent plus
    the reserve) only sizes the budget a refusal names."""
    syn, real = s_it.get("synthetic", 0.0), s_it["real"]
    stages = 2 if pretrain_share > 0 else 1
    train = left_s - stages * startup_s
    pre = int(train * pretrain_share / (syn * ITERATION_MARGIN)) if pretrain_share > 0 else 0
    fine = int((train - pre * syn) / (real * ITERATION_MARGIN))
    if (pretrain_share > 0 and pre < 1) or fine < 1:
        # enough for both: pretraining takes at most pretrain_share / ITERATION_MARGIN of it
        rest = max(1e-3, 1 - pretrain_share / ITERATION_MARGIN)
        needed = stages * startup_s + (
            max(syn * ITERATION_MARGIN / pretrain_share, real * ITERATION_MARGIN / rest)
            if pretrain_share > 0 else real * ITERATION_MARGIN)
        raise _refuse("one iteration of each stage", needed, spent_s)
    return pre, fine


def replan(left_s: float, s_real: float, drift: float, startup_s: float) -> int:
    """Fine-tuning iterations for the time ``left_s`` after pretraining, the real images'
    calibrated ``s_real`` scaled by the pretraining's measured/calibrated ``drift`` (both were
    timed in the same conditions; a longer run on a busy machine drifts the same way; NaN: too
    short to log a time, taken as 1). At least 1: the pretraining is done, and the fine-tuning's
    time limit still bounds a stage slower than planned."""
    drift = drift if drift == drift else 1.0
    return max(1, int((left_s - startup_s) / (s_real * max(drift, MIN_DRIFT) * ITERATION_MARGIN)))


def plan_synthetic_only(left_s: float, s_synthetic: float, startup_s: float,
                        spent_s: float = 0.0) -> int:
    """Iterations of the one synthetic stage (--synthetic-only) that fit ``left_s`` seconds."""
    pre = int((left_s - startup_s) / (s_synthetic * ITERATION_MARGIN))
    if pre < 1:
        raise _refuse("one training iteration", startup_s + s_synthetic * ITERATION_MARGIN,
                      spent_s)
    return pre
