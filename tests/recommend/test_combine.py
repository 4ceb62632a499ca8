"""The fixed combination: per-signal ranks, averaged (Borda), ties to the cheaper strategy."""

import numpy as np
import pandas as pd
import pytest

from medtransfer.finetune.strategies import parse_strategy
from medtransfer.recommend.candidates import Candidate
from medtransfer.recommend.combine import borda, relative_mean, strategy_signals


def cand(spec, trained, readout, params):
    return Candidate(parse_strategy(spec), trained, readout, params)


CANDIDATES = [cand("end_to_end", (0, 1, 2, 3), 3, 1000), cand("linear", (), 3, 10), cand("q2", (1,), 3, 300),
              cand("q4", (3,), 3, 500), cand({"name": "truncate", "keep": "0-0.5"}, (0, 1), 1, 200)]
P = np.array([0.6, 0.7, 0.8, 0.9])
R = np.array([1.0, 4.0, 2.0, 1.0])  # mean 2
S = np.array([0.1, 0.2, 0.3, 0.4])  # mean 0.25


def test_strategy_signals_read_the_readout_and_the_trained_units():
    table = strategy_signals(CANDIDATES, P, R, S).set_index("strategy")
    assert table.loc["end_to_end", ["probe", "rgn", "shift"]].tolist() == pytest.approx([0.9, 1.0, 1.0])
    assert table.loc["linear", ["probe", "rgn", "shift"]].tolist() == pytest.approx([0.9, 0.0, 0.0])
    assert table.loc["range 0.25-0.5", ["probe", "rgn", "shift"]].tolist() == pytest.approx([0.9, 2.0, 0.8])
    assert table.loc["range 0.75-1", ["probe", "rgn", "shift"]].tolist() == pytest.approx([0.9, 0.5, 1.6])
    assert table.loc["truncate 0-0.5", ["probe", "rgn", "shift"]].tolist() == pytest.approx([0.7, 1.25, 0.6])


def test_borda_gives_the_documented_ranking():
    ranked = borda(strategy_signals(CANDIDATES, P, R, S), monitor="auc")
    # probe ranks: four strategies tie at 0.9 (2.5 each), truncate last (5)
    # rgn ranks: q2 1, truncate 2, end_to_end 3, q4 4, linear 5; shift ranks: q4 1, end_to_end 2, q2 3, trunc 4, lin 5
    expected = {"range 0.25-0.5": -(2.5 + 1 + 3) / 3, "range 0.75-1": -(2.5 + 4 + 1) / 3,
                "end_to_end": -(2.5 + 3 + 2) / 3, "truncate 0-0.5": -(5 + 2 + 4) / 3, "linear": -(2.5 + 5 + 5) / 3}
    assert ranked["strategy"].tolist() == ["range 0.25-0.5", "range 0.75-1", "end_to_end", "truncate 0-0.5",
                                           "linear"]
    assert ranked["score"].tolist() == pytest.approx([expected[s] for s in ranked["strategy"]])
    assert ranked["rank"].tolist() == [1, 2, 3, 4, 5]


def test_equal_scores_go_to_the_strategy_training_fewer_parameters():
    # all tie on the probe; end_to_end wins rgn, q4 wins shift: equal scores, and q4 trains fewer parameters
    ranked = borda(strategy_signals(CANDIDATES[:1] + CANDIDATES[3:4] + CANDIDATES[1:2], P, R,
                                    np.array([0.1, 0.2, 0.3, 0.4])), monitor="auc")
    assert ranked["score"].iloc[0] == ranked["score"].iloc[1]
    assert ranked["strategy"].tolist()[:2] == ["range 0.75-1", "end_to_end"]


def test_a_lower_is_better_monitor_ranks_the_smallest_probe_value_first():
    signals = pd.DataFrame({"strategy": ["a", "b"], "probe": [0.3, 0.5], "rgn": [1.0, 1.0], "shift": [1.0, 1.0],
                            "trainable_params": [1, 1]})
    assert borda(signals, monitor="loss")["strategy"].tolist() == ["a", "b"]
    assert borda(signals, monitor="auc")["strategy"].tolist() == ["b", "a"]


def test_relative_mean_is_zero_for_no_unit_and_nan_for_an_all_zero_signal():
    assert relative_mean(R, ()) == 0.0
    assert np.isnan(relative_mean(np.zeros(4), (1,)))
