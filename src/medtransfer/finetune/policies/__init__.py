"""Training policies: a plain registry, one line per policy, and the parser of the experiment's ``policies`` axis.

An entry is ``none`` or a mapping of policy names to their main value (``{augment: light, label_smoothing: 0.1,
class_weights: balanced}``), or to a mapping of their parameters (``{mixup: {alpha: 0.2}}``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from medtransfer.errors import ConfigError, allowed
from medtransfer.finetune.policies.augment import Augment
from medtransfer.finetune.policies.balanced_sampler import BalancedSampler
from medtransfer.finetune.policies.base import Mixed, Policy
from medtransfer.finetune.policies.class_weights import ClassWeights
from medtransfer.finetune.policies.cutmix import CutMix
from medtransfer.finetune.policies.focal import Focal
from medtransfer.finetune.policies.label_smoothing import LabelSmoothing
from medtransfer.finetune.policies.mixup import Mixup
from medtransfer.finetune.policies.training import NO_POLICY, TrainingPolicy

POLICIES: dict[str, type[Policy]] = {
    "augment": Augment,
    "mixup": Mixup,
    "cutmix": CutMix,
    "label_smoothing": LabelSmoothing,
    "class_weights": ClassWeights,
    "balanced_sampler": BalancedSampler,
    "focal": Focal,
}
EXCLUSIVE = [("mixup", "cutmix")]  # both replace the batch: one entry mixes one way


def _parse_one(name: str, value: Any, key: str) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"{key}: unknown policy {name!r}; allowed: {allowed(POLICIES)}, or none")
    cls = POLICIES[name]
    params = value if isinstance(value, dict) else {cls.main: value}
    try:
        return cls.model_validate(params)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        where = key if field == cls.main else f"{key}.{field}"
        raise ConfigError(f"{where}: {first.get('input')!r} rejected: {first['msg']}") from None


def parse_policy(spec: Any, key: str = "policies") -> TrainingPolicy:
    """One entry of ``policies``: ``none`` (or null) or a mapping of policy names to values."""
    if spec is None or spec == "none":
        return NO_POLICY
    if isinstance(spec, str) and spec in POLICIES:
        raise ConfigError(f"{key}: {spec!r} needs a value, e.g. {{{spec}: ...}}")
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{key}: {spec!r} must be none or a mapping of policy names to values; "
                          f"allowed names: {allowed(POLICIES)}")
    parts = [_parse_one(name, value, f"{key}.{name}" if name in POLICIES else key) for name, value in spec.items()]
    for group in EXCLUSIVE:
        if all(name in spec for name in group):
            raise ConfigError(f"{key}: {' and '.join(group)} in one entry; allowed: one of them per entry")
    order = list(POLICIES)
    return TrainingPolicy(parts=tuple(sorted(parts, key=lambda p: order.index(p.name))))


def parse_policies(specs: list) -> list[TrainingPolicy]:
    parsed = [parse_policy(s, key=f"policies[{i}]") for i, s in enumerate(specs)]
    labels = [p.label() for p in parsed]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"policies: duplicate entries {labels}")
    return parsed


__all__ = ["NO_POLICY", "POLICIES", "Mixed", "Policy", "TrainingPolicy", "parse_policies", "parse_policy"]
