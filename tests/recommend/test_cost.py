"""The grid cost the budget is a share of: measured, extrapolated per strategy, or estimated from step time."""

import pytest

from medtransfer.recommend.cost import GroupCost, steps_per_run

RUNS = {"end_to_end": ["e0", "e1"], "range 0.25-0.5": ["q0", "q1"], "linear": ["l0", "l1"]}
SHARE = {"end_to_end": 1.0, "range 0.25-0.5": 0.5, "linear": 0.0}


def test_steps_per_run_repeat_a_small_subset_to_the_minimum_per_epoch():
    assert steps_per_run(n_train=12, epochs=15, batch_size=64, min_samples_per_epoch=512) == 15 * 8
    assert steps_per_run(n_train=130, epochs=2, batch_size=64, min_samples_per_epoch=0) == 2 * 3


def test_before_any_run_the_cost_is_estimated_from_step_time_and_each_strategys_share():
    cost = GroupCost(RUNS, steps_per_run=10)
    assert cost.total(0.1, SHARE) == pytest.approx(2 * 10 * 0.1 * 1.0 + 2 * 10 * 0.1 * 0.5)
    assert cost.source == "estimated"


def test_finished_runs_count_as_measured_and_stand_in_for_their_strategys_other_runs():
    cost = GroupCost(RUNS, steps_per_run=10, measured={"e0": 4.0, "l0": 1.0, "l1": 3.0})
    # end_to_end: 4 measured + 4 extrapolated; q2: estimated; linear: measured, though its estimate would be 0
    assert cost.total(0.1, SHARE) == pytest.approx(8.0 + 2 * 10 * 0.1 * 0.5 + 4.0)
    assert cost.source == "extrapolated"
    done = GroupCost(RUNS, steps_per_run=10, measured={i: 1.0 for ids in RUNS.values() for i in ids})
    assert done.total(123.0, SHARE) == pytest.approx(6.0) and done.source == "measured"
