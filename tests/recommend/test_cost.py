"""The grid cost the budget is a share of: measured, extrapolated per strategy, or estimated from step time."""

import pytest

from medtransfer.recommend.cost import GroupCost, steps_per_run

RUNS = {"end_to_end": ["e0", "e1"], "range 0.25-0.5": ["q0", "q1"], "linear": ["l0", "l1"]}
STEPS = {i: 10 for ids in RUNS.values() for i in ids}
SHARE = {"end_to_end": 1.0, "range 0.25-0.5": 0.5, "linear": 0.0}


def test_steps_per_run_repeat_a_small_subset_to_the_minimum_per_epoch():
    assert steps_per_run(n_train=12, epochs=15, batch_size=64, min_samples_per_epoch=512) == 15 * 8
    assert steps_per_run(n_train=130, epochs=2, batch_size=64, min_samples_per_epoch=0) == 2 * 3


def test_before_any_run_the_cost_is_estimated_from_step_time_and_each_strategys_share():
    cost = GroupCost(RUNS, STEPS)
    assert cost.total(0.1, SHARE) == pytest.approx(2 * 10 * 0.1 * 1.0 + 2 * 10 * 0.1 * 0.5)
    assert cost.source == "estimated"


def test_finished_runs_count_as_measured_and_stand_in_for_their_strategys_other_runs():
    cost = GroupCost(RUNS, STEPS, measured={"e0": 4.0, "l0": 1.0, "l1": 3.0})
    # end_to_end: 4 measured + 4 extrapolated; q2: estimated; linear: measured, though its estimate would be 0
    assert cost.total(0.1, SHARE) == pytest.approx(8.0 + 2 * 10 * 0.1 * 0.5 + 4.0)
    assert cost.source == "extrapolated"
    done = GroupCost(RUNS, STEPS, measured={i: 1.0 for ids in RUNS.values() for i in ids})
    assert done.total(123.0, SHARE) == pytest.approx(6.0) and done.source == "measured"


def test_a_run_is_costed_by_its_own_steps_and_unfinished_runs_by_their_strategys_seconds_per_step():
    """A run at an imbalance ratio trains fewer steps than one on the whole labelled subset (``_training_steps``)."""
    steps = {**STEPS, "e1": 4, "q1": 4}
    assert GroupCost(RUNS, steps).total(0.1, SHARE) == pytest.approx((10 + 4) * 0.1 + (10 + 4) * 0.1 * 0.5)
    cost = GroupCost(RUNS, steps, measured={"e0": 5.0, "l0": 1.0, "l1": 3.0})
    assert cost.total(0.1, SHARE) == pytest.approx(5.0 + 4 * 0.5 + (10 + 4) * 0.1 * 0.5 + 4.0)


@pytest.mark.parametrize("mode", ["subsample", "resample"])
def test_runs_at_an_imbalance_ratio_are_costed_by_the_data_they_train_on(tmp_path, mode):
    """Not by the whole labelled subset: that overstated the grid, so the probes' budget share was exceeded."""
    import numpy as np

    from medtransfer.bench.runner import prepare
    from medtransfer.config import ExperimentConfig
    from medtransfer.recommend.run import _group_costs

    cfg = ExperimentConfig.model_validate({
        "name": "cost", "datasets": [{"name": "synthetic2d", "n_train": 600, "n_val": 32, "n_test": 32, "size": 16}],
        "backbone": {"name": "resnet_tiny"}, "strategies": ["end_to_end"], "seeds": [0],
        "imbalance": {"ratios": [None, 2], "mode": mode}, "train": {"epochs": 10, "batch_size": 16}})
    prepared = prepare(cfg.model_copy(update={"imbalance": cfg.imbalance.model_copy(update={"ratios": [None]})}))
    (data,) = prepared.data.values()  # synthetic classes are balanced: make them 500 : 100 (natural ratio 5)
    data.train.labels[:] = (np.arange(600) >= 500).astype(data.train.labels.dtype)
    steps = sorted(s for cost in _group_costs(cfg, prepared, cfg.strategies, tmp_path).values()
                   for s in cost.steps.values())
    assert steps == [10 * 19, 10 * 38]  # 2 : 1 trains 200 + 100 images (a draw, or kept): 19 batches of 16, not 38
