"""Objectives that compare the items of a batch: diversity and alignment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fvis.objectives.activation import positions
from fvis.objectives.algebra import Leaf, label, unless


@dataclass(eq=False)
class Diversity(Leaf):
    """Diversity (Olah et al. 2017): minus the mean cosine similarity of item b's Gram matrix
    G_b = A_b A_b^T / N (A_b: [C, N] activations) with every other item's.

    Maximizing it pushes the items apart in style (which features co-occur), not in layout.
    A batch of one scores 0.
    """

    layer: str

    def __post_init__(self) -> None:
        self.name = label("diversity", self.layer)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if b < 2:
            return x.new_zeros(b)
        a = positions(x)
        gram = torch.einsum("bcn,bdn->bcd", a, a).flatten(1) / a.shape[-1]
        unit = gram / (gram.norm(dim=1, keepdim=True) + 1e-8)
        similarity = unit @ unit.T
        others = similarity.sum(1) - similarity.diagonal()
        return -others / (b - 1)


@dataclass(eq=False)
class Alignment(Leaf):
    """Alignment: minus the mean squared difference of each item's activations with its
    neighbours at distance d = 1..distance, weighted by decay^-d; half of each pair's term goes
    to each of its two items, so the batch total is -sum over pairs.

    Used with interpolation so neighbouring images stay visually aligned.
    """

    layer: str
    decay: float = 2.0
    distance: int = 4

    def __post_init__(self) -> None:
        self.name = label(
            "alignment",
            self.layer,
            decay=unless(self.decay, 2.0),
            distance=unless(self.distance, 4),
        )

    def value(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        out = x.new_zeros(b)
        flat = x.flatten(1)
        for d in range(1, min(self.distance, b - 1) + 1):
            pair = (flat[d:] - flat[:-d]).square().mean(1) / self.decay**d / 2
            out = out - torch.cat([pair, pair.new_zeros(d)]) - torch.cat([pair.new_zeros(d), pair])
        return out
