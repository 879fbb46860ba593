"""Random transforms for transformation robustness (Olah et al. 2017), drawn per batch item.

Consecutive geometric transforms (jitter, scale, rotate) are composed into one affine map per
item and applied with a single `grid_sample`, so the whole stack costs one resampling. Each item
draws from its own random stream, so its transforms do not depend on its place in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fvis.config import (
    JitterTransform,
    PadTransform,
    RotateTransform,
    ScaleTransform,
    StandardTransform,
    Transform,
)

Streams = Sequence[torch.Generator]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


class Geometric:
    """A random geometric transform: per item, a 3x3 map from output to input pixel coordinates."""

    def matrix(self, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class Jitter(Geometric):
    """Shift by an integer number of pixels in [-pixels, pixels], in x and y independently."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels

    def matrix(self, g: torch.Generator) -> torch.Tensor:
        dx, dy = torch.randint(-self.pixels, self.pixels + 1, (2,), generator=g).tolist()
        return torch.tensor([[1.0, 0.0, -dx], [0.0, 1.0, -dy], [0.0, 0.0, 1.0]])


class Scale(Geometric):
    """Zoom by a factor drawn uniformly from [lo, hi] about the image centre."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def matrix(self, g: torch.Generator) -> torch.Tensor:
        s = 1.0 / _uniform(g, self.lo, self.hi)
        return torch.tensor([[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]])


class Rotate(Geometric):
    """Rotate by an angle drawn uniformly from [-degrees, degrees] about the image centre."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def matrix(self, g: torch.Generator) -> torch.Tensor:
        a = math.radians(_uniform(g, -self.degrees, self.degrees))
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


class Pad:
    """Pad every side: the canvas the later transforms move the image on (the pipeline crops
    back to the original size at the end); also decides how pixels from outside are filled."""

    def __init__(self, pixels: int, mode: str, value: float) -> None:
        self.pixels, self.mode, self.value = pixels, mode, value

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.pixels,) * 4
        if self.mode == "constant":
            return F.pad(x, p, mode="constant", value=self.value)
        return F.pad(x, p, mode=self.mode)


class Pipeline(nn.Module):
    """A list of transforms applied in order; geometric runs are fused into one resampling."""

    def __init__(self, steps: Sequence[Pad | Geometric]) -> None:
        super().__init__()
        self.steps = list(steps)
        pad = next((s for s in self.steps if isinstance(s, Pad)), Pad(0, "constant", 0.5))
        self.fill = pad.value if pad.mode == "constant" else None
        self.outside = {"constant": "zeros", "reflect": "reflection", "replicate": "border"}[
            pad.mode
        ]

    def forward(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        """The transformed batch, cropped back to the input's size (centre) if padding grew it.

        Keeping the size means every layer has the same shape in the optimization as on the
        clean image, so objectives with spatial weights or targets fit both.
        """
        size = x.shape[-2:]
        run: list[Geometric] = []
        for step in self.steps:
            if isinstance(step, Geometric):
                run.append(step)
                continue
            x = self._resample(x, run, streams)
            run = []
            x = step(x)
        x = self._resample(x, run, streams)
        top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
        return x[..., top : top + size[0], left : left + size[1]]

    def _resample(self, x: torch.Tensor, run: list[Geometric], streams: Streams) -> torch.Tensor:
        if not run:
            return x
        h, w = x.shape[-2:]
        theta = torch.stack([_compose([t.matrix(g) for t in run]) for g in streams])
        # Pixel coordinates about the centre -> affine_grid's normalized coordinates.
        to_pixels = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0]))
        theta = torch.linalg.inv(to_pixels) @ theta @ to_pixels
        grid = F.affine_grid(theta[:, :2].to(x.device, x.dtype), list(x.shape), align_corners=False)
        fill = self.fill or 0.0
        out = F.grid_sample(
            x - fill, grid, mode="bilinear", padding_mode=self.outside, align_corners=False
        )
        return out + fill


def _compose(matrices: list[torch.Tensor]) -> torch.Tensor:
    """Transforms applied in order T1, T2, ... map output coordinates by M1 @ M2 @ ..."""
    out = matrices[0]
    for m in matrices[1:]:
        out = out @ m
    return out


def standard(size: tuple[int, int]) -> list[Pad | Geometric]:
    """lucid's standard stack, with its pixel amounts (tuned at 224 px) scaled to the image."""
    k = min(size) / 224.0

    def px(n: float) -> int:
        return max(1, round(n * k))

    return [
        Pad(px(12), "constant", 0.5),
        Jitter(px(8)),
        Scale(0.9, 1.1),
        Rotate(10.0),
        Jitter(px(4)),
    ]


def build_transforms(specs: Sequence[Transform], size: tuple[int, int]) -> Pipeline:
    """The pipeline a list of transform specs names (`standard` expands in place)."""
    steps: list[Pad | Geometric] = []
    for spec in specs:
        if isinstance(spec, StandardTransform):
            steps.extend(standard(size))
        elif isinstance(spec, PadTransform):
            steps.append(Pad(spec.pixels, spec.mode, spec.value))
        elif isinstance(spec, JitterTransform):
            steps.append(Jitter(spec.pixels))
        elif isinstance(spec, ScaleTransform):
            steps.append(Scale(spec.min, spec.max))
        elif isinstance(spec, RotateTransform):
            steps.append(Rotate(spec.degrees))
    return Pipeline(steps)
