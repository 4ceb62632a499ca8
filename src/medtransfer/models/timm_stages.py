"""Any timm network with ``feature_info`` (DenseNet, ConvNeXt, EfficientNet, RegNet, Swin, ...) as depth steps.

The steps come from the network's own structure, not a table per model:

* the forward order is timm's own ``features_only`` view (``_module_list``: top-level children, first-level
  ``nn.Sequential`` flattened), cut where the pooling head starts (``global_pool`` or the classifier's module);
* ``feature_info`` names the stage modules and their reductions: a module belongs to the stage of the next stage
  module at or after it (DenseNet's transitions, EfficientNet's un-tapped block groups), modules of reduction <= 2
  form the stem (stage 0, joined to the first stage as for ResNets), and what follows the last stage (EfficientNet's
  ``conv_head``, Swin's ``norm``) joins it;
* each stage module is split into its repeated blocks: the children of its ``blocks`` container where it has one
  (ConvNeXt, Swin: the ``downsample`` before them is glue), else all its children (RegNet stages, EfficientNet
  block groups, DenseNet dense blocks, whose layers concatenate their output to their input).

The block view has one unit per block, glue (stem, transitions, downsampling) joining the block after it and the
tail the last block. Construction checks that the steps reproduce the network's own pooled output, so a family
whose forward is not this sequence is refused by name instead of silently computing something else.
"""

from __future__ import annotations

import sys

import torch
from timm.models._features import _module_list
from timm.models.densenet import DenseBlock
from torch import nn

from medtransfer.errors import ConfigError
from medtransfer.models.backbones import Backbone, Step

_SUPPORTED = ("allowed: ResNets, ViTs, and timm CNNs or hierarchical ViTs whose forward runs their stage modules in "
              "order (DenseNet, ConvNeXt, EfficientNet, MobileNet, RegNet, Swin, ...)")
HEAD_STARTS = ("global_pool",)  # plus the classifier's top-level module, from ``pretrained_cfg['classifier']``


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _blocks_of(name: str, module: nn.Module) -> list[tuple[str, str]]:
    """(name, kind) of the pieces a stage module runs in order; kind is "block", "dense" (concatenating) or "glue"."""
    children = [(f"{name}.{n}", m) for n, m in module.named_children() if not isinstance(m, nn.Identity)]
    if isinstance(module, DenseBlock):
        return [(n, "dense") for n, _ in children]
    if hasattr(module, "blocks") and isinstance(module.blocks, nn.Sequential):
        pieces = []
        for n, m in children:
            if m is module.blocks:
                pieces += [(f"{n}.{b}", "block") for b, _ in m.named_children()]
            else:
                pieces.append((n, "glue"))
        return pieces
    return [(n, "block") for n, _ in children]


def timm_steps(model: nn.Module) -> tuple[list[Step], list[str], tuple[str, ...]]:
    """(steps, their kinds, finish prefixes) of a timm model with ``feature_info``."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConfigError(f"backbone.name: {type(model).__name__} has no timm feature_info; allowed: timm models that "
                          "support features_only")
    classifier = (model.pretrained_cfg.get("classifier") or "").split(".")[0]
    items = _module_list(model, flatten_sequential=True)
    cut = next((i for i, (_, name, _) in enumerate(items) if name in HEAD_STARTS + (classifier,)), len(items))
    head = tuple(name for _, name, m in items[cut:] if _has_params(m))
    stages: dict[str, int] = {}
    for entry in info:
        stages[entry["module"]] = 0 if entry["reduction"] <= 2 else 1 + sum(1 for s in stages.values() if s > 0)
    order = [name for _, name, _ in items[:cut]]
    missing = [m for m in stages if m not in order]
    if missing:
        raise ConfigError(f"backbone.name: {type(model).__name__}'s stage modules {missing} are not in its forward "
                          f"order; {_SUPPORTED}")
    pieces: list[tuple[str, str, int]] = []  # (module name, kind, stage)
    last = max(stages.values())
    for name, module in ((n, m) for _, n, m in items[:cut]):
        if isinstance(module, nn.Identity):
            continue
        later = [stages[m] for m in order[order.index(name):] if m in stages]
        stage = later[0] if later else last
        if stage > 0 and _is_container(module) and (name in stages or _is_block_group(module, model)):
            pieces += [(n, kind, stage) for n, kind in _blocks_of(name, module)]
        else:
            pieces.append((name, "glue", stage))
    steps, kinds = _merge_glue(pieces)
    return steps, kinds, head


def _is_container(module: nn.Module) -> bool:
    """Holds blocks rather than being one layer (DenseNet's final norm is a stage module with its own weights)."""
    return not any(True for _ in module.parameters(recurse=False)) and any(True for _ in module.children())


def _is_block_group(module: nn.Module, model: nn.Module) -> bool:
    """An un-tapped module between stages that is itself a stage (EfficientNet's blocks.3): of the type of a tapped
    stage module."""
    return type(module) in {type(model.get_submodule(e["module"])) for e in model.feature_info if e["reduction"] > 2}


def _merge_glue(pieces: list[tuple[str, str, int]]) -> tuple[list[Step], list[str]]:
    """Consecutive glue of one stage becomes one step (a stem of conv, norm, pool is one piece of depth)."""
    steps, kinds = [], []
    for name, kind, stage in pieces:
        if kind == "glue" and kinds and kinds[-1] == "glue" and steps[-1].stage == stage:
            prev = steps[-1]
            steps[-1] = Step(f"{prev.name}+{name}", prev.prefixes + (name,), stage)
        else:
            steps.append(Step(name, (name,), stage))
            kinds.append(kind)
    return steps, kinds


@torch.no_grad()
def _eval_forward(module: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with ``model`` in eval mode (so no BatchNorm statistics move), its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        return module(x)
    finally:
        model.train(was_training)


class TimmStagesBackbone(Backbone):
    """A timm CNN or hierarchical ViT split into stem, blocks and tail by ``timm_steps``; stage and block views."""

    family = "cnn"

    def __init__(self, name, model, spatial_dims, in_chans, input_size, small_stem):
        steps, kinds, self.finish_prefixes = timm_steps(model)
        self.kinds = kinds
        self._dense = {s.name for s, kind in zip(steps, kinds) if kind == "dense"}
        self.first_conv = model.pretrained_cfg["first_conv"] + ".weight"
        self.channels_last_maps = getattr(model, "output_fmt", "NCHW") == "NHWC"  # Swin: (B, H, W, C) stages
        # attention blocks (timm's Attention, WindowAttention, ...) make it a transformer: no SparK, no CNN decoders
        if any(type(m).__name__.endswith("Attention") for m in model.modules()):
            self.family = "hierarchical_vit"
        self.full_depth = True
        x = torch.rand(1, in_chans, *input_size, generator=torch.Generator().manual_seed(0))
        expected = _eval_forward(model, model, x)  # fails here only when the input is too small for the network
        try:
            super().__init__(name, model, steps, spatial_dims, in_chans, input_size, small_stem)
            ours = _eval_forward(self, model, x)
        except (RuntimeError, ValueError, TypeError, AssertionError) as err:
            raise ConfigError(f"backbone.name: {name!r} does not run as a sequence of its timm stages and blocks "
                              f"({type(err).__name__}: {err}); {_SUPPORTED}") from err
        if ours.shape != expected.shape or not torch.allclose(ours, expected, rtol=1e-4, atol=1e-5):
            raise ConfigError(f"backbone.name: {name!r} does not run as a sequence of its timm stages and blocks "
                              f"(its forward does more); {_SUPPORTED}")

    def run_step(self, step, x):
        if len(step.prefixes) > 1:
            for prefix in step.prefixes:
                x = self.model.get_submodule(prefix)(x)
            return x
        module = self.model.get_submodule(step.name)
        if step.name in self._dense:
            return torch.cat([x, module(x)], dim=1)  # timm's DenseBlock: each layer adds its maps to its input
        return module(x)

    def pool(self, x):
        """The network's own head (e.g. ConvNeXt's pooled LayerNorm) at full depth; plain average after truncation,
        where the head's norm no longer matches the width."""
        if self.full_depth:
            return self.model.forward_head(x, pre_logits=True)
        return x.mean(dim=(1, 2)) if self.channels_last_maps else x.mean(dim=tuple(range(2, x.ndim)))

    def to_map(self, x):
        return x.permute(0, 3, 1, 2) if self.channels_last_maps and x.ndim == 4 else x

    def adapt_state_dict(self, state):
        """timm's own ``checkpoint_filter_fn`` of the family where it has one: e.g. Swin's relative-position tables
        resized to this input size's windows, its non-persistent buffers dropped."""
        adapt = getattr(sys.modules[type(self.model).__module__], "checkpoint_filter_fn", None)
        return adapt(state, self.model) if adapt is not None else state

    def truncate(self, n_steps):
        super().truncate(n_steps)
        if n_steps < len(self.kinds):
            self.full_depth = False
            for prefix in self.finish_prefixes:  # the head's norm is for the last stage's width: drop it
                parent, _, leaf = prefix.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, leaf, nn.Identity())
            self._step_params[-1] = []
        self.kinds = self.kinds[:n_steps]

    @property
    def views(self):
        blocks: list[list[int]] = []
        pending: list[int] = []
        for i, kind in enumerate(self.kinds):
            pending.append(i)
            if kind != "glue":
                blocks.append(pending)
                pending = []
        if pending:  # tail glue joins the last block
            if blocks:
                blocks[-1] += pending
            else:
                blocks.append(pending)
        return {"stage": self._group_by_stage(join_stem=True), "block": blocks}
