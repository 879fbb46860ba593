"""Objectives across the items of a batch: diversity and alignment, which compare them, and
`ItemWise`, which gives each its own objective (a sweep)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fvis.objectives.activation import positions
from fvis.objectives.algebra import (
    Activations,
    Leaf,
    Masked,
    Objective,
    Scaled,
    Sum,
    index_tensor,
    label,
    unique_leaves,
    unless,
)


@dataclass(eq=False)
class Diversity(Leaf):
    """Diversity (Olah et al. 2017): minus the mean cosine similarity of item b's Gram matrix
    G_b = A_b A_b^T / N (A_b: [C, N] activations) with every other item's.

    Maximizing it pushes the items apart in style (which features co-occur), not in layout.
    A batch of one scores 0.
    """

    whole_canvas = True

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


@dataclass(eq=False)
class ItemWise(Objective):
    """Batch item i scores `terms[i]` alone: a sweep's items, each with its own objective, in one
    optimization. The value is that of sum_i Masked(terms[i], (i,)), in a few operations instead
    of several per item (which on a GPU leave it idle between hundreds of tiny kernels):

    - each term is read as a weighted sum of parts (through sums and scalar weights);
    - leaves that can be computed together (`Leaf.stacked`: single channels, directions on one
      layer) are, for the whole batch: one gather for a channel sweep, one product for the
      directions of an atlas;
    - leaves equal in kind and parameters (every item's regularizers) are computed once;
    - any other part is computed on the batch and kept for its own item, as Masked does.
    """

    terms: tuple[Objective, ...]

    def __post_init__(self) -> None:
        self.name = Sum(tuple(Masked(t, (i,)) for i, t in enumerate(self.terms))).name
        self.stacks: dict[tuple, list[tuple[int, float, Leaf]]] = {}
        self.shared: dict[tuple, list[tuple[int, float, Leaf]]] = {}
        self.others: list[tuple[int, float, Objective]] = []
        for item, term in enumerate(self.terms):
            for weight, part in _parts(term, 1.0):
                if isinstance(part, Leaf) and (key := part.stack_key()) is not None:
                    self.stacks.setdefault((type(part), key), []).append((item, weight, part))
                elif isinstance(part, Leaf) and (key := _key(part)) is not None:
                    self.shared.setdefault(key, []).append((item, weight, part))
                else:
                    self.others.append((item, weight, part))

    def __call__(self, acts: Activations) -> torch.Tensor:
        b = len(self.terms)
        parts: list[torch.Tensor] = []
        for (kind, _), members in self.stacks.items():
            items, weights, leaves = zip(*members, strict=True)
            table = kind.stacked(leaves, leaves[0].read(acts, leaves[0].layer))  # [B, K]
            for k, leaf in enumerate(leaves):
                acts.values[leaf] = table[:, k]
            own = table[
                index_tensor(items, table.device), index_tensor(_range(len(items)), table.device)
            ]
            parts.append(_spread(own * own.new_tensor(weights), items, b))
        for copies in self.shared.values():
            value = copies[0][2](acts)
            per_item = [0.0] * b
            for item, weight, copy in copies:
                acts.values[copy] = value
                per_item[item] += weight
            parts.append(value * value.new_tensor(per_item))
        for item, weight, part in self.others:
            own = part(acts).expand(b)[item : item + 1]
            parts.append(_spread(weight * own, (item,), b))
        return sum(parts[1:], parts[0])

    def leaves(self) -> Iterator[Leaf]:
        return unique_leaves(self.terms)


def _parts(term: Objective, weight: float) -> Iterator[tuple[float, Objective]]:
    """`term` as a weighted sum of parts: sums and scalar weights opened, anything else whole."""
    if isinstance(term, Sum):
        for t in term.terms:
            yield from _parts(t, weight)
    elif isinstance(term, Scaled):
        yield from _parts(term.term, weight * term.weight)
    else:
        yield weight, term


def _key(leaf: Leaf) -> tuple | None:
    """What makes two leaves compute the same: kind and parameters; None when a parameter is
    not a plain value (a tensor), so the leaf is computed on its own."""
    values = tuple(getattr(leaf, f.name) for f in dataclasses.fields(leaf) if f.init)  # type: ignore[arg-type]
    try:
        hash(values)
    except TypeError:
        return None
    return (type(leaf), values)


def _spread(values: torch.Tensor, items: tuple[int, ...], b: int) -> torch.Tensor:
    """[B] zeros but for `values` at `items` (added where an item comes twice)."""
    index = index_tensor(items, values.device)
    return values.new_zeros(b).index_put((index,), values, accumulate=True)


def _range(n: int) -> tuple[int, ...]:
    return tuple(range(n))
