"""The rare-class rule and its headline metrics."""

from medtransfer.evaluate.rare import rare_class_metrics

PER_CLASS = {"ap": [0.4, 0.9], "recall": [0.3, 0.95], "auc": [0.8, 0.8]}


def test_rare_class_headlines_need_a_named_or_clearly_rare_class():
    per_class = PER_CLASS
    record = {"rare_class": 0, "rare_named": False, "achieved_ratio": 2.5}
    assert rare_class_metrics(per_class, record) == {"rare_ap": per_class["ap"][0],
                                                     "rare_recall": per_class["recall"][0]}
    balanced = {"rare_class": 0, "rare_named": False, "achieved_ratio": 1.2}
    assert rare_class_metrics(per_class, balanced) == {} and rare_class_metrics(per_class, None) == {}
    assert set(rare_class_metrics(per_class, {**balanced, "rare_named": True})) == {"rare_ap", "rare_recall"}
