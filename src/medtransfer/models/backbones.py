"""Backbones seen as an ordered list of depth *steps* (stem, residual block, transformer block, encoder stage).

Fine-tuning strategies speak about depth ("train only 25-50 %", "keep 0-75 %"), so every backbone exposes the same
three things whatever library built it: its steps in forward order, named *views* that group steps into units
(see ``depth.py``), and a forward that can stop after any step. The wrapped timm/MONAI module keeps its native
parameter names, so medtransfer checkpoints are plain timm/MONAI state dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medtransfer.errors import ConfigError


@dataclass(frozen=True)
class Step:
    """One indivisible piece of depth: ``prefixes`` are the parameter-name prefixes it owns in ``Backbone.model``."""

    name: str
    prefixes: tuple[str, ...]
    stage: int  # index of the native resolution stage (used for multi-scale feature maps and the stage view)


def owns(prefix: str, name: str) -> bool:
    """True when parameter/module ``name`` lies under ``prefix`` (dot-boundary match, so layer1 never owns layer10)."""
    return name == prefix or name.startswith(prefix + ".")


class Backbone(nn.Module):
    """A feature extractor whose depth can be cut, frozen or decayed by unit.

    Subclasses build ``self.model`` and ``self.steps`` and implement ``run_step`` and ``pool``. ``views`` maps a
    convention name to a function grouping step indices into units.
    """

    family = "base"
    first_conv = ""  # state-dict key of the input convolution weight, adapted to the data's channel count
    finish_prefixes: tuple[str, ...] = ()  # modules applied after the last kept step (e.g. a ViT's final norm)

    def __init__(self, name: str, model: nn.Module, steps: list[Step], spatial_dims: int, in_chans: int,
                 input_size: tuple[int, ...], small_stem: bool):
        super().__init__()
        self.name, self.model, self.steps = name, model, list(steps)
        self.spatial_dims, self.in_chans, self.input_size, self.small_stem = spatial_dims, in_chans, input_size, small_stem
        self._step_params = self._assign_parameters()
        self.step_shapes = self._probe_shapes()

    # --- what subclasses provide -------------------------------------------------------------------------------
    def run_step(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooling over all spatial dimensions; transformers override with their token pooling."""
        return x.mean(dim=tuple(range(2, x.ndim)))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """A step output as a (B, C, *spatial) map; token sequences override this."""
        return x

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights of this architecture saved for another input size, made to fit this one (default: as they are)."""
        return state

    @property
    def views(self) -> dict[str, list[list[int]]]:
        """Unit conventions: every view partitions all step indices, in order."""
        return {"stage": self._group_by_stage(join_stem=True)}

    # --- shared behaviour ------------------------------------------------------------------------------------
    @property
    def default_view(self) -> str:
        return next(iter(self.views))

    @property
    def num_features(self) -> int:
        return self.step_channels[-1]

    @property
    def step_channels(self) -> list[int]:
        """Channels of each step's output seen as a map (``to_map``)."""
        return [shape[0] for _, shape in self.step_shapes]

    @property
    def map_shapes(self) -> list[tuple[int, tuple[int, ...]]]:
        """(channels, spatial size) of each map ``feature_maps`` returns at ``input_size``, without running it."""
        ends = [i for i in range(len(self.steps))
                if i + 1 == len(self.steps) or self.steps[i + 1].stage != self.steps[i].stage]
        return [(self.step_shapes[i][1][0], self.step_shapes[i][1][1:]) for i in ends]

    def step_output_shape(self, i: int) -> tuple[int, ...]:
        """Shape (without batch) of step ``i``'s raw output, e.g. tokens for a ViT, channels-last maps for Swin."""
        return self.step_shapes[i][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of the last kept step."""
        for step in self.steps:
            x = self.run_step(step, x)
        return self.pool(self.finish(x))

    def feature_maps(self, x: torch.Tensor, after_step=None) -> list[torch.Tensor]:
        """Multi-scale maps, one per native stage (the output of its last kept step), for dense decoders.

        ``after_step`` (tensor -> tensor) runs after every step, e.g. SparK re-applying its mask at each scale.
        """
        maps = []
        for i, step in enumerate(self.steps):
            x = self.run_step(step, x)
            if after_step is not None:
                x = after_step(x)
            if i + 1 == len(self.steps) or self.steps[i + 1].stage != step.stage:
                maps.append(self.to_map(self.finish(x) if i + 1 == len(self.steps) else x))
        return maps

    def truncate(self, n_steps: int) -> None:
        """Keep the first ``n_steps`` steps and delete the modules of the rest, so they own no parameters."""
        if not 1 <= n_steps <= len(self.steps):
            raise ConfigError(f"truncate: cannot keep {n_steps} of {len(self.steps)} steps of {self.name}")
        for step in self.steps[n_steps:]:
            for prefix in step.prefixes:
                parent_name, _, leaf = prefix.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, leaf, nn.Identity())
        self.steps = self.steps[:n_steps]
        self.step_shapes = self.step_shapes[:n_steps]
        self._step_params = self._step_params[:n_steps] + [self._step_params[-1]]

    def unit_prefixes(self, view: str) -> list[tuple[str, ...]]:
        """Parameter prefixes of each unit of ``view``; the last unit also owns the modules applied after it."""
        groups = self.view(view)
        units = [tuple(p for i in g for p in self.steps[i].prefixes) for g in groups]
        units[-1] = units[-1] + self.finish_prefixes
        return units

    def step_parameter_names(self, i: int) -> list[str]:
        """Names of the parameters step ``i`` owns, in ``named_parameters`` order (assigned once at construction)."""
        return list(self._step_params[i])

    def unit_parameter_names(self, view: str) -> list[list[str]]:
        """Parameter names of each unit of ``view`` in ``named_parameters`` order; the last unit also owns the finish
        modules' parameters (a ViT's final norm)."""
        order = {name: k for k, name in enumerate(self._all_names)}
        units = [sorted((n for i in g for n in self._step_params[i]), key=order.__getitem__) for g in self.view(view)]
        units[-1] = sorted(units[-1] + self._step_params[-1], key=order.__getitem__)
        return units

    def unit_parameters(self, view: str) -> list[list[nn.Parameter]]:
        return [[self.model.get_parameter(n) for n in names] for names in self.unit_parameter_names(view)]

    def view(self, name: str) -> list[list[int]]:
        views = self.views
        if name not in views:
            raise ConfigError(f"backbone.view: {name!r} is not a view of {self.name}; allowed: {', '.join(views)}")
        return views[name]

    def _group_by_stage(self, join_stem: bool) -> list[list[int]]:
        """One unit per native stage; the stem (stage 0) joins the first stage, as in ResNet's stage view."""
        groups: dict[int, list[int]] = {}
        for i, step in enumerate(self.steps):
            stage = 1 if (join_stem and step.stage == 0) else step.stage
            groups.setdefault(stage, []).append(i)
        return list(groups.values())

    def _assign_parameters(self) -> list[list[str]]:
        """Parameter names per step, plus a last list for the finish modules. Every parameter must belong to exactly
        one step (or to the finish modules) so freezing is exhaustive."""
        owners_of = [s.prefixes for s in self.steps] + [self.finish_prefixes]
        assigned: list[list[str]] = [[] for _ in owners_of]
        self._all_names = []
        for name, _ in self.model.named_parameters():
            owners = [(i, p) for i, prefixes in enumerate(owners_of) for p in prefixes if owns(p, name)]
            if len(owners) != 1:
                raise AssertionError(f"{self.name}: parameter {name} owned by {[p for _, p in owners] or 'no step'}")
            assigned[owners[0][0]].append(name)
            self._all_names.append(name)
        return assigned

    @torch.no_grad()
    def _probe_shapes(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per step (raw output shape, map shape), both without the batch: one pass on zeros, in eval mode."""
        was_training = self.training
        self.eval()
        x = torch.zeros(2, self.in_chans, *self.input_size)
        shapes = []
        for step in self.steps:
            x = self.run_step(step, x)
            shapes.append((tuple(x.shape[1:]), tuple(self.to_map(x).shape[1:])))
        self.train(was_training)
        return shapes


class ResNetBackbone(Backbone):
    """timm ResNets (2D) and MONAI ResNets (3D): stem + residual blocks, stage view and block view."""

    family = "resnet"
    first_conv = "conv1.weight"

    def __init__(self, name, model, spatial_dims, in_chans, input_size, small_stem):
        act = "act1" if hasattr(model, "act1") else "act"  # timm names it act1, MONAI act
        self._stem = ("conv1", "bn1", act, "maxpool")
        steps = [Step("stem", self._stem, 0)]
        for stage in range(1, 5):
            layer = getattr(model, f"layer{stage}")
            steps += [Step(f"layer{stage}.{j}", (f"layer{stage}.{j}",), stage) for j in range(len(layer))]
        super().__init__(name, model, steps, spatial_dims, in_chans, input_size, small_stem)

    def run_step(self, step, x):
        if step.name == "stem":
            for part in self._stem:
                x = getattr(self.model, part)(x)
            return x
        return self.model.get_submodule(step.name)(x)

    @property
    def views(self):
        blocks = [[i] for i in range(1, len(self.steps))]
        if blocks:
            blocks[0] = [0] + blocks[0]  # the stem joins the first block (REFERENCE: ResNet block view)
        return {"stage": self._group_by_stage(join_stem=True), "block": blocks or [[0]]}


class ViTBackbone(Backbone):
    """timm Vision Transformers: patch embedding (+ tokens, positions) joined to block 0, then one unit per block."""

    family = "vit"
    first_conv = "patch_embed.proj.weight"
    finish_prefixes = ("norm", "fc_norm")

    def __init__(self, name, model, spatial_dims, in_chans, input_size, small_stem):
        embed = tuple(p for p in ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")
                      if hasattr(model, p) and getattr(model, p) is not None)
        steps = [Step("embed", embed, 0)] + [Step(f"blocks.{i}", (f"blocks.{i}",), 1) for i in range(len(model.blocks))]
        super().__init__(name, model, steps, spatial_dims, in_chans, input_size, small_stem)

    def run_step(self, step, x):
        m = self.model
        if step.name == "embed":
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        return m.get_submodule(step.name)(x)

    def finish(self, x):
        return self.model.norm(x)

    def pool(self, x):
        return self.model.forward_head(x, pre_logits=True)

    def to_map(self, x):
        if x.ndim != 3:
            return x
        tokens = x[:, self.model.num_prefix_tokens:]
        h, w = self.model.patch_embed.grid_size
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    @property
    def views(self):
        blocks = [[i] for i in range(1, len(self.steps))]
        blocks[0] = [0] + blocks[0]
        return {"block": blocks}


class UNetEncoderBackbone(Backbone):
    """A U-Net encoder (conv_0, down_1..down_n), one unit per quarter: MONAI BasicUNet's (n = 4) joins conv_0 to the
    first down stage; Models Genesis' (n = 3) has four resolutions, one per quarter."""

    family = "unet_encoder"
    first_conv = "conv_0.conv_0.conv.weight"

    def __init__(self, name, model, spatial_dims, in_chans, input_size, small_stem):
        downs = sum(1 for child in model._modules if child.startswith("down_"))
        steps = [Step("conv_0", ("conv_0",), 0)] + [Step(f"down_{i}", (f"down_{i}",), i) for i in range(1, downs + 1)]
        super().__init__(name, model, steps, spatial_dims, in_chans, input_size, small_stem)

    @property
    def views(self):
        if len(self.steps) == 4:
            return {"stage": [[i] for i in range(4)]}
        return super().views

    def run_step(self, step, x):
        return getattr(self.model, step.name)(x)
