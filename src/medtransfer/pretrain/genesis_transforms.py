"""Models Genesis corruptions (Zhou et al., MICCAI 2019 / MedIA 2021) as batched tensor ops on the device, 2D and 3D.

Every function takes a [0, 1] batch (B, C, *spatial) and draws its randomness from torch's generator on the batch's
device, once per sample (never a Python loop over pixels or samples), so a seed makes a batch reproducible. Each
corruption is applied to a sample with its own probability; ``GenesisCorruption`` chains them in the original order
(flip input and target, local pixel shuffling, non-linear intensity, in-/out-painting) and returns (input, target).

Defaults are the published Models Genesis configuration (``config.py`` of the official code): nonlinear_rate 0.9,
local_rate 0.5, paint_rate 0.9, outpaint_rate 0.8 (so in-painting 0.2), flip_rate 0.4; in-painting boxes 1/6-1/3 of
each side, out-painting boxes 3/7-4/7, at most 5 boxes; shuffling windows up to 1/10 of each side.
"""

from __future__ import annotations

import math

import torch


def _per_sample(flag: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) flags broadcast against a (B, ...) batch."""
    return flag.view(-1, *([1] * (x.ndim - 1)))


def _where_sample(flag: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_sample(flag, a), a, b)


def draw(batch: int, p: float, device) -> torch.Tensor:
    """Per-sample Bernoulli(p) flags."""
    return torch.rand(batch, device=device) < p


# --- non-linear intensity mapping -------------------------------------------------------------------------------
def bezier_curves(batch: int, device, n_points: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """One random cubic Bezier curve per sample from (0, 0) to (1, 1), sampled at ``n_points`` t values.

    The two inner control points have sorted x and sorted y coordinates, which (variation diminishing) makes x(t) and
    y(t) non-decreasing: the mapping is monotone, so intensity order is kept (or exactly reversed when inverted).
    """
    inner = torch.rand(batch, 2, 2, device=device).sort(dim=1).values  # (B, point, xy), sorted per coordinate
    t = torch.linspace(0, 1, n_points, device=device).view(1, -1, 1)
    p1, p2 = inner[:, None, 0], inner[:, None, 1]
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3  # P0 = 0 contributes nothing, P3 = 1
    return curve[..., 0], curve[..., 1]


def apply_curves(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) per sample: ``xs``/``ys`` (B, T) non-decreasing, ``x`` (B, ...) in [0, 1]."""
    flat = x.reshape(len(x), -1).clamp(0, 1).contiguous()
    idx = torch.searchsorted(xs.contiguous(), flat, right=True).clamp(1, xs.shape[1] - 1)
    x0, x1 = xs.gather(1, idx - 1), xs.gather(1, idx)
    y0, y1 = ys.gather(1, idx - 1), ys.gather(1, idx)
    w = ((flat - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return (y0 + w * (y1 - y0)).view_as(x)


def nonlinear_intensity(x: torch.Tensor, p: float = 0.9, invert_p: float = 0.5) -> torch.Tensor:
    """Map intensities through a random monotone Bezier curve; with ``invert_p`` the curve is flipped (1 - y), as the
    original alternates between increasing and decreasing mappings."""
    xs, ys = bezier_curves(len(x), x.device)
    invert = draw(len(x), invert_p, x.device)
    ys = torch.where(invert[:, None], 1 - ys, ys)
    return _where_sample(draw(len(x), p, x.device), apply_curves(x, xs, ys), x)


# --- local pixel shuffling --------------------------------------------------------------------------------------
def local_shuffle(x: torch.Tensor, p: float = 0.5, window_frac: float = 0.1, fraction: float = 0.5) -> torch.Tensor:
    """Permute the pixels inside small windows (same permutation for every channel of a window).

    The image is tiled into windows of ``window_frac`` of each side (at least 2 pixels) on a grid shifted by a random
    offset (pixels left over at the borders stay put); each window is shuffled with probability ``fraction``.
    Global content is kept, local texture destroyed.
    """
    b, c, *size = x.shape
    d = len(size)
    win = [max(2, int(round(s * window_frac))) for s in size]
    counts = [s // w for s, w in zip(size, win)]
    if any(n == 0 for n in counts):
        return x
    offsets = [int(torch.randint(0, s - n * w + 1, (1,)).item()) for s, n, w in zip(size, counts, win)]
    window = (slice(None), slice(None)) + tuple(slice(o, o + n * w) for o, n, w in zip(offsets, counts, win))
    region = x[window]
    shape = [b, c] + [v for n, w in zip(counts, win) for v in (n, w)]
    tiles = region.reshape(shape).permute(0, 1, *[2 + 2 * i for i in range(d)], *[3 + 2 * i for i in range(d)])
    n_win, n_pix = math.prod(counts), math.prod(win)
    tiles = tiles.reshape(b, c, n_win, n_pix)
    perm = torch.rand(b, 1, n_win, n_pix, device=x.device).argsort(dim=-1)
    keep = torch.rand(b, 1, n_win, 1, device=x.device) >= fraction
    perm = torch.where(keep, torch.arange(n_pix, device=x.device), perm)
    shuffled = tiles.gather(-1, perm.expand(b, c, n_win, n_pix))
    back = shuffled.reshape(b, c, *counts, *win)
    back = back.permute(0, 1, *[v for i in range(d) for v in (2 + i, 2 + d + i)]).reshape(region.shape)
    out = x.clone()
    out[window] = back
    return _where_sample(draw(b, p, x.device), out, x)


# --- in-painting / out-painting ---------------------------------------------------------------------------------
def box_mask(batch: int, size, device, min_frac: float, max_frac: float, max_boxes: int = 5) -> torch.Tensor:
    """(B, 1, *size) bool: the union of 1..``max_boxes`` random boxes per sample, sides ``min_frac``-``max_frac``."""
    size_t = torch.tensor(size, device=device, dtype=torch.float32)
    lo = (size_t * min_frac).floor().clamp_min(1)
    hi = (size_t * max_frac).floor().clamp_min(lo)
    side = (lo + (torch.rand(batch, max_boxes, len(size), device=device) * (hi - lo + 1)).floor()).clamp(max=size_t)
    start = (torch.rand(batch, max_boxes, len(size), device=device) * (size_t - side + 1)).floor()
    n_boxes = torch.randint(1, max_boxes + 1, (batch, 1), device=device)
    active = torch.arange(max_boxes, device=device)[None] < n_boxes  # (B, K)
    inside = active.view(batch, max_boxes, *([1] * len(size)))
    for axis, s in enumerate(size):
        g = torch.arange(s, device=device, dtype=torch.float32)
        shape = [batch, max_boxes] + [1] * len(size)
        shape[2 + axis] = s
        st, sd = start[..., axis, None], side[..., axis, None]
        inside = inside & ((g >= st) & (g < st + sd)).view(shape)
    return inside.any(dim=1, keepdim=True)


def inpaint(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Uniform noise inside the boxes, the image elsewhere."""
    return torch.where(boxes, torch.rand_like(x), x)


def outpaint(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The image inside the boxes, uniform noise elsewhere."""
    return torch.where(boxes, x, torch.rand_like(x))


def paint(x: torch.Tensor, p: float = 0.9, outpaint_rate: float = 0.8, max_boxes: int = 5) -> torch.Tensor:
    """With probability ``p`` per sample: out-painting (probability ``outpaint_rate``) or in-painting."""
    b, size = len(x), tuple(x.shape[2:])
    inner = inpaint(x, box_mask(b, size, x.device, 1 / 6, 1 / 3, max_boxes))
    outer = outpaint(x, box_mask(b, size, x.device, 3 / 7, 4 / 7, max_boxes))
    painted = _where_sample(draw(b, outpaint_rate, x.device), outer, inner)
    return _where_sample(draw(b, p, x.device), painted, x)


# --- flip -------------------------------------------------------------------------------------------------------
def flip(x: torch.Tensor, y: torch.Tensor, p: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip input and target alike along each spatial axis, independently with probability ``p`` per sample."""
    for axis in range(2, x.ndim):
        f = draw(len(x), p, x.device)
        x, y = _where_sample(f, x.flip(axis), x), _where_sample(f, y.flip(axis), y)
    return x, y


class GenesisCorruption:
    """The full Models Genesis pipeline: returns (corrupted input, restoration target)."""

    def __init__(self, flip_rate=0.4, local_rate=0.5, nonlinear_rate=0.9, paint_rate=0.9, outpaint_rate=0.8,
                 shuffle_window=0.1, shuffle_fraction=0.5, max_boxes=5):
        self.flip_rate, self.local_rate, self.nonlinear_rate = flip_rate, local_rate, nonlinear_rate
        self.paint_rate, self.outpaint_rate, self.max_boxes = paint_rate, outpaint_rate, max_boxes
        self.shuffle_window, self.shuffle_fraction = shuffle_window, shuffle_fraction

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, target = flip(images, images, self.flip_rate)
        x = local_shuffle(x, self.local_rate, self.shuffle_window, self.shuffle_fraction)
        x = nonlinear_intensity(x, self.nonlinear_rate)
        x = paint(x, self.paint_rate, self.outpaint_rate, self.max_boxes)
        return x, target
