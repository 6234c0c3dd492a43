"""The wall-time plan of make train-real, on numbers (no training)."""
import pytest

from cellseg_d2.budget import (
    ITERATION_MARGIN,
    BudgetError,
    plan,
    plan_synthetic_only,
    replan,
)

CALIBRATIONS = [  # (synthetic s/it, real s/it, start-up s): tiny test scale to a slow CPU
    (0.5, 0.4, 5.0), (1.5, 1.5, 20.0), (3.4, 3.0, 30.0), (0.1, 10.0, 2.0), (10.0, 0.1, 2.0)]


@pytest.mark.parametrize("syn,real,startup", CALIBRATIONS)
@pytest.mark.parametrize("share", [0.0, 0.1, 0.35, 0.9])
def test_the_plan_fits_the_time_left_or_is_refused(syn, real, startup, share):
    s_it = {"synthetic": syn, "real": real}
    stages = 2 if share > 0 else 1
    for left in (10, 60, 300, 3600):
        try:
            pre, fine = plan(left, s_it, startup, share)
        except BudgetError:
            continue
        assert fine >= 1 and (pre >= 1 if share > 0 else pre == 0)
        # both stages at their calibrated speed (plus the margin the fine-tuning's last
        # iterations get) with their start-ups end within the time left
        assert stages * startup + pre * syn + fine * real * ITERATION_MARGIN <= left
        # and use it: one more fine-tuning iteration would not have fit
        assert stages * startup + pre * syn + (fine + 1) * real * ITERATION_MARGIN > left
        assert pre * syn * ITERATION_MARGIN <= share * (left - stages * startup)


def test_an_hour_on_the_reference_machine():
    """The README's run: 3.0 s/it float32 on a 2-core EPYC, 35% pretraining."""
    pre, fine = plan(3600 - 80 - 180, {"synthetic": 3.4, "real": 3.0}, 15.0, 0.35)
    # 3310 s of training: 35% at 3.4 * 1.02 s/it, the rest at 3.0 * 1.02
    assert (pre, fine) == (334, 710)


@pytest.mark.parametrize("syn,real,startup", CALIBRATIONS)
@pytest.mark.parametrize("share", [0.0, 0.35, 0.9])
def test_a_refusal_names_a_budget_that_fits(syn, real, startup, share):
    s_it = {"synthetic": syn, "real": real}
    spent = 40.0  # calibrations and the evaluation's reserve
    with pytest.raises(BudgetError) as refused:
        plan(startup, s_it, startup, share, spent)
    minutes = float(str(refused.value).split("--minutes ")[1].split()[0])
    pre, fine = plan(minutes * 60 - spent, s_it, startup, share, spent)
    assert fine >= 1 and (pre >= 1) == (share > 0)


def test_synthetic_only_plan():
    assert plan_synthetic_only(100, 1.0, 10.0) == int(90 / ITERATION_MARGIN)
    with pytest.raises(BudgetError, match=r"--minutes 1\.2 or more"):
        plan_synthetic_only(20, 1.0, 20.0, spent_s=50)  # 50 + 20 + 1.02 s


def test_replan_follows_the_measured_drift():
    assert replan(110, 1.0, 1.0, 8.0) == int(102 / ITERATION_MARGIN)
    assert replan(110, 1.0, 2.0, 8.0) == int(51 / ITERATION_MARGIN)  # twice as slow
    assert replan(110, 1.0, 0.5, 8.0) == int(102 / (0.9 * ITERATION_MARGIN))  # counts to 0.9x
    assert replan(110, 1.0, float("nan"), 8.0) == replan(110, 1.0, 1.0, 8.0)
    # past the time left: one iteration, which the fine-tuning's time limit bounds
    assert replan(5, 1.0, 1.0, 8.0) == 1


def test_more_time_never_means_fewer_iterations():
    s_it = {"synthetic": 1.3, "real": 1.1}
    last = (0, 0)
    for left in range(30, 400, 7):
        try:
            now = plan(left, s_it, 10.0, 0.35)
        except BudgetError:
            continue
        assert now[0] >= last[0] and sum(now) >= sum(last)
        last = now
