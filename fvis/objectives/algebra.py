"""The objective algebra: scores to maximize, one value per batch item, that compose like numbers.

An objective reads captured activations (and the image) and returns a tensor of shape [B].
`a + b`, `a - b`, `a * b`, `2 * a`, `a / 2`, `-a`, `a ** 2` build new objectives, as lucid's
`Objective` does; every leaf keeps its name so a run can report each term. Objectives only ever
return scores to maximize: the render loop is the one place that negates.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fvis.filters import center_crop
from fvis.hooks import select

if TYPE_CHECKING:
    from fvis.errors import YamlPath
    from fvis.objectives.compile import Context

# Node fields that name layers: built objectives receive them resolved to layer specs.
LAYER_FIELDS = ("layer", "ultimate")


@dataclass
class Activations:
    """What one forward pass produced: outputs by module path, and each leaf's value (memo).

    Indexing takes a layer spec: a module path, optionally followed by selectors into a tuple or
    dict output (`blocks.3[0]`). When the model saw the image on a larger canvas (a pad that
    keeps its frame), `regions` holds each spatial layer's [H, W] on the image alone: indexing
    gives that centre part of the map, the positions a term indexes; `whole` gives every
    position, the frame's included.
    """

    tensors: dict[str, object]
    values: dict[Leaf, torch.Tensor] = field(default_factory=dict)
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __getitem__(self, spec: str) -> torch.Tensor:
        x = self.whole(spec)
        region = self.regions.get(spec)
        return x if region is None else center_crop(x, *region)

    def whole(self, spec: str) -> torch.Tensor:
        return select(self.tensors, spec)


class TermError(ValueError):
    """A term that does not fit the layer it reads; `field` names the offending config key, or
    its path below the node (`("channel", 1)`: the second channel of a list)."""

    def __init__(self, field: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.field = field

    @property
    def loc(self) -> tuple[str | int, ...]:
        """The offending key's path below the node."""
        return self.field if isinstance(self.field, tuple) else (self.field,)


class Objective:
    """Base class: a named function of the activations returning one score per batch item."""

    name: str

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        """The objective a config node describes (the class its schema `builds`).

        By default each field of this dataclass takes the node's field of the same name, layer
        fields resolved to their specs; kinds that load tensors or compile children override it.
        """
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.init and f.name in LAYER_FIELDS:
                values[f.name] = ctx.layer(loc, f.name)
            elif f.init and f.name in type(node).model_fields:
                values[f.name] = getattr(node, f.name)
        return cls(**values)

    def __call__(self, acts: Activations) -> torch.Tensor:
        raise NotImplementedError

    def leaves(self) -> Iterator[Leaf]:
        """The named terms this objective is built from, each once."""
        raise NotImplementedError

    @property
    def layers(self) -> set[str]:
        """Every layer spec the objective reads: the hooks come from here."""
        return {layer for leaf in self.leaves() for layer in leaf.reads}

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Objective:
        """Move the tensors the leaves hold (directions, weights, targets) to a device, once;
        floating ones take `dtype` (the render's)."""
        for leaf in self.leaves():
            for key, value in vars(leaf).items():
                if isinstance(value, torch.Tensor):
                    cast = dtype if value.is_floating_point() else None
                    setattr(leaf, key, value.to(device, cast))
        return self

    def __add__(self, other: Objective | float) -> Objective:
        return Sum((self, _lift(other)))

    def __radd__(self, other: float) -> Objective:
        return Sum((_lift(other), self))

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-1.0) * _lift(other)

    def __rsub__(self, other: float) -> Objective:
        return _lift(other) + (-1.0) * self

    def __mul__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Product((self, other))
        return Scaled(self, float(other))

    def __rmul__(self, weight: float) -> Objective:
        return Scaled(self, float(weight))

    def __truediv__(self, divisor: float) -> Objective:
        return Scaled(self, 1.0 / float(divisor))

    def __neg__(self) -> Objective:
        return Scaled(self, -1.0)

    def __pow__(self, exponent: float) -> Objective:
        return Power(self, float(exponent))

    def __str__(self) -> str:
        return self.name


def label(kind: str, *args: object, **keywords: object) -> str:
    """A term's label (its name in run.json), spelled as an expression spells it:
    `kind(arg, ..., key=value)`. None arguments and keywords are left out, so that a caller
    passes a parameter only where it tells the term apart from the default."""
    parts = [shown(a) for a in args if a is not None]
    parts += [f"{key}={shown(v)}" for key, v in keywords.items() if v is not None]
    return f"{kind}({', '.join(parts)})"


def unless(value: object, default: object) -> object:
    """`value`, or None (left out of a label) when it is the default."""
    return None if value == default else value


def shown(value: object) -> str:
    """A parameter as a label shows it: numbers short but exact, lists in brackets."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, list | tuple):
        return f"[{', '.join(map(shown, value))}]"
    return str(value)


def indices(values: int | Sequence[int]) -> str:
    """One index as itself (also a list of one), several as a list: `5`, `[5, 12]`."""
    if isinstance(values, int):
        return str(values)
    return str(values[0]) if len(values) == 1 else shown(list(values))


def digest(tensor: torch.Tensor) -> str:
    """Four hex digits of a tensor's shape and float32 values: a short label for inline numbers,
    the same in every run."""
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    content = hashlib.sha256(repr(tuple(data.shape)).encode() + data.numpy().tobytes())
    return content.hexdigest()[:4]


@functools.lru_cache(maxsize=256)
def index_tensor(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An index tensor on the device, made once rather than at every step."""
    return torch.tensor(values, dtype=torch.long, device=device)


def _lift(value: Objective | float) -> Objective:
    return value if isinstance(value, Objective) else Constant(float(value))


def unique_leaves(terms: Sequence[Objective]) -> Iterator[Leaf]:
    """The leaves of `terms`, each once."""
    seen: set[int] = set()
    for term in terms:
        for leaf in term.leaves():
            if id(leaf) not in seen:
                seen.add(id(leaf))
                yield leaf


def _wrapped(term: Objective) -> str:
    return f"({term.name})" if isinstance(term, (Sum, Product)) else term.name


class Leaf(Objective):
    """An objective computed directly from activations; its value is memoized per forward pass.

    `reads` lists the layer specs it needs; `layer` is the main one (reported in errors).
    `whole_canvas`: a term that averages over positions reads every position of a framed
    canvas (as lucid's objectives do); any other reads the image's own part of the map.
    """

    layer: str
    whole_canvas: ClassVar[bool] = False

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.layer,)

    def __call__(self, acts: Activations) -> torch.Tensor:
        if self not in acts.values:
            acts.values[self] = self.compute(acts)
        return acts.values[self]

    def compute(self, acts: Activations) -> torch.Tensor:
        """The value from all activations; by default, `value` of the main layer."""
        return self.value(self.read(acts, self.layer))

    def read(self, acts: Activations, spec: str) -> torch.Tensor:
        """The map of `spec` this term reads: all of it, or the image's part (`whole_canvas`)."""
        return acts.whole(spec) if self.whole_canvas else acts[spec]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Raise TermError if the shapes [B, ...] of the layers read do not fit this term."""

    def stack_key(self) -> tuple | None:
        """What leaves of this kind must share for `stacked` to compute them together (the
        layer, the parameters but one tensor); None: this leaf is computed on its own."""
        return None

    @classmethod
    def stacked(cls, leaves: Sequence[Leaf], x: torch.Tensor) -> torch.Tensor:
        """[B, K]: leaf k's value on every item of the main layer's activations `x`, for
        leaves with one `stack_key`, in a few operations (a sweep's items, `ItemWise`)."""
        raise NotImplementedError

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

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        return cls(_children(node.terms, (*loc, "terms"), ctx))

    def __post_init__(self) -> None:
        self.name = " + ".join(t.name for t in self.terms).replace("+ -", "- ")

    def __call__(self, acts: Activations) -> torch.Tensor:
        total = self.terms[0](acts)
        for term in self.terms[1:]:
            total = total + term(acts)
        return total

    def leaves(self) -> Iterator[Leaf]:
        return unique_leaves(self.terms)


@dataclass(eq=False)
class Product(Objective):
    """The product of terms, item by item."""

    terms: tuple[Objective, ...]

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        return cls(_children(node.terms, (*loc, "terms"), ctx))

    def __post_init__(self) -> None:
        self.name = " * ".join(_wrapped(t) for t in self.terms)

    def __call__(self, acts: Activations) -> torch.Tensor:
        total = self.terms[0](acts)
        for term in self.terms[1:]:
            total = total * term(acts)
        return total

    def leaves(self) -> Iterator[Leaf]:
        return unique_leaves(self.terms)


@dataclass(eq=False)
class Scaled(Objective):
    """A term times a scalar weight."""

    term: Objective
    weight: float

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        """The `neg` node: its term times -1 (every node's own `weight` applies on top)."""
        return cls(ctx.compile(node.term, (*loc, "term")), -1.0)

    def __post_init__(self) -> None:
        inner = _wrapped(self.term)
        self.name = f"-{inner}" if self.weight == -1 else f"{self.weight:g} * {inner}"

    def __call__(self, acts: Activations) -> torch.Tensor:
        return self.weight * self.term(acts)

    def leaves(self) -> Iterator[Leaf]:
        return self.term.leaves()


@dataclass(eq=False)
class Power(Objective):
    """A term raised to a power, item by item (sign kept for odd powers, as torch.pow does)."""

    term: Objective
    exponent: float

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        return cls(ctx.compile(node.term, (*loc, "term")), node.exponent)

    def __post_init__(self) -> None:
        self.name = f"{_wrapped(self.term)} ** {self.exponent:g}"

    def __call__(self, acts: Activations) -> torch.Tensor:
        return self.term(acts).pow(self.exponent)

    def leaves(self) -> Iterator[Leaf]:
        return self.term.leaves()


@dataclass(eq=False)
class Masked(Objective):
    """A term restricted to some batch items (0 for the others)."""

    term: Objective
    items: tuple[int, ...]

    def __post_init__(self) -> None:
        self.name = f"{_wrapped(self.term)}[batch {','.join(map(str, self.items))}]"

    def __call__(self, acts: Activations) -> torch.Tensor:
        value = self.term(acts)
        mask = torch.zeros_like(value)
        mask[list(self.items)] = 1.0
        return value * mask

    def leaves(self) -> Iterator[Leaf]:
        return self.term.leaves()


@dataclass(eq=False)
class Interpolate(Objective):
    """Item b of B optimizes (1 - t) * start + t * end with t = b / (B - 1).

    ActivationInterpolation: the batch becomes a strip from one objective to another.
    """

    start: Objective
    end: Objective

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        start = ctx.compile(node.start, (*loc, "start"))
        return cls(start, ctx.compile(node.end, (*loc, "end")))

    def __post_init__(self) -> None:
        self.name = f"interpolate({self.start.name} -> {self.end.name})"

    def __call__(self, acts: Activations) -> torch.Tensor:
        a, b = self.start(acts), self.end(acts)
        n = max(a.shape[0] if a.dim() else 1, b.shape[0] if b.dim() else 1)
        t = (
            torch.linspace(0.0, 1.0, n, device=a.device)
            if n > 1
            else torch.zeros(1, device=a.device)
        )
        return (1 - t) * a + t * b

    def leaves(self) -> Iterator[Leaf]:
        return unique_leaves((self.start, self.end))


def _children(nodes: Sequence[Any], loc: YamlPath, ctx: Context) -> tuple[Objective, ...]:
    return tuple(ctx.compile(node, (*loc, i)) for i, node in enumerate(nodes))
