"""Objectives along directions in activation space: dot products, cosines and their blends.

From captum.optim (Direction, NeuronDirection, AngledNeuronDirection, TensorDirection,
ActivationWeights, VectorLoss, FacetLoss) and lucid's research on objectives (cosine, dot times
a floored cosine power, dot with an orthogonal penalty, L2 inversion, whitened comparisons).
A direction `v` lives on the channel axis; with `transform` M, activations and direction are
compared after mapping both by M (e.g. M = Cov^-1/2: a whitened inner product).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch

from fvis.filters import center_crop
from fvis.objectives.activation import (
    Shapes,
    at_position,
    channel_count,
    check_position,
    positions,
)
from fvis.objectives.algebra import Activations, Leaf, Objective, TermError, digest, label

if TYPE_CHECKING:
    from fvis.errors import YamlPath
    from fvis.objectives.compile import Context

EPS = 1e-8


def dot_cossim(a: torch.Tensor, v: torch.Tensor, power: float, floor: float) -> torch.Tensor:
    """dot(a, v) * max(cos(a, v), floor)^power along dim 1 (power 0: the plain dot product).

    The floor keeps the cosine factor positive, so an anti-aligned activation (negative dot)
    stays negative instead of two negatives multiplying into a reward.
    """
    dot = torch.einsum("bc...,c->b...", a, v)
    if power == 0:
        return dot
    cos = dot / (a.norm(dim=1) * v.norm() + EPS)
    return dot * cos.clamp(min=floor).pow(power)


def check_vector(shape: tuple[int, ...], v: torch.Tensor, transform: torch.Tensor | None) -> None:
    """The direction must have one value per channel (of the transformed space, if any)."""
    channels = channel_count(shape)
    if transform is not None and transform.shape[1] != channels:
        raise TermError(
            "transform",
            f"the transform is {list(transform.shape)}, the layer has {channels} channels",
        )
    expected = transform.shape[0] if transform is not None else channels
    if v.shape != (expected,):
        raise TermError(
            "vector", f"the vector has shape {list(v.shape)}, the layer needs [{expected}]"
        )


@dataclass(eq=False)
class _Tensors(Leaf):
    """A leaf holding tensors (directions, weights, targets), labelled by their sources.

    Its label (`name`) spells it as an expression would: `kind`, then the fields named in
    `positional`, then every other field that differs from its default as `key=value`. A tensor
    shows as `sources[field]` (how the config named it: `random(3)`, `file('v.pt', 'dir')`), or
    else as `field#3fa2`, four hex digits of its values: two terms differing only in their
    vectors get different labels, and a label is the same in every run."""

    kind: ClassVar[str]
    positional: ClassVar[tuple[str, ...]] = ("layer", "vector")
    sources: dict[str, str] = field(default_factory=dict, kw_only=True, repr=False)

    def __post_init__(self) -> None:
        others = [
            f
            for f in dataclasses.fields(self)
            if f.init and f.name not in (*self.positional, "sources")
        ]
        keywords = {
            f.name: self._shown(f.name) for f in others if not _is_default(getattr(self, f.name), f)
        }
        args = [self._shown(name) for name in self.positional]
        self.name = label(self.kind, *args, **keywords)

    def _shown(self, name: str) -> object:
        value = getattr(self, name)
        if isinstance(value, torch.Tensor):
            return self.sources.get(name) or f"{name}#{digest(value)}"
        return value


def _is_default(value: object, spec: dataclasses.Field[Any]) -> bool:
    """Whether a field holds its default (a tensor never does)."""
    return not isinstance(value, torch.Tensor) and value == spec.default


@dataclass(eq=False)
class _Directional(_Tensors):
    """Shared by the direction family: a layer, a vector, an optional linear transform."""

    layer: str
    vector: torch.Tensor
    transform: torch.Tensor | None

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        """Layer, vector and transform loaded, then this kind's own fields (cossim_pow...)."""
        tensors = ("layer", "vector", "transform", "sources")
        own = [f.name for f in dataclasses.fields(cls) if f.name not in tensors]
        fields = {name: getattr(node, name) for name in own if name in type(node).model_fields}
        return cls(
            ctx.layer(loc),
            ctx.vector(node, loc),
            ctx.matrix(node, loc),
            **fields,
            sources=ctx.sources(node, "vector", "transform"),
        )

    def check(self, shapes: Shapes) -> None:
        check_vector(shapes[self.layer], self.vector, self.transform)

    def mapped(self, x: torch.Tensor) -> torch.Tensor:
        """Activations as [B, C, N], mapped by the transform if there is one."""
        p = positions(x)
        return p if self.transform is None else torch.einsum("dc,bcn->bdn", self.transform, p)

    def direction(self) -> torch.Tensor:
        return self.vector if self.transform is None else self.transform @ self.vector


@dataclass(eq=False)
class Direction(_Directional):
    """Mean over positions of dot(a_p, v) * max(cos(a_p, v), floor)^cossim_pow."""

    kind = "direction"
    whole_canvas = True
    cossim_pow: float = 0.0
    floor: float = 0.1

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return dot_cossim(self.mapped(x), self.direction(), self.cossim_pow, self.floor).mean(1)

    def stack_key(self) -> tuple | None:
        return None if self.transform is not None else (self.layer, self.cossim_pow, self.floor)

    @classmethod
    def stacked(cls, leaves: Sequence[Leaf], x: torch.Tensor) -> torch.Tensor:
        """Every item against every leaf's vector V [K, C] at once (dot_cossim, batched)."""
        directions = cast("Sequence[Direction]", leaves)
        first = directions[0]
        v = torch.stack([leaf.vector for leaf in directions])
        a = positions(x)
        dot = torch.einsum("bcn,kc->bkn", a, v)
        if first.cossim_pow == 0:
            return dot.mean(2)
        cos = dot / (a.norm(dim=1)[:, None, :] * v.norm(dim=1)[None, :, None] + EPS)
        return (dot * cos.clamp(min=first.floor).pow(first.cossim_pow)).mean(2)


@dataclass(eq=False)
class DotCossim(Direction):
    """lucid's dot x cosine^n: like `direction`, with a cosine power of 1 by default."""

    kind = "dot_cossim"
    cossim_pow: float = 1.0


@dataclass(eq=False)
class Cosine(_Directional):
    """Mean over positions of cos(a_p, v): the angle only, whatever the magnitude."""

    kind = "cosine"
    whole_canvas = True

    def value(self, x: torch.Tensor) -> torch.Tensor:
        a, v = self.mapped(x), self.direction()
        cos = torch.einsum("bcn,c->bn", a, v) / (a.norm(dim=1) * v.norm() + EPS)
        return cos.mean(1)


@dataclass(eq=False)
class NeuronDirection(_Directional):
    """dot(a, v) * max(cos(a, v), floor)^cossim_pow at one position (default the centre)."""

    kind = "neuron_direction"
    x: int | None = None
    y: int | None = None
    cossim_pow: float = 0.0
    floor: float = 0.1

    def check(self, shapes: Shapes) -> None:
        super().check(shapes)
        check_position(shapes[self.layer], self.x, self.y)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        a = at_position(x, self.x, self.y)
        if self.transform is not None:
            a = a @ self.transform.T
        return dot_cossim(a, self.direction(), self.cossim_pow, self.floor)


@dataclass(eq=False)
class AngledNeuronDirection(NeuronDirection):
    """NeuronDirection with a cosine power of 4 by default: rewards the angle strongly."""

    kind = "angled_neuron_direction"
    cossim_pow: float = 4.0


@dataclass(eq=False)
class DotOrthogonal(_Directional):
    """Mean over positions of dot(a_p, v^) - penalty * ||a_p - dot(a_p, v^) v^||_2 (v^ = v/|v|).

    Rewards moving along the direction and penalizes everything orthogonal to it.
    """

    kind = "dot_orthogonal_penalty"
    whole_canvas = True
    penalty: float = 1.0

    def value(self, x: torch.Tensor) -> torch.Tensor:
        a, v = self.mapped(x), self.direction()
        unit = v / (v.norm() + EPS)
        along = torch.einsum("bcn,c->bn", a, unit)
        orthogonal = a - along[:, None, :] * unit[None, :, None]
        return (along - self.penalty * orthogonal.norm(dim=1)).mean(1)


@dataclass(eq=False)
class VectorLoss(_Directional):
    """Mean over positions of f(dot(a_p, v)), f = ReLU or identity: the activation of a
    direction treated as a neuron of its own."""

    kind = "vector"
    whole_canvas = True
    relu: bool = True

    def value(self, x: torch.Tensor) -> torch.Tensor:
        dot = torch.einsum("bcn,c->bn", self.mapped(x), self.direction())
        return (dot.clamp(min=0) if self.relu else dot).mean(1)


@dataclass(eq=False)
class TensorDirection(_Tensors):
    """dot(a, T) * max(cos(a, T), floor)^cossim_pow of a [C, h, w] direction tensor T with the
    activations' centred h x w window, per item."""

    kind = "tensor_direction"
    positional = ("layer", "tensor")
    layer: str
    tensor: torch.Tensor
    cossim_pow: float = 0.0
    floor: float = 0.1

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        layer = ctx.layer(loc)
        shape = (*ctx.shapes[layer][1:2], 1, 1)
        tensor = ctx.tensor(node.tensor, (*loc, "tensor"), shape)
        sources = ctx.sources(node, "tensor")
        return cls(layer, tensor, node.cossim_pow, node.floor, sources=sources)

    def check(self, shapes: Shapes) -> None:
        shape = shapes[self.layer]
        if len(shape) != 4:
            raise TermError("layer", f"expects a [B, C, H, W] layer, got {list(shape)}")
        c, h, w = self.tensor.shape
        if c != shape[1] or h > shape[2] or w > shape[3]:
            raise TermError(
                "tensor",
                f"the tensor has shape {list(self.tensor.shape)}, the layer is {list(shape[1:])}"
                " (channels must match, the window must fit)",
            )

    def value(self, x: torch.Tensor) -> torch.Tensor:
        window = center_crop(x, *self.tensor.shape[1:]).flatten(1)
        return dot_cossim(window, self.tensor.flatten(), self.cossim_pow, self.floor)


def _check_weights(shape: tuple[int, ...], weights: torch.Tensor, field: str) -> None:
    channels = channel_count(shape)
    if weights.shape not in ((channels,), tuple(shape[1:])):
        raise TermError(
            field,
            f"the weights have shape {list(weights.shape)}, the layer needs [{channels}] "
            f"or {list(shape[1:])}",
        )


def _weighted(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean over positions of sum over channels of w * a (w per channel or per element)."""
    if weights.dim() == 1:
        return torch.einsum("bcn,c->bn", positions(x), weights).mean(1)
    return positions(x * weights).sum(1).mean(1)


@dataclass(eq=False)
class ActivationWeights(_Tensors):
    """Weighted activations: mean over positions of sum_c w_c a_c (w per channel, or per
    element of the layer)."""

    kind = "activation_weights"
    positional = ("layer", "weights")
    layer: str
    weights: torch.Tensor

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        weights = ctx.vector(node, loc, "weights")
        return cls(ctx.layer(loc), weights, sources=ctx.sources(node, "weights"))

    def check(self, shapes: Shapes) -> None:
        _check_weights(shapes[self.layer], self.weights, "weights")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return _weighted(x, self.weights)


@dataclass(eq=False)
class Facet(_Tensors):
    """Facet loss (Goh et al. 2021): a direction at a late layer plus facet weights (e.g. a
    linear probe's) on an earlier layer: mean_p dot(u_p, v) + strength * weighted(a, W)."""

    kind = "facet"
    positional = ("layer", "ultimate", "vector", "weights")
    layer: str
    ultimate: str
    vector: torch.Tensor
    weights: torch.Tensor
    strength: float = 1.0

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        vector = ctx.vector(node, loc, "vector", "ultimate")
        weights = ctx.vector(node, loc, "weights")
        layers = ctx.layer(loc), ctx.layer(loc, "ultimate")
        sources = ctx.sources(node, "vector", "weights")
        return cls(*layers, vector, weights, node.strength, sources=sources)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.layer, self.ultimate)

    def check(self, shapes: Shapes) -> None:
        check_vector(shapes[self.ultimate], self.vector, None)
        _check_weights(shapes[self.layer], self.weights, "weights")

    def compute(self, acts: Activations) -> torch.Tensor:
        late = torch.einsum("bcn,c->bn", positions(acts[self.ultimate]), self.vector).mean(1)
        return late + self.strength * _weighted(acts[self.layer], self.weights)


@dataclass(eq=False)
class L2Inversion(_Tensors):
    """Feature inversion: -||a - target||_2 per item, the target an activation to reproduce."""

    kind = "l2_inversion"
    positional = ("layer", "target")
    layer: str
    target: torch.Tensor

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        target = ctx.target(node, loc)
        return cls(ctx.layer(loc), target, sources=ctx.sources(node, "target"))

    def check(self, shapes: Shapes) -> None:
        shape = tuple(shapes[self.layer][1:])
        if tuple(self.target.shape) not in (shape, (channel_count(shapes[self.layer]),)):
            raise TermError(
                "target",
                f"the target has shape {list(self.target.shape)}, the layer is {list(shape)}",
            )

    def value(self, x: torch.Tensor) -> torch.Tensor:
        target = self.target
        if target.dim() == 1 and x.dim() > 2:  # one vector for every position
            return -((positions(x) - target[None, :, None]).square().sum((1, 2)) + 1e-12).sqrt()
        return -((x - target).square().flatten(1).sum(1) + 1e-12).sqrt()
