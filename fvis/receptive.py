"""Where a unit looks: the receptive field of a layer's units, measured by gradient.

The field is measured, not derived from a table of layer types, so it holds for any network
(padding, dilation, pooling, branches, user code): the input pixels on which a unit's value
depends are those where its gradient with respect to the input is nonzero. Two things make one
gradient under-report, and both are handled by taking a union:

- max pooling routes the gradient through one input of each window, and a ReLU blocks it where
  its input is negative: so the support is the union over a batch of random images;
- a single channel may ignore some of its inputs (zero weights, a dead path): so the gradient is
  that of the sum of all the layer's channels at the position. A layer's units share one
  geometry, and this measures the field every one of them can reach.

From the supports at the centre position and at its neighbour along each axis come the stride
(how far the field moves per output position) and, from the centre one, the size and the offset,
so that the field of output position (y, x) is the box top = y * stride_y + offset_y, left =
x * stride_x + offset_x, of the measured size. Near the border the box reaches beyond the image
(the network pads there); whoever crops with it clips it to the image (`Field.crop`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fvis.hooks import Capture, select

SAMPLES = 16
"""Random images whose supports are unioned: enough for every max-pooling window's inputs to
win somewhere (each of a 2x2 window's four wins a quarter of the time, per channel)."""


@dataclass(frozen=True)
class Field:
    """The input pixels a layer's unit at output position (y, x) depends on: the box of `size`
    (height, width) whose top-left corner is (y * stride[0] + offset[0], x * stride[1] +
    offset[1]), in pixels of an `image`-sized input.

    `whole[axis]`: at the centre position the field already reached both borders of the image
    along that axis, so its true extent there is unknown (at least the image's): along that axis
    every box is the whole image.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    image: tuple[int, int]
    whole: tuple[bool, bool] = (False, False)

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of position (y, x)'s field; it may reach beyond the image."""
        (top, height), (left, width) = (self._span(0, y), self._span(1, x))
        return top, left, height, width

    def crop(self, y: int, x: int) -> tuple[int, int, int, int]:
        """`box(y, x)` clipped to the image: (top, left, height, width), at least one pixel."""
        top, left, height, width = self.box(y, x)
        t, lt = min(max(top, 0), self.image[0] - 1), min(max(left, 0), self.image[1] - 1)
        b = max(min(top + height, self.image[0]), t + 1)
        r = max(min(left + width, self.image[1]), lt + 1)
        return t, lt, b - t, r - lt

    def _span(self, axis: int, at: int) -> tuple[int, int]:
        if self.whole[axis]:
            return 0, self.image[axis]
        return at * self.stride[axis] + self.offset[axis], self.size[axis]

    def describe(self) -> dict[str, Any]:
        """The field as plain data (for JSON)."""
        return {
            "size": list(self.size),
            "stride": list(self.stride),
            "offset": list(self.offset),
            "whole": list(self.whole),
        }


def field(
    model: nn.Module,
    spec: str,
    size: tuple[int, int],
    channels: int,
    forward: Callable[[Tensor], Any] | None = None,
    device: torch.device | None = None,
    samples: int = SAMPLES,
    seed: int = 0,
) -> Field | None:
    """The receptive field of layer `spec` of `model` for `size` inputs of `channels` channels,
    measured by gradient through `forward` (default: `model`; e.g. a network with its
    preprocessing) over `samples` uniform random images drawn from `seed`.

    None for a layer without a spatial output ([B, C], or tokens [B, T, C], whose positions
    have no known layout), and where no gradient reaches the input at all.
    """
    device = device or torch.device("cpu")
    noise = torch.rand(samples, channels, *size, generator=torch.Generator().manual_seed(seed))
    noise = noise.to(device)
    with torch.no_grad(), Capture(model, [spec], forward) as capture:
        shape = select(capture.run(noise[:1]), spec).shape
    if len(shape) != 4:
        return None
    grid = (int(shape[2]), int(shape[3]))
    centre = (grid[0] // 2, grid[1] // 2)
    lines = [
        [(centre[0] + d, centre[1]) for d in (0, -1, 1) if 0 <= centre[0] + d < grid[0]],
        [(centre[0], centre[1] + d) for d in (-1, 1) if 0 <= centre[1] + d < grid[1]],
    ]
    positions = lines[0] + lines[1]
    supports = dict(zip(positions, _supports(model, spec, forward, noise, positions), strict=True))
    if not supports[centre].any():
        return None
    lines[1].append(centre)
    axes = [
        _axis([(p[axis], _extent(supports[p], axis)) for p in lines[axis]], size[axis], grid[axis])
        for axis in (0, 1)
    ]
    (h, sy, oy, wy), (w, sx, ox, wx) = axes
    return Field((h, w), (sy, sx), (oy, ox), (size[0], size[1]), (wy, wx))


def _axis(
    measured: list[tuple[int, tuple[int, int] | None]], length: int, grid: int
) -> tuple[int, int, int, bool]:
    """(size, stride, offset, whole) along one axis, from the supports' first and last pixels
    along it at a few output positions on one line through the centre.

    An edge at the image's border may be clipped there, so only edges inside the image count:
    the stride from two positions' tops (or bottoms), the offset from a top, the size from a
    bottom. Where every top or every bottom lies at the border, the field covers the whole
    image along this axis.
    """
    tops = [(at, span[0]) for at, span in measured if span and span[0] > 0]
    bottoms = [(at, span[1]) for at, span in measured if span and span[1] < length - 1]
    stride = _stride(tops) or _stride(bottoms) or max(1, length // grid)
    if not tops or not bottoms:
        return length, stride, 0, True
    (at, top), (at_bottom, bottom) = tops[0], bottoms[0]
    offset = top - at * stride
    return bottom - at_bottom * stride - offset + 1, stride, offset, False


def _stride(edges: list[tuple[int, int]]) -> int | None:
    """How far the field moves per output position: the shift of one edge between two
    positions, divided by their distance; None without two positions."""
    if len(edges) < 2:
        return None
    (a, first), (b, second) = edges[0], edges[1]
    return round((second - first) / (b - a))


def _supports(
    model: nn.Module,
    spec: str,
    forward: Callable[[Tensor], Any] | None,
    noise: Tensor,
    positions: list[tuple[int, int]],
) -> list[Tensor]:
    """For each output position, the input pixels [H, W] where the gradient of the sum of the
    layer's channels there is nonzero for some image and input channel. One backward pass: the
    batch holds the images once per position, and each copy's loss reads its own position."""
    n = len(noise)
    with torch.enable_grad():
        x = noise.repeat(len(positions), 1, 1, 1).requires_grad_(True)
        with Capture(model, [spec], forward) as capture:
            out = select(capture.run(x), spec)
        loss = sum(out[i * n : (i + 1) * n, :, y, x_].sum() for i, (y, x_) in enumerate(positions))
        (grad,) = torch.autograd.grad(loss, x)  # type: ignore[arg-type]
    nonzero = (grad != 0).view(len(positions), n, *grad.shape[1:])
    return list(nonzero.any(dim=(1, 2)).cpu())


def _extent(mask: Tensor, axis: int) -> tuple[int, int] | None:
    """The first and last index along `axis` (0: rows, 1: columns) where `mask` [H, W] is set;
    None where it is set nowhere."""
    hits = torch.nonzero(mask.any(dim=1 - axis)).flatten()
    return (int(hits[0]), int(hits[-1])) if len(hits) else None
