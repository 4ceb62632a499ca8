import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medtransfer.errors import ConfigError
from medtransfer.evaluate import METRICS, compute_metrics

# Fixed small inputs; every expectation below is recomputed with scikit-learn or by hand.
Y_BIN = np.array([0, 1, 1, 0, 1, 0, 1, 1])
P_BIN = np.array([0.2, 0.7, 0.4, 0.6, 0.9, 0.1, 0.3, 0.8])
S_BIN = np.column_stack([1 - P_BIN, P_BIN])

Y_MC = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 2])
S_MC = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.1, 0.6, 0.3],
        [0.2, 0.3, 0.5],
        [0.1, 0.5, 0.4],
        [0.3, 0.4, 0.3],
        [0.4, 0.4, 0.2],
        [0.1, 0.1, 0.8],
        [0.5, 0.3, 0.2],
        [0.6, 0.1, 0.3],
        [0.2, 0.2, 0.6],
    ]
)

Y_ML = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
S_ML = np.array(
    [
        [0.9, 0.2, 0.6],
        [0.3, 0.8, 0.4],
        [0.6, 0.4, 0.2],
        [0.2, 0.1, 0.7],
        [0.4, 0.6, 0.1],
        [0.1, 0.7, 0.9],
    ]
)

Y_ORD = np.array([0, 1, 2, 3, 4, 2, 1, 3, 0, 4])
PRED_ORD = np.array([0, 2, 2, 1, 4, 3, 1, 3, 1, 2])
S_ORD = np.eye(5)[PRED_ORD] * 0.6 + 0.1  # softmax-like rows whose argmax is PRED_ORD


def test_binary_matches_sklearn():
    overall, per_class = compute_metrics("binary", Y_BIN, S_BIN)
    pred = S_BIN.argmax(1)
    assert overall["auc"] == pytest.approx(skm.roc_auc_score(Y_BIN, P_BIN))
    assert overall["acc"] == pytest.approx(skm.accuracy_score(Y_BIN, pred))
    assert overall["bacc"] == pytest.approx(skm.balanced_accuracy_score(Y_BIN, pred))
    assert overall["f1"] == pytest.approx(skm.f1_score(Y_BIN, pred, average="macro"))
    assert per_class["recall"] == pytest.approx(skm.recall_score(Y_BIN, pred, average=None))
    assert per_class["auc"][1] == overall["auc"]
    assert set(overall) == {"auc", "acc", "bacc", "f1", "ap", "precision"}  # kappa/mae skipped: not ordinal


def test_multiclass_matches_sklearn():
    overall, per_class = compute_metrics("multiclass", Y_MC, S_MC)
    pred = S_MC.argmax(1)
    ovr = [skm.roc_auc_score(Y_MC == c, S_MC[:, c]) for c in range(3)]
    assert per_class["auc"] == pytest.approx(ovr)
    assert overall["auc"] == pytest.approx(skm.roc_auc_score(Y_MC, S_MC, multi_class="ovr"))
    assert overall["acc"] == pytest.approx(skm.accuracy_score(Y_MC, pred))
    assert overall["bacc"] == pytest.approx(skm.balanced_accuracy_score(Y_MC, pred))
    assert overall["f1"] == pytest.approx(skm.f1_score(Y_MC, pred, average="macro"))
    assert per_class["f1"] == pytest.approx(skm.f1_score(Y_MC, pred, average=None))
    assert per_class["recall"] == pytest.approx(skm.recall_score(Y_MC, pred, average=None))


def test_multilabel_matches_sklearn():
    overall, per_class = compute_metrics("multilabel", Y_ML, S_ML)
    pred = (S_ML > 0.5).astype(int)
    labels = range(Y_ML.shape[1])
    assert overall["auc"] == pytest.approx(skm.roc_auc_score(Y_ML, S_ML, average="macro"))
    assert overall["acc"] == pytest.approx(np.mean([skm.accuracy_score(Y_ML[:, i], pred[:, i]) for i in labels]))
    bacc = [skm.balanced_accuracy_score(Y_ML[:, i], pred[:, i]) for i in labels]
    assert overall["bacc"] == pytest.approx(np.mean(bacc))
    assert overall["f1"] == pytest.approx(skm.f1_score(Y_ML, pred, average="macro"))
    assert per_class["f1"] == pytest.approx(skm.f1_score(Y_ML, pred, average=None))
    assert per_class["recall"] == pytest.approx(skm.recall_score(Y_ML, pred, average=None))
    assert len(per_class["auc"]) == 3


def test_multilabel_threshold_is_strictly_greater_than_half():
    y = np.array([[1], [0]])
    assert METRICS["acc"]("multilabel", y, np.array([[0.5], [0.2]]))[0] == 0.5
    assert METRICS["acc"]("multilabel", y, np.array([[0.51], [0.2]]))[0] == 1.0


def test_ordinal_kappa_and_mae():
    overall, _ = compute_metrics("ordinal", Y_ORD, S_ORD)
    assert overall["kappa"] == pytest.approx(skm.cohen_kappa_score(Y_ORD, PRED_ORD, weights="quadratic"))
    # |0-0|+|1-2|+|2-2|+|3-1|+|4-4|+|2-3|+|1-1|+|3-3|+|0-1|+|4-2| = 7 over 10 samples
    assert overall["mae"] == pytest.approx(0.7)


def test_kappa_by_hand_and_weights_by_grade_not_rank():
    # O = [[1,0,0],[0,0,1],[0,0,1]], chance-weighted disagreement 5, observed 1 -> 1 - 1/5
    scores = np.eye(3)[[0, 2, 2]]
    assert METRICS["kappa"]("ordinal", np.array([0, 1, 2]), scores)[0] == pytest.approx(0.8)
    # only grades 0, 1, 4 occur: mistaking 4 for 0 is 4 grades, not 2 ranks apart
    y, pred = np.array([0, 1, 4, 4, 1, 0]), np.array([1, 1, 4, 0, 1, 0])
    got = METRICS["kappa"]("ordinal", y, np.eye(5)[pred])[0]
    assert got == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(5)))
    assert got != pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))
    assert math.isnan(METRICS["kappa"]("ordinal", np.array([1, 1]), np.eye(3)[[1, 1]])[0])


def test_absent_class_gives_nan_and_is_left_out_of_macro_average():
    y = np.array([0, 1, 0, 1, 0, 1])
    scores = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.7, 0.1, 0.2], [0.1, 0.2, 0.7]]
    )
    overall, per_class = compute_metrics("multiclass", y, scores)
    pred = scores.argmax(1)
    auc0 = skm.roc_auc_score(y == 0, scores[:, 0])
    auc1 = skm.roc_auc_score(y == 1, scores[:, 1])
    assert per_class["auc"][:2] == pytest.approx([auc0, auc1]) and math.isnan(per_class["auc"][2])
    assert overall["auc"] == pytest.approx((auc0 + auc1) / 2)
    assert math.isnan(per_class["recall"][2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that class 2 is predicted but absent
        assert overall["bacc"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    # class 2 is predicted but absent: F1 is 0 (false positives), not undefined
    assert per_class["f1"] == pytest.approx(skm.f1_score(y, pred, average=None, labels=range(3)))


def test_class_neither_present_nor_predicted_is_left_out_of_f1():
    y, scores = np.array([0, 1, 1]), np.eye(3)[[0, 1, 0]]
    overall, per_class = compute_metrics("multiclass", y, scores, names=["f1"])
    assert math.isnan(per_class["f1"][2])
    expected = skm.f1_score(y, scores.argmax(1), average="macro", labels=range(3), zero_division=np.nan)
    assert overall["f1"] == pytest.approx(expected)


def test_unscorable_auc_is_nan():
    overall, per_class = compute_metrics("binary", np.array([1, 1, 1]), np.array([[0.2, 0.8]] * 3), names=["auc"])
    assert math.isnan(overall["auc"]) and all(math.isnan(v) for v in per_class["auc"])
    y = np.array([[1, 0], [1, 1], [1, 0]])  # label 0 is always positive
    s = np.array([[0.9, 0.1], [0.8, 0.7], [0.7, 0.3]])
    overall, per_class = compute_metrics("multilabel", y, s, names=["auc"])
    assert math.isnan(per_class["auc"][0]) and overall["auc"] == per_class["auc"][1] == 1.0


def test_names_select_metrics_and_per_class_keys():
    overall, per_class = compute_metrics("ordinal", Y_ORD, S_ORD, names=["mae", "auc"])
    assert list(overall) == ["mae", "auc"] and list(per_class) == ["auc"]


def test_ordinal_only_metric_called_directly_on_other_task_raises():
    with pytest.raises(ConfigError, match="ordinal"):
        METRICS["kappa"]("multiclass", Y_MC, S_MC)


@pytest.mark.parametrize(
    "task, y, s, error, match",
    [
        ("segmentation", Y_BIN, S_BIN, ConfigError, "allowed: binary, multiclass, multilabel, ordinal"),
        ("binary", Y_BIN[:-1], S_BIN, ValueError, r"shape \(8,\)"),
        ("binary", Y_MC, S_MC, ValueError, "2 columns"),
        ("multilabel", Y_ML[:, :2], S_ML, ValueError, "match scores' shape"),
        ("multilabel", Y_ML * 2, S_ML, ValueError, "0/1"),
        ("multiclass", Y_MC + 1, S_MC, ValueError, "outside 0..2"),
        ("multiclass", Y_MC.astype(float), S_MC, ValueError, "integer"),
        ("multiclass", Y_MC, S_MC[:, 0], ValueError, r"\(N, K\)"),
        ("multiclass", Y_MC, np.where(S_MC > 0.65, np.nan, S_MC), ValueError, "2 NaN"),
    ],
)
def test_invalid_inputs_raise(task, y, s, error, match):
    with pytest.raises(error, match=match):
        compute_metrics(task, y, s)


def test_unknown_metric_lists_allowed():
    with pytest.raises(ConfigError, match="'dice'.*allowed: acc, ap, auc, bacc, f1, kappa, mae, precision"):
        compute_metrics("binary", Y_BIN, S_BIN, names=["auc", "dice"])


@pytest.mark.parametrize("task, y, s", [("binary", Y_BIN, S_BIN), ("multiclass", Y_MC, S_MC),
                                        ("multilabel", Y_ML, S_ML)])
def test_ap_and_precision_equal_sklearn(task, y, s):
    overall, per_class = compute_metrics(task, y, s)
    targets = y if task == "multilabel" else np.eye(s.shape[1], dtype=int)[y]
    expected = [skm.average_precision_score(t, col) for t, col in zip(targets.T, s.T)]
    assert per_class["ap"] == pytest.approx(expected)
    assert overall["ap"] == pytest.approx(expected[1] if task == "binary" else np.mean(expected))
    pred = (s > 0.5).astype(int) if task == "multilabel" else s.argmax(1)
    assert per_class["precision"] == pytest.approx(skm.precision_score(y, pred, average=None, zero_division=0))
    assert overall["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))


def test_ap_of_an_absent_class_and_precision_of_a_never_predicted_one_are_nan():
    y = np.array([0, 0, 1, 1])
    s = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1]])  # class 2: absent, unpredicted
    overall, per_class = compute_metrics("multiclass", y, s)
    assert math.isnan(per_class["ap"][2]) and math.isnan(per_class["precision"][2])
    assert overall["ap"] == pytest.approx(1.0) and overall["precision"] == pytest.approx(1.0)
