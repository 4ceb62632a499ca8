"""Multi-SSL: one backbone trained on a weighted sum of several registered methods' losses.

After PCRL (Zhou et al. 2021), which trains one encoder with contrastive and restorative objectives together; here
any registered methods combine (REFERENCE: "a weighted sum of a contrastive and a restorative loss on the same
backbone"). Every sub-method is built on the SAME backbone object, so its parameters are shared (and appear once in
``self.parameters()``, which de-duplicates), while each sub-method's heads become submodules of this one. Each
sub-method's per-step and per-epoch hooks (momentum encoders, temperature warm-ups, first-epoch freezes) are forwarded
to it, so it trains inside the combination exactly as it does alone. The registry is looked up when options are
validated / the method is built, never at import, so methods registered later (restorative ones) can be combined
without circular imports.

The default, simclr 1.0 + rotation 1.0, is a placeholder until a restorative method is registered; PCRL's pairing
is a contrastive and a restorative method (e.g. ``[{name: simclr}, {name: models_genesis}]``).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtransfer.errors import ConfigError, allowed
from medtransfer.pretrain.base import BaseMethod, MethodOptions

NAME = "multi_ssl"


def _registry() -> dict[str, type[BaseMethod]]:
    from medtransfer.pretrain import METHODS  # late: the registry imports this module
    return METHODS


class SubMethod(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    weight: float = Field(1.0, ge=0)
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        methods = _registry()
        usable = [n for n, m in methods.items() if n != NAME and not m.needs_labels]  # sub-methods see images only
        if name not in usable:
            raise ValueError(f"unknown sub-method {name!r}; allowed: {allowed(usable)}")
        return name

    @model_validator(mode="after")
    def _options_valid(self):
        self.parsed()
        return self

    def parsed(self) -> MethodOptions:
        """The sub-method's own Options, with errors naming the sub-method and the rejected option."""
        method = _registry()[self.name]
        try:
            return method.Options.model_validate(self.options)
        except ValidationError as err:
            first = err.errors()[0]
            raise ValueError(f"sub-method {self.name!r}: options.{'.'.join(map(str, first['loc']))} = "
                             f"{first.get('input')!r} rejected: {first['msg']}; options of {self.name}: "
                             f"{allowed(method.Options.model_fields)}") from None


def _default_methods() -> list[SubMethod]:
    return [SubMethod(name="simclr", weight=1.0), SubMethod(name="rotation", weight=1.0)]


class MultiSSLOptions(MethodOptions):
    methods: list[SubMethod] = Field(default_factory=_default_methods, min_length=2)


class MultiSSL(BaseMethod):
    Options = MultiSSLOptions
    family = "multi"
    spatial_dims = (2, 3)

    @classmethod
    def unsupported(cls, backbone, options: MultiSSLOptions | None = None):
        """The first problem of any sub-method (of the default combination when no options are given)."""
        options = options or MultiSSLOptions()
        methods = _registry()
        for sub in options.methods:
            problem = methods[sub.name].unsupported(backbone)
            if problem:
                return f"(sub-method {sub.name!r}) {problem}"
        return super().unsupported(backbone)

    def __init__(self, backbone, options: MultiSSLOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        problem = self.unsupported(backbone, options)
        if problem:
            raise ConfigError(f"method: {NAME!r} {problem}")
        methods = _registry()
        names = [sub.name for sub in options.methods]
        self.keys = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        self.weights = [sub.weight for sub in options.methods]
        self.methods = torch.nn.ModuleDict({key: methods[sub.name](backbone, sub.parsed(), **kwargs)
                                            for key, sub in zip(self.keys, options.methods)})
        self.last_partials: dict[str, torch.Tensor] = {}

    def partial_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: method.ssl_loss(images) for key, method in self.methods.items()}

    def ssl_loss(self, images):
        partials = self.partial_losses(images)
        self.last_partials = {key: loss.detach() for key, loss in partials.items()}
        return sum(w * loss for w, loss in zip(self.weights, partials.values()))

    def step_logs(self):
        return {f"{key}_loss": value for key, value in self.last_partials.items()}

    # every part keeps its own per-step and per-epoch behaviour (momentum encoders, warm-ups, freezes)
    def after_backward(self):
        for method in self.methods.values():
            method.after_backward()

    def after_step(self, step, total_steps):
        for method in self.methods.values():
            method.after_step(step, total_steps)

    def on_epoch(self, epoch, total_epochs):
        for method in self.methods.values():
            method.on_epoch(epoch, total_epochs)
