"""Frequency penalties on a layer: what a low-pass filter would remove."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fvis.filters import gaussian_blur
from fvis.hooks import IMAGE
from fvis.objectives.algebra import Leaf, TermError, label


@dataclass(eq=False)
class BlurResidual(Leaf):
    """High-frequency energy: sum (a - G_sigma * a)^2 over each item, G_sigma a Gaussian blur.

    Zero for an image a blur leaves unchanged; grows with the power above about 1 / (2 pi sigma)
    cycles per pixel. A penalty (negative weight, or under `regularizers:`): the smooth
    counterpart of total variation.
    """

    layer: str = IMAGE
    sigma: float = 1.0

    def __post_init__(self) -> None:
        self.name = label("blur", self.layer, self.sigma)  # sigma always: its scale

    def check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        if len(shapes[self.layer]) != 4:
            raise TermError(
                "layer", f"expects a [B, C, H, W] layer, got {list(shapes[self.layer])}"
            )

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return (x - gaussian_blur(x, self.sigma)).square().flatten(1).sum(1)
