"""Random transforms for transformation robustness (Olah et al. 2017), drawn per batch item.

Consecutive geometric transforms (jitter, scale, rotate) are composed into one affine map per
item and applied with a single `grid_sample`, so the whole stack costs one resampling. Filters
(Gaussian blur, bilateral) act as frequency penalties: a pattern that a blur removes cannot
raise the objective. Each item draws from its own random stream, so its transforms do not depend
on its place in the batch. Images with an alpha channel are first composited over a random
background per item, so only their opaque parts can carry the objective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fvis import filters
from fvis.config import (
    BilateralTransform,
    BlurTransform,
    JitterTransform,
    PadTransform,
    RotateTransform,
    ScaleTransform,
    StandardTransform,
    Transform,
)

Streams = Sequence[torch.Generator]


Matrix = tuple[tuple[float, ...], ...]  # 3x3, row by row


def _affine(a: float, b: float, c: float, d: float, e: float, f: float) -> Matrix:
    """The 3x3 matrix [[a, b, c], [d, e, f], [0, 0, 1]] as Python floats: geometry is composed
    in double precision whatever the image's dtype, by Python's arithmetic (correctly rounded
    operations, no fused multiply-adds), so its rounding is the same on every CPU; and a few
    float operations per item cost far less than tensor operations would."""
    return ((a, b, c), (d, e, f), (0.0, 0.0, 1.0))


def _matmul(m: Matrix, n: Matrix) -> Matrix:
    return tuple(
        tuple(sum((m[i][k] * n[k][j] for k in range(3)), 0.0) for j in range(3)) for i in range(3)
    )


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


class Geometric:
    """A random geometric transform: per item, a 3x3 map from output to input pixel coordinates."""

    def matrix(self, g: torch.Generator) -> Matrix:
        raise NotImplementedError


class Jitter(Geometric):
    """Shift by an integer number of pixels in [-pixels, pixels], in x and y independently."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels

    def matrix(self, g: torch.Generator) -> Matrix:
        dx, dy = torch.randint(-self.pixels, self.pixels + 1, (2,), generator=g).tolist()
        return _affine(1.0, 0.0, -dx, 0.0, 1.0, -dy)


class Scale(Geometric):
    """Zoom by a factor drawn uniformly from [lo, hi] about the image centre."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def matrix(self, g: torch.Generator) -> Matrix:
        s = 1.0 / _uniform(g, self.lo, self.hi)
        return _affine(s, 0.0, 0.0, 0.0, s, 0.0)


class Rotate(Geometric):
    """Rotate by an angle drawn uniformly from [-degrees, degrees] about the image centre."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def matrix(self, g: torch.Generator) -> Matrix:
        a = math.radians(_uniform(g, -self.degrees, self.degrees))
        c, s = math.cos(a), math.sin(a)
        return _affine(c, s, 0.0, -s, c, 0.0)


class Pad:
    """Pad every side: the canvas the later transforms move the image on; also decides how
    pixels from outside are filled. The pipeline crops the canvas back to the image's size at
    the end, unless a pad keeps its `frame`: then the model sees the whole canvas (lucid)."""

    def __init__(self, pixels: int, mode: str, value: float, frame: bool = False) -> None:
        self.pixels, self.mode, self.value, self.frame = pixels, mode, value, frame

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.pixels,) * 4
        if self.mode == "constant":
            return F.pad(x, p, mode="constant", value=self.value)
        return F.pad(x, p, mode=self.mode)


class Filter:
    """A filter applied to each item with probability p (drawn from the item's stream)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def chosen(self, streams: Streams, device: torch.device) -> torch.Tensor:
        """[B] booleans: which items are filtered at this step."""
        if self.p >= 1:
            return torch.ones(len(streams), dtype=torch.bool, device=device)
        draws = [float(torch.rand((), generator=g)) < self.p for g in streams]
        return torch.tensor(draws, device=device)

    def __call__(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        raise NotImplementedError


class Blur(Filter):
    """Gaussian blur with sigma drawn uniformly from [lo, hi] per item (`fvis.filters`)."""

    def __init__(self, lo: float, hi: float, p: float) -> None:
        super().__init__(p)
        self.lo, self.hi = lo, hi

    def __call__(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        chosen = self.chosen(streams, x.device)
        sigmas = [_uniform(g, self.lo, self.hi) if self.lo < self.hi else self.lo for g in streams]
        sigma = torch.tensor(sigmas, dtype=x.dtype, device=x.device) * chosen
        return filters.gaussian_blur(x, sigma)


class Bilateral(Filter):
    """The edge-preserving bilateral filter (`fvis.filters.bilateral`)."""

    def __init__(self, sigma_space: float, sigma_color: float, p: float) -> None:
        super().__init__(p)
        self.sigma_space, self.sigma_color = sigma_space, sigma_color

    def __call__(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        chosen = self.chosen(streams, x.device)
        out = filters.bilateral(x, self.sigma_space, self.sigma_color)
        return torch.where(chosen[:, None, None, None], out, x)


BACKGROUND_CELLS = 8
BACKGROUND_NOISE = 0.2


def random_background(g: torch.Generator, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A background [C, H, W]: a uniform random colour plus smooth noise (a random grid of
    BACKGROUND_CELLS^2 values upsampled bilinearly, amplitude BACKGROUND_NOISE), clipped."""
    colour = torch.rand(channels, 1, 1, generator=g)
    cells = torch.randn(1, channels, BACKGROUND_CELLS, BACKGROUND_CELLS, generator=g)
    noise = filters.upsample(cells, size)[0] * BACKGROUND_NOISE
    return (colour + noise).clamp(0.0, 1.0)


def composite(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Colour channels over a background by the last (alpha) channel: rgb a + bg (1 - a)."""
    rgb, a = image[:, :-1], image[:, -1:]
    return rgb * a + background * (1 - a)


class Pipeline(nn.Module):
    """A list of transforms applied in order; geometric runs are fused into one resampling.

    With `alpha`, the input's last channel is opacity: each item is first composited over its
    own random background (`random_background`), and the rest of the pipeline sees colours only.
    """

    def __init__(self, steps: Sequence[Pad | Geometric | Filter], alpha: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        pad = next((s for s in steps if isinstance(s, Pad)), Pad(0, "constant", 0.5))
        self.fill = pad.value if pad.mode == "constant" else None
        self.outside = {"constant": "zeros", "reflect": "reflection", "replicate": "border"}[
            pad.mode
        ]
        self.framed = any(isinstance(s, Pad) and s.frame for s in steps)
        self.steps = list(steps) if self.framed else _without_idle_pads(steps)

    def canvas(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size of what the model sees for an image of `size`: the padded canvas when a
        pad keeps its frame, else the image's own size."""
        if not self.framed:
            return size
        grown = 2 * sum(s.pixels for s in self.steps if isinstance(s, Pad))
        return size[0] + grown, size[1] + grown

    def forward(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        """The transformed batch, cropped back to the input's size (centre) if padding grew it
        and no pad keeps its frame.

        Cropping keeps every layer's shape as on the clean image. With a frame the maps are
        larger: `fvis.objectives.Activations` gives terms the image's own part of them.
        """
        size = x.shape[-2:]
        if self.alpha:
            channels, hw = x.shape[1] - 1, (size[0], size[1])
            background = torch.stack([random_background(g, channels, hw) for g in streams])
            x = composite(x, background.to(x.device, x.dtype))
        run: list[Geometric] = []
        for step in self.steps:
            if isinstance(step, Geometric):
                run.append(step)
                continue
            x = self._resample(x, run, streams)
            run = []
            x = step(x, streams) if isinstance(step, Filter) else step(x)
        x = self._resample(x, run, streams)
        if self.framed or x.shape[-2:] == size:
            return x
        return filters.center_crop(x, size[0], size[1])

    def _resample(self, x: torch.Tensor, run: list[Geometric], streams: Streams) -> torch.Tensor:
        if not run:
            return x
        h, w = x.shape[-2:]
        # Pixel coordinates about the centre -> affine_grid's normalized coordinates.
        to_pixels = _affine(w / 2.0, 0.0, 0.0, 0.0, h / 2.0, 0.0)
        to_normalized = _affine(2.0 / w, 0.0, 0.0, 0.0, 2.0 / h, 0.0)
        maps = [_compose([t.matrix(g) for t in run]) for g in streams]
        maps = [_compose([to_normalized, m, to_pixels]) for m in maps]
        theta = torch.tensor([m[:2] for m in maps], dtype=torch.float64)
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        fill = self.fill or 0.0
        out = F.grid_sample(
            x - fill, grid, mode="bilinear", padding_mode=self.outside, align_corners=False
        )
        return out + fill


def _without_idle_pads(steps: Sequence[Pad | Geometric | Filter]) -> list:
    """The steps less each constant Pad that only geometric transforms follow.

    Such a pad changes nothing: the resampling reads the fill value outside the image anyway
    (it samples `x - fill` with zeros outside), and the final crop removes the border again.
    Dropping it saves resampling the larger canvas and the pad's and crop's backward passes.
    """
    steps = list(steps)
    return [
        step
        for i, step in enumerate(steps)
        if not (
            isinstance(step, Pad)
            and step.mode == "constant"
            and all(isinstance(s, Geometric) for s in steps[i + 1 :])
        )
    ]


def _compose(matrices: list[Matrix]) -> Matrix:
    """Transforms applied in order T1, T2, ... map output coordinates by M1 @ M2 @ ..."""
    out = matrices[0]
    for m in matrices[1:]:
        out = _matmul(out, m)
    return out


def standard(size: tuple[int, int], frame: bool = False) -> list[Pad | Geometric]:
    """lucid's standard stack, with its pixel amounts (tuned at 224 px) scaled to the image;
    `frame`: the pad keeps its frame."""
    k = min(size) / 224.0

    def px(n: float) -> int:
        return max(1, round(n * k))

    return [
        Pad(px(12), "constant", 0.5, frame),
        Jitter(px(8)),
        Scale(0.9, 1.1),
        Rotate(10.0),
        Jitter(px(4)),
    ]


def build_transforms(
    specs: Sequence[Transform], size: tuple[int, int], alpha: bool = False
) -> Pipeline:
    """The pipeline a list of transform specs names (`standard` expands in place); `alpha`:
    the images carry an opacity channel to composite over random backgrounds first."""
    steps: list[Pad | Geometric | Filter] = []
    for spec in specs:
        if isinstance(spec, StandardTransform):
            steps.extend(standard(size, spec.frame))
        elif isinstance(spec, PadTransform):
            steps.append(Pad(spec.pixels, spec.mode, spec.value, spec.frame))
        elif isinstance(spec, JitterTransform):
            steps.append(Jitter(spec.pixels))
        elif isinstance(spec, ScaleTransform):
            steps.append(Scale(spec.min, spec.max))
        elif isinstance(spec, RotateTransform):
            steps.append(Rotate(spec.degrees))
        elif isinstance(spec, BlurTransform):
            steps.append(Blur(spec.sigma[0], spec.sigma[1], spec.p))
        elif isinstance(spec, BilateralTransform):
            steps.append(Bilateral(spec.sigma_space, spec.sigma_color, spec.p))
    return Pipeline(steps, alpha)
