"""The objective algebra: scores to maximize, one value per batch item, that compose like numbers.

An objective reads captured activations (and the image) and returns a tensor of shape [B].
`a + b`, `a - b`, `2 * a`, `-a` build new objectives, as lucid's `Objective` does; every leaf
keeps its name so a run can report each term. Objectives only ever return scores to maximize:
the render loop is the one place that negates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from fvis.hooks import IMAGE


@dataclass
class Activations:
    """What one forward pass produced: tensors by layer path, and each leaf's value (memo)."""

    tensors: dict[str, torch.Tensor]
    values: dict[Leaf, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, path: str) -> torch.Tensor:
        value = self.tensors[path]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"layer {path!r} outputs a {type(value).__name__}, not a tensor")
        return value


class TermError(ValueError):
    """A term that does not fit the layer it reads; `field` names the offending config key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Objective:
    """Base class: a named function of the activations returning one score per batch item."""

    name: str

    def __call__(self, acts: Activations) -> torch.Tensor:
        raise NotImplementedError

    def leaves(self) -> Iterator[Leaf]:
        """The named terms this objective is built from, each once."""
        raise NotImplementedError

    @property
    def layers(self) -> set[str]:
        """Every layer path the objective reads: the hooks come from here."""
        return {leaf.layer for leaf in self.leaves()}

    def __add__(self, other: Objective | float) -> Objective:
        return Sum((self, _lift(other)))

    def __radd__(self, other: float) -> Objective:
        return Sum((_lift(other), self))

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-1.0) * _lift(other)

    def __rsub__(self, other: float) -> Objective:
        return _lift(other) + (-1.0) * self

    def __mul__(self, weight: float) -> Objective:
        return Scaled(self, float(weight))

    def __rmul__(self, weight: float) -> Objective:
        return Scaled(self, float(weight))

    def __neg__(self) -> Objective:
        return Scaled(self, -1.0)

    def __str__(self) -> str:
        return self.name


def _lift(value: Objective | float) -> Objective:
    return value if isinstance(value, Objective) else Constant(float(value))


class Leaf(Objective):
    """An objective computed directly from one layer; its value is memoized per forward pass."""

    layer: str

    def __call__(self, acts: Activations) -> torch.Tensor:
        if self not in acts.values:
            acts.values[self] = self.value(acts[self.layer])
        return acts.values[self]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, shape: Sequence[int]) -> None:
        """Raise TermError if the layer's output shape [B, ...] does not fit this term."""

    def leaves(self) -> Iterator[Leaf]:
        yield self

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


@dataclass(eq=False)
class Constant(Objective):
    """A constant score (what `objective + 1.0` adds)."""

    constant: float

    def __post_init__(self) -> None:
        self.name = f"{self.constant:g}"

    def __call__(self, acts: Activations) -> torch.Tensor:
        return torch.tensor(self.constant)

    def leaves(self) -> Iterator[Leaf]:
        return iter(())


@dataclass(eq=False)
class Sum(Objective):
    """The sum of terms."""

    terms: tuple[Objective, ...]

    def __post_init__(self) -> None:
        self.name = " + ".join(t.name for t in self.terms).replace("+ -", "- ")

    def __call__(self, acts: Activations) -> torch.Tensor:
        total = self.terms[0](acts)
        for term in self.terms[1:]:
            total = total + term(acts)
        return total

    def leaves(self) -> Iterator[Leaf]:
        seen: set[int] = set()
        for term in self.terms:
            for leaf in term.leaves():
                if id(leaf) not in seen:
                    seen.add(id(leaf))
                    yield leaf


@dataclass(eq=False)
class Scaled(Objective):
    """A term times a scalar weight."""

    term: Objective
    weight: float

    def __post_init__(self) -> None:
        inner = f"({self.term.name})" if isinstance(self.term, Sum) else self.term.name
        self.name = f"-{inner}" if self.weight == -1 else f"{self.weight:g} * {inner}"

    def __call__(self, acts: Activations) -> torch.Tensor:
        return self.weight * self.term(acts)

    def leaves(self) -> Iterator[Leaf]:
        return self.term.leaves()


@dataclass(eq=False)
class Masked(Objective):
    """A term restricted to some batch items (0 for the others)."""

    term: Objective
    items: tuple[int, ...]

    def __post_init__(self) -> None:
        self.name = f"{self.term.name}[batch {','.join(map(str, self.items))}]"

    def __call__(self, acts: Activations) -> torch.Tensor:
        value = self.term(acts)
        mask = torch.zeros_like(value)
        mask[list(self.items)] = 1.0
        return value * mask

    def leaves(self) -> Iterator[Leaf]:
        return self.term.leaves()


# ----------------------------------------------------------------------------- leaves


def _spatial_dims(shape: Sequence[int], field: str = "layer") -> None:
    if len(shape) not in (2, 4):
        raise TermError(field, f"expects a [B, C] or [B, C, H, W] layer, got {list(shape)}")


def _channel_in_range(shape: Sequence[int], channel: int) -> None:
    _spatial_dims(shape)
    if channel >= shape[1]:
        raise TermError(
            "channel",
            f"channel {channel} is out of range: the layer has {shape[1]} channels "
            f"(0..{shape[1] - 1})",
        )


@dataclass(eq=False)
class Channel(Leaf):
    """Mean activation of one channel over all positions: mean_{y,x} a[b, c, y, x]."""

    layer: str
    channel: int

    def __post_init__(self) -> None:
        self.name = f"channel({self.layer}, {self.channel})"

    def check(self, shape: Sequence[int]) -> None:
        _channel_in_range(shape, self.channel)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.channel].flatten(1).mean(1) if x.dim() > 2 else x[:, self.channel]


@dataclass(eq=False)
class Neuron(Leaf):
    """Activation of one channel at one position: a[b, c, y, x]; (x, y) default to the centre."""

    layer: str
    channel: int
    x: int | None = None
    y: int | None = None

    def __post_init__(self) -> None:
        where = "" if self.x is None and self.y is None else f", x={self.x}, y={self.y}"
        self.name = f"neuron({self.layer}, {self.channel}{where})"

    def check(self, shape: Sequence[int]) -> None:
        _channel_in_range(shape, self.channel)
        if len(shape) != 4:
            raise TermError("layer", f"a neuron needs a [B, C, H, W] layer, got {list(shape)}")
        for axis, value, size in (("x", self.x, shape[3]), ("y", self.y, shape[2])):
            if value is not None and value >= size:
                raise TermError(axis, f"{axis}={value} is outside the layer (size {size})")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        col = w // 2 if self.x is None else self.x
        row = h // 2 if self.y is None else self.y
        return x[:, self.channel, row, col]


@dataclass(eq=False)
class LayerMean(Leaf):
    """Mean activation over a whole layer: mean of a[b, ...]."""

    layer: str

    def __post_init__(self) -> None:
        self.name = f"layer({self.layer})"

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1)


@dataclass(eq=False)
class ClassLogit(Leaf):
    """Sum of class logits: sum_k z[b, k] over the chosen classes (logits, never softmax)."""

    layer: str
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        self.name = f"class_logit({self.layer}, {','.join(map(str, self.indices))})"

    def check(self, shape: Sequence[int]) -> None:
        if len(shape) != 2:
            raise TermError("layer", f"expects a [B, classes] layer, got {list(shape)}")
        bad = [i for i in self.indices if i >= shape[1]]
        if bad:
            raise TermError("index", f"class {bad[0]} is out of range: {shape[1]} classes")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, list(self.indices)].sum(1)


@dataclass(eq=False)
class TotalVariation(Leaf):
    """Total variation: sum |a[.., y+1, x] - a[.., y, x]| + |a[.., y, x+1] - a[.., y, x]|."""

    layer: str = IMAGE

    def __post_init__(self) -> None:
        self.name = f"total_variation({self.layer})"

    def check(self, shape: Sequence[int]) -> None:
        if len(shape) != 4:
            raise TermError("layer", f"expects a [B, C, H, W] layer, got {list(shape)}")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).sum(1)
        dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).sum(1)
        return dy + dx


@dataclass(eq=False)
class L1(Leaf):
    """L1 norm: sum |a - constant| over each item."""

    layer: str = IMAGE
    constant: float = 0.0

    def __post_init__(self) -> None:
        self.name = f"l1({self.layer})"

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.constant).abs().flatten(1).sum(1)


@dataclass(eq=False)
class L2(Leaf):
    """L2 norm: sqrt(sum (a - constant)^2 + 1e-12) over each item (epsilon keeps the gradient)."""

    layer: str = IMAGE
    constant: float = 0.0

    def __post_init__(self) -> None:
        self.name = f"l2({self.layer})"

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.constant).square().flatten(1).sum(1) + 1e-12).sqrt()
