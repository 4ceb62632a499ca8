"""Depth ranges ("0.25-0.5", "q2", "25-50%") and how they map onto a backbone's units.

Khan & Fang's finding that the best layers to fine-tune depend on the SSL family only means something if "the 2nd
quarter" names concrete modules. A unit *i* of *n* spans depth [i/n, (i+1)/n); it belongs to a range when its
midpoint lies inside. On aligned boundaries (4 stages, 16 blocks, 12 ViT blocks) this is exact; elsewhere it is the
nearest honest answer, and ``medtransfer describe`` shows the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medtransfer.errors import ConfigError

QUARTERS = {"q1": (0.0, 0.25), "q2": (0.25, 0.5), "q3": (0.5, 0.75), "q4": (0.75, 1.0)}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_NUMBER_RANGE = re.compile(rf"^\s*{_NUMBER}\s*(%?)\s*-\s*{_NUMBER}\s*(%?)\s*$")


@dataclass(frozen=True)
class DepthRange:
    start: float
    end: float

    @classmethod
    def parse(cls, spec: str | float, key: str = "range") -> "DepthRange":
        """Accept "0.25-0.5", "25-50%", "q2", or a quarter span "q1-q3"."""
        text = str(spec).strip().lower()
        if text in QUARTERS:
            return cls(*QUARTERS[text])
        parts = text.split("-")
        if len(parts) == 2 and all(p in QUARTERS for p in parts) and parts[0] <= parts[1]:
            return cls(QUARTERS[parts[0]][0], QUARTERS[parts[1]][1])
        match = _NUMBER_RANGE.match(text)
        if match:
            lo, hi = float(match.group(1)), float(match.group(3))
            # without "%", whole numbers above 1 are percentages ("25-50"); "0-1.5" stays an out-of-range fraction
            whole = "." not in match.group(1) + match.group(3)
            if match.group(2) or match.group(4) or (whole and hi > 1.0):
                lo, hi = lo / 100, hi / 100
            if 0.0 <= lo < hi <= 1.0:
                return cls(lo, hi)
        raise ConfigError(f"{key}: {spec!r} is not a depth range; allowed: 'START-END' fractions with "
                          "0 <= START < END <= 1 (e.g. '0.25-0.5' or '25-50%'), or q1, q2, q3, q4, or 'q1-q3'")

    def select(self, n_units: int) -> list[int]:
        """Indices of the units whose midpoint lies in [start, end)."""
        chosen = [i for i in range(n_units) if self.start <= (i + 0.5) / n_units < self.end]
        if not chosen:
            raise ConfigError(f"range: {self} selects none of the {n_units} units; widen it")
        return chosen

    def __str__(self) -> str:
        return f"{self.start:g}-{self.end:g}"


def describe_units(backbone, view: str) -> list[dict]:
    """One row per unit of ``view``: its steps, depth span, parameter count and share (for ``medtransfer describe``)."""
    groups = backbone.view(view)
    total = sum(p.numel() for p in backbone.model.parameters())
    rows = []
    for i, (group, params) in enumerate(zip(groups, backbone.unit_parameters(view))):
        count = sum(p.numel() for p in params)
        steps = [backbone.steps[j].name for j in group]
        rows.append({"unit": i, "steps": steps[0] if len(steps) == 1 else f"{steps[0]} .. {steps[-1]}",
                     "n_steps": len(steps), "depth": f"{i / len(groups):.0%}-{(i + 1) / len(groups):.0%}",
                     "quarter": f"q{min(4, int(4 * (i + 0.5) / len(groups)) + 1)}",
                     "channels": backbone.step_channels[group[-1]], "params": count,
                     "param_share": count / total if total else 0.0})
    return rows
