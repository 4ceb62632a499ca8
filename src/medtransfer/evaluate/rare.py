"""The rare class of a run and its headline metrics (``rare_ap``, ``rare_recall``); without scikit-learn, so
reports read the rule cheaply."""

from __future__ import annotations

RARE_RATIO = 2.0  # training data at least this imbalanced (largest : least frequent class) have a rare class
RARE_HEADLINES = {"rare_ap": "ap", "rare_recall": "recall"}


def rare_class(imbalance: dict | None) -> int | None:
    """The rare class of a run, from its imbalance record (``data.imbalance``): the named one, or else the least
    frequent class of its training data, which counts as rare only when those data are at least RARE_RATIO times
    imbalanced (largest : least frequent class, ``achieved_ratio``). Balanced data have no rare class."""
    if not imbalance or not (imbalance.get("rare_named") or imbalance["achieved_ratio"] >= RARE_RATIO):
        return None
    return imbalance["rare_class"]


def rare_class_metrics(per_class: dict[str, list[float]], imbalance: dict) -> dict[str, float]:
    """The rare class's AUPRC and recall as headline metrics (``rare_ap``, ``rare_recall``) when the run has one."""
    rare = rare_class(imbalance)
    return {} if rare is None else {name: per_class[key][rare] for name, key in RARE_HEADLINES.items()
                                    if key in per_class}
