"""What each strategy trains and where its head reads, read back from the strategy itself."""

from functools import partial

import numpy as np
import pytest

from medtransfer.finetune.strategies import parse_strategy
from medtransfer.models.factory import create_backbone
from medtransfer.recommend.candidates import describe, ranked_strategies

build = partial(create_backbone, "resnet_tiny", 1, (16, 16), False)  # stage view: 4 units


def candidate(spec):
    return describe(parse_strategy(spec), build, "stage", num_outputs=3)


@pytest.mark.parametrize("spec, trained, readout", [
    ("q2", (1,), 3),  # the 2nd of 4 units, head on the last
    ("end_to_end", (0, 1, 2, 3), 3),
    ("linear", (), 3),
    ("knn", (), 3),
    ("warmup", (0, 1, 2, 3), 3),  # unfreezes everything after its frozen epochs
    ("lwlr_decay", (0, 1, 2, 3), 3),
    ({"name": "truncate", "keep": "0-0.5"}, (0, 1), 1),  # the head reads the 2nd unit
    ({"name": "truncate", "keep": "0-0.75", "train": "0.5-0.75"}, (2,), 2),
    ({"name": "range", "range": "q2-q3"}, (1, 2), 3),
])
def test_trained_units_and_readout(spec, trained, readout):
    c = candidate(spec)
    assert (c.trained, c.readout) == (trained, readout)


def test_trainable_parameters_count_what_trains_plus_the_head():
    backbone = build()
    units = [sum(p.numel() for p in unit) for unit in backbone.unit_parameters("stage")]
    head = (backbone.num_features + 1) * 3
    assert candidate("linear").trainable_params == head
    assert candidate("q2").trainable_params == units[1] + head
    assert candidate("end_to_end").trainable_params == sum(units) + head


def test_step_share_covers_the_units_from_the_first_trained_to_the_readout():
    seconds = np.array([4.0, 3.0, 2.0, 1.0])
    assert candidate("end_to_end").step_share(seconds) == pytest.approx(1.0)
    assert candidate("q2").step_share(seconds) == pytest.approx(0.6)  # units 1-3 run forward and backward
    assert candidate({"name": "truncate", "keep": "0-0.5"}).step_share(seconds) == pytest.approx(0.7)
    assert candidate("linear").step_share(seconds) == 0.0


def test_the_experiments_depth_strategies_are_ranked_as_given():
    given = [parse_strategy(s) for s in ("end_to_end", "linear", "q2")]
    assert [s.label() for s in ranked_strategies(given, all_depths=False)] == ["end_to_end", "linear",
                                                                                 "range 0.25-0.5"]


def test_all_depths_when_asked_or_when_no_strategy_chooses_a_depth():
    expected = ["end_to_end", "linear", "range 0-0.25", "range 0.25-0.5", "range 0.5-0.75", "range 0.75-1",
                "truncate 0-0.25", "truncate 0-0.5", "truncate 0-0.75"]
    assert [s.label() for s in ranked_strategies([parse_strategy("end_to_end")], all_depths=False)] == expected
    with_knn = ranked_strategies([parse_strategy("knn"), parse_strategy("q2")], all_depths=True)
    assert [s.label() for s in with_knn] == ["knn k=20 T=0.07", "range 0.25-0.5"] + [
        label for label in expected if label != "range 0.25-0.5"]


@pytest.mark.parametrize("name, size, view", [("vit_micro", (16, 16), "block"), ("resnet_tiny_3d", (12, 12, 12),
                                                                                "stage")])
def test_the_same_reading_for_a_vit_and_a_3d_backbone(name, size, view):
    other = partial(create_backbone, name, 1, size, False, spatial_dims=len(size))
    q2 = describe(parse_strategy("q2"), other, view, num_outputs=2)
    cut = describe(parse_strategy({"name": "truncate", "keep": "0-0.5"}), other, view, num_outputs=2)
    assert (q2.trained, q2.readout) == ((1,), 3) and (cut.trained, cut.readout) == ((0, 1), 1)
