"""Input normalisation that travels with the weights: ``(x - mean) / std`` per channel of a [0, 1] image.

Pre-trained weights expect the statistics they were trained on (ImageNet's, [0, 1] for SimCLR or Models Genesis,
0.5 / 0.5 for medtransfer's random inits), so an init carries its ``Normalisation`` and fine-tuning or continual
pre-training applies it. Statistics have one entry per input channel of the *weights*; ``for_channels`` turns them
into the statistics of the data when the first convolution was adapted to another channel count
(``models/checkpoint.py``):

* 1-channel weights onto N-channel data: the kernel is repeated and divided by N, so an image whose N channels all
  equal a grey image g gives the grey response when every channel is normalised with the grey (mean, std).
* C-channel weights onto grey data: the RGB network fed g copied into C channels computes
  ``sum_c w_c * (g - m_c) / s_c``. A 1-channel kernel w' on ``(g - mu) / sigma`` matches the g-dependent part
  exactly iff ``w' = sum_c w_c * sigma / s_c`` (``grey_weight_scales``: timm's plain sum when all s_c are equal).
  What remains is ``sum_c (mu - m_c) / s_c * (w_c * 1)``, the response to a constant image: one offset per filter,
  independent of the image. No single-channel input can remove it for every filter unless all m_c are equal;
  ``mu = sum_c (m_c / s_c) / sum_c (1 / s_c)`` removes it, borders included, for every filter whose kernel is the
  same on all channels (colour-neutral), leaving a constant offset only on colour-opponent filters (largely taken
  out by the batch statistics of the BatchNorm that follows in training). ``sigma`` is free (it cancels); the
  harmonic mean of the s_c keeps timm's plain sum when the stds are equal, so 0.5 / 0.5 inits behave as before.
* C-channel weights onto N-channel data otherwise: timm repeats the kernels cyclically, so do the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self):
        mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if not mean or len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"normalisation: mean {mean} and std {std} need one entry per channel and std > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def is_default(self) -> bool:
        """0.5 / 0.5 on every channel: what medtransfer always used, so such runs keep their ids."""
        return set(self.mean) == {0.5} and set(self.std) == {0.5}

    @property
    def label(self) -> str:
        """Short form for listings: 'imagenet', or mean/std ('0.5/0.5', '0/1')."""
        if self == IMAGENET:
            return "imagenet"
        return "/".join(",".join(f"{v:g}" for v in values) for values in (self.mean, self.std))

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, value: dict | None) -> "Normalisation":
        return cls() if not value else cls(tuple(value["mean"]), tuple(value["std"]))

    def for_channels(self, n: int) -> "Normalisation":
        """The statistics for data with ``n`` channels under the first-conv adaptation (see the module docstring)."""
        c = len(self.mean)
        if c == 1 or c == n:
            return self
        if n == 1:
            inverse = sum(1 / s for s in self.std)
            return Normalisation((sum(m / s for m, s in zip(self.mean, self.std)) / inverse,), (c / inverse,))
        return Normalisation(tuple(self.mean[i % c] for i in range(n)), tuple(self.std[i % c] for i in range(n)))

    def grey_weight_scales(self) -> torch.Tensor:
        """Per-channel factors sigma / s_c that C-channel first-conv kernels take before being summed for grey data."""
        return torch.tensor([self.for_channels(1).std[0] / s for s in self.std], dtype=torch.float64)

    def shaped(self, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as (1, C, 1, ...) tensors that broadcast over a batch."""
        shape = (1, -1) + (1,) * spatial_dims
        return torch.tensor(self.mean).view(shape), torch.tensor(self.std).view(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:  # python scalars: no tensor made per call
            return (x - self.mean[0]) / self.std[0]
        mean, std = self.shaped(x.ndim - 2)
        return (x - mean.to(x)) / std.to(x)


DEFAULT = Normalisation()
IMAGENET = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
UNIT_RANGE = Normalisation((0.0,), (1.0,))  # weights trained on [0, 1] inputs as they are (SimCLR TF, Models Genesis)
PRESETS = {"imagenet": IMAGENET, "unit_range": UNIT_RANGE, "half": DEFAULT}  # names an init's ``normalisation`` takes


def from_setting(value) -> Normalisation:
    """An init's ``normalisation:`` setting (a preset name or an object with ``mean``/``std``) as a Normalisation."""
    if isinstance(value, str):
        return PRESETS[value]
    return Normalisation(tuple(value.mean), tuple(value.std))
