"""Batched, on-device image transforms (kornia), so a GPU is fed uint8 batches and never waits on 2 CPU cores.

Three users: ``Preprocess`` turns a uint8 batch into the normalised float input of fine-tuning (MedMNIST protocol:
scale to [0, 1], normalise with the init's statistics - mean 0.5 / std 0.5 for a random init, see
``normalisation.py`` - no augmentation by default), ``SegmentationPreprocess`` does
the same for images with masks (random patches and augmentation applied jointly), and ``MedicalViews`` makes the
random views of self-supervised pre-training. Views are built for medical images: crops, flips, small rotations
and intensity changes; colour jitter only when the data really has three colour channels.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from medtransfer.data.augment_ops import RandomCutout3D, RandomElastic
from medtransfer.data.normalisation import DEFAULT, Normalisation

AUGMENTS = ("none", "flip", "light", "strong")


RESIZE_MODES = ("linear", "nearest")


def to_unit_range(x: torch.Tensor, size: tuple[int, ...] | None = None, mode: str = "linear") -> torch.Tensor:
    """uint8 -> float in [0, 1], resized when ``size`` differs from the stored size: bi/trilinear, or ``nearest``
    (pixel replication at integer factors, as PIL's NEAREST that MedMNIST v2's "(224)" rows were trained with)."""
    x = x.float() / 255.0
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        x = F.interpolate(x, size=size, mode="bilinear" if x.ndim == 4 else "trilinear", align_corners=False)
    return x


def _fine_tune_augment(kind: str, spatial_dims: int) -> tuple[nn.Module | None, nn.Module | None]:
    """(spatial, photometric) ops of an augmentation level: spatial ones move pixels (and, for segmentation, masks
    with them), photometric ones change image values only. ``strong`` = ``light`` + elastic deformation, then
    brightness/contrast/gamma/noise and one cut-out box (zeros, 2-15 % of the image)."""
    if kind not in AUGMENTS:
        raise ValueError(f"augment: {kind!r}; allowed: {', '.join(AUGMENTS)}")
    if kind == "none":
        return None, None
    if spatial_dims == 2:
        ops = [K.RandomHorizontalFlip()]
        if kind in ("light", "strong"):  # the transfer benchmark's ±7° rotation plus a little shift and zoom
            ops.append(K.RandomAffine(degrees=7.0, translate=(0.05, 0.05), scale=(0.9, 1.1), p=0.8))
    else:
        ops = [K.RandomHorizontalFlip3D(), K.RandomDepthicalFlip3D()]
        if kind in ("light", "strong"):
            ops.append(K.RandomAffine3D(degrees=7.0, scale=(0.9, 1.1), p=0.8))
    if kind != "strong":
        return nn.Sequential(*ops), None
    intensity = [K.RandomBrightness((0.8, 1.2), p=0.5), K.RandomContrast((0.8, 1.2), p=0.5),
                 K.RandomGamma((0.8, 1.25), p=0.5), K.RandomGaussianNoise(std=0.02, p=0.5)]
    ops.append(RandomElastic())
    if spatial_dims == 2:
        photometric = [*intensity, K.RandomErasing(scale=(0.02, 0.15), p=0.5)]
    else:
        photometric = [*(_AsSlices(op) for op in intensity), RandomCutout3D()]
    return nn.Sequential(*ops), nn.Sequential(*photometric)


def _augmented(x: torch.Tensor, photometric: nn.Module | None) -> torch.Tensor:
    return x if photometric is None else photometric(x).clamp(0.0, 1.0)


class Normalised(nn.Module):
    """Holds the init's mean/std as (1, C, 1, ...) buffers, so they follow the module to its device; not persistent:
    they come from the init, not from a Lightning checkpoint. Called on a [0, 1] batch, it normalises it (a fusion
    member's own input); the preprocessing modules below build on it."""

    def __init__(self, spatial_dims: int, normalisation: Normalisation):
        super().__init__()
        mean, std = normalisation.shaped(spatial_dims)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(x)


class Preprocess(Normalised):
    """uint8 batch -> normalised float batch, with optional training-time augmentation."""

    def __init__(self, spatial_dims: int, size: tuple[int, ...] | None = None, augment: str = "none",
                 normalisation: Normalisation = DEFAULT, resize_mode: str = "linear"):
        super().__init__(spatial_dims, normalisation)
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode: {resize_mode!r}; allowed: {', '.join(RESIZE_MODES)}")
        self.size, self.resize_mode = size, resize_mode
        self.augment, self.photometric = _fine_tune_augment(augment, spatial_dims)

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = to_unit_range(x, self.size, self.resize_mode)
        if train and self.augment is not None:
            x = _augmented(self.augment(x), self.photometric)
        return self.normalise(x)


class SegmentationPreprocess(Normalised):
    """Segmentation batches: uint8 images, class-index masks and field-of-view masks, preprocessed jointly.

    At training time a random patch (``patch_size``) is cut and the fine-tuning augmentation's spatial part
    applied to image, mask and FOV with the *same* random parameters (its photometric part to the image only): they
    travel through kornia stacked as channels (mask one-hot), which works in 3D too, where kornia has no mask support. After a rotation the label is the argmax of the
    interpolated one-hot channels; pixels shifted in from outside the image have no label and fall outside the FOV,
    so the loss ignores them. Evaluation sees whole images (sliding-window inference), normalised only.
    """

    def __init__(self, spatial_dims: int, num_classes: int, patch_size: tuple[int, ...] | None = None,
                 augment: str = "none", normalisation: Normalisation = DEFAULT):
        super().__init__(spatial_dims, normalisation)
        self.num_classes = num_classes
        self.crop = None if patch_size is None else (
            K.RandomCrop(tuple(patch_size)) if spatial_dims == 2 else K.RandomCrop3D(tuple(patch_size)))
        self.augment, self.photometric = _fine_tune_augment(augment, spatial_dims)

    def forward(self, x: torch.Tensor, masks: torch.Tensor, fov: torch.Tensor, train: bool = False):
        x = to_unit_range(x)
        if train and self.crop is not None:  # first, so the rest works on patches; a crop moves values unchanged
            stack = self.crop(torch.cat([x, masks.unsqueeze(1).to(x.dtype), fov.unsqueeze(1).to(x.dtype)], dim=1))
            x, masks, fov = stack[:, :-2], stack[:, -2].round().long(), stack[:, -1] > 0.5
        if train and self.augment is not None:
            hot = F.one_hot(masks.long(), self.num_classes).movedim(-1, 1).to(x.dtype)
            stack = self.augment(torch.cat([x, hot, fov.unsqueeze(1).to(x.dtype)], dim=1))
            x, hot, fov = stack.split([x.shape[1], self.num_classes, 1], dim=1)
            masks, fov = hot.argmax(1), (fov[:, 0] > 0.5) & (hot.amax(1) > 0)
            x = _augmented(x, self.photometric)
        return self.normalise(x), masks, fov


class _AsSlices(nn.Module):
    """Apply a 2D intensity op to a volume by folding depth into channels: the random factor is drawn per volume,
    as it should be, and the op itself is element-wise so folding changes nothing else."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x):
        b, c, d, h, w = x.shape
        return self.op(x.reshape(b, c * d, h, w)).reshape(b, c, d, h, w)


class IntensityWindow(nn.Module):
    """CT-style windowing: intensities in [lo, hi] (stored units, 0-255 for uint8 data) stretched to [0, 1] and
    clipped, the window shifted and scaled per view by up to ``jitter`` of its width."""

    def __init__(self, lo: float, hi: float, jitter: float = 0.0):
        super().__init__()
        if not hi > lo:
            raise ValueError(f"views.window: [{lo}, {hi}] needs hi > lo")
        self.lo, self.hi, self.jitter = lo / 255.0, hi / 255.0, jitter

    def forward(self, x):
        shape = (len(x),) + (1,) * (x.ndim - 1)
        width = (self.hi - self.lo) * (1 + self.jitter * (2 * torch.rand(shape, device=x.device) - 1))
        lo = self.lo + (self.hi - self.lo) * self.jitter * (2 * torch.rand(shape, device=x.device) - 1)
        return ((x - lo) / width).clamp(0.0, 1.0)


class MedicalViews(nn.Module):
    """Random views for joint-embedding SSL (SimCLR-style), 2D or 3D, applied to a [0, 1] batch on its device.

    Defaults follow SimCLR's recipe minus what breaks medical images: no colour jitter on single-channel data,
    no vertical flips (anatomy has an up), rotations small.
    """

    def __init__(self, spatial_dims: int, in_chans: int, size: tuple[int, ...], crop_scale=(0.3, 1.0),
                 rotation: float = 10.0, brightness: float = 0.3, contrast: float = 0.3, gamma=(0.7, 1.5),
                 blur_p: float = 0.3, noise_std: float = 0.03, window: tuple[float, float] | None = None,
                 window_jitter: float = 0.0):
        super().__init__()
        intensity = [
            K.RandomBrightness((1 - brightness, 1 + brightness), p=0.8),
            K.RandomContrast((1 - contrast, 1 + contrast), p=0.8),
            K.RandomGamma(gamma, p=0.5),
            K.RandomGaussianNoise(std=noise_std, p=0.5),
        ]
        if spatial_dims == 2:
            ops = [K.RandomResizedCrop(tuple(size), scale=tuple(crop_scale)), K.RandomHorizontalFlip(),
                   K.RandomRotation(rotation, p=0.5)]
            if in_chans == 3:
                ops.append(K.ColorJiggle(0.0, 0.0, 0.4, 0.05, p=0.8))
            ops += intensity + [K.RandomGaussianBlur((3, 3), (0.1, 1.0), p=blur_p)]
        else:
            zoom = 1.0 / crop_scale[0] ** (1 / 3)  # zooming in by s^(-1/3) per axis keeps a fraction s of the volume
            ops = [K.RandomAffine3D(degrees=rotation, scale=((1.0, zoom),) * 3, p=1.0),
                   K.RandomHorizontalFlip3D(), K.RandomDepthicalFlip3D()]
            ops += [_AsSlices(op) for op in intensity]
        if window is not None:
            ops.insert(0, IntensityWindow(*window, jitter=window_jitter))
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x).clamp(0.0, 1.0)
