"""Fine-tuning strategies: a plain registry, one line per strategy, and the parser for experiment files."""

from __future__ import annotations

from pydantic import ValidationError

from medtransfer.errors import ConfigError, allowed
from medtransfer.finetune.strategies.base import Strategy
from medtransfer.finetune.strategies.depth_range import DepthRangeStrategy
from medtransfer.finetune.strategies.end_to_end import EndToEnd
from medtransfer.finetune.strategies.knn import KNN
from medtransfer.finetune.strategies.layerwise_lr import LayerwiseLRDecay
from medtransfer.finetune.strategies.linear import Linear
from medtransfer.finetune.strategies.truncate import Truncate
from medtransfer.finetune.strategies.warmup import Warmup

STRATEGIES: dict[str, type[Strategy]] = {
    "end_to_end": EndToEnd,
    "linear": Linear,
    "range": DepthRangeStrategy,
    "truncate": Truncate,
    "warmup": Warmup,
    "lwlr_decay": LayerwiseLRDecay,
    "knn": KNN,
}
QUARTER_SHORTHANDS = {q: {"name": "range", "range": q} for q in ("q1", "q2", "q3", "q4")}


def parse_strategy(spec: str | dict, key: str = "strategies") -> Strategy:
    """A strategy from YAML: a bare name (``linear``, ``q2``) or a mapping with ``name`` and its parameters."""
    if isinstance(spec, str):
        spec = QUARTER_SHORTHANDS.get(spec, {"name": spec})
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{key}: {spec!r} must be a strategy name or a mapping with a 'name'; "
                          f"allowed names: {allowed(list(STRATEGIES) + list(QUARTER_SHORTHANDS))}")
    name = spec["name"]
    if name not in STRATEGIES:
        raise ConfigError(f"{key}.name: unknown strategy {name!r}; "
                          f"allowed: {allowed(list(STRATEGIES) + list(QUARTER_SHORTHANDS))}")
    try:
        return STRATEGIES[name].model_validate(spec)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        fields = [f for f in STRATEGIES[name].model_fields if f != "name"]
        raise ConfigError(f"{key} ({name}).{field}: {first.get('input')!r} rejected: {first['msg']}; "
                          f"parameters of {name}: {', '.join(fields) or 'none'}") from err


__all__ = ["STRATEGIES", "Strategy", "parse_strategy"]
