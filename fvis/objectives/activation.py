"""Objectives on one layer's activations: channels, neurons, layers, logits and penalties.

Layers may be convolutional [B, C, H, W], dense [B, C] or token [B, T, C] (transformers,
channels last); `positions` brings all three to [B, C, N].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from fvis.hooks import IMAGE
from fvis.objectives.algebra import (
    Leaf,
    Objective,
    TermError,
    index_tensor,
    indices,
    label,
    unless,
)

if TYPE_CHECKING:
    from fvis.errors import YamlPath
    from fvis.objectives.compile import Context

Shapes = dict[str, tuple[int, ...]]


def positions(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H*W]; [B, T, C] -> [B, C, T]; [B, C] -> [B, C, 1]."""
    if x.dim() == 4:
        return x.flatten(2)
    if x.dim() == 3:
        return x.transpose(1, 2)
    if x.dim() == 2:
        return x[:, :, None]
    raise ValueError(f"expected a [B, C], [B, T, C] or [B, C, H, W] layer, got {list(x.shape)}")


def channel_count(shape: Sequence[int], field: str = "layer") -> int:
    """Channels of a layer shape: dim 1 for [B, C] and [B, C, H, W], the last for [B, T, C]."""
    if len(shape) in (2, 4):
        return shape[1]
    if len(shape) == 3:
        return shape[2]
    raise TermError(field, f"expects a [B, C], [B, T, C] or [B, C, H, W] layer, got {list(shape)}")


def check_channel(shape: Sequence[int], channel: int | tuple[int, ...]) -> None:
    """Every channel named must exist; in a list, the error names the item (`channel[1]`)."""
    count = channel_count(shape)
    listed = not isinstance(channel, int)
    for i, c in enumerate(channel if not isinstance(channel, int) else (channel,)):
        if c >= count:
            raise TermError(
                ("channel", i) if listed else "channel",
                f"channel {c} is out of range: the layer has {count} channels (0..{count - 1})",
            )


def one_or_many(channel: int | Sequence[int]) -> int | tuple[int, ...]:
    """A channel index, or several as a tuple (a list of one is that one)."""
    if isinstance(channel, int):
        return channel
    return channel[0] if len(channel) == 1 else tuple(channel)


def check_position(shape: Sequence[int], x: int | None, y: int | None) -> None:
    """A position (x = column, y = row; x = token on [B, T, C]) must lie inside the layer."""
    if len(shape) == 2:
        raise TermError("layer", f"a neuron needs positions, the layer is {list(shape)}")
    if len(shape) == 3 and y is not None:
        raise TermError("y", "a token layer [B, T, C] has one position axis: use x")
    sizes = {"x": shape[3], "y": shape[2]} if len(shape) == 4 else {"x": shape[1]}
    for axis, value in (("x", x), ("y", y)):
        if value is not None and axis in sizes and value >= sizes[axis]:
            raise TermError(axis, f"{axis}={value} is outside the layer (size {sizes[axis]})")


def at_position(x: torch.Tensor, col: int | None, row: int | None) -> torch.Tensor:
    """The [B, C] activation vectors at one position, by default the centre."""
    if x.dim() == 3:  # tokens: [B, T, C]
        return x[:, x.shape[1] // 2 if col is None else col, :]
    h, w = x.shape[-2:]
    return x[:, :, h // 2 if row is None else row, w // 2 if col is None else col]


def _probabilities(x: torch.Tensor) -> bool:
    """Whether every row of [B, C] is non-negative and sums to 1."""
    return bool((x >= 0).all() and torch.allclose(x.sum(1), torch.ones(1), atol=1e-3))


@dataclass(eq=False)
class Channel(Leaf):
    """Mean activation of a channel over all positions: mean_p a[b, c, p]. Several channels
    (keras-vis's filter_indices): the sum of their means, sum_c mean_p a[b, c, p], so that each
    channel weighs as it would alone."""

    whole_canvas = True

    layer: str
    channel: int | tuple[int, ...]

    def __post_init__(self) -> None:
        self.channel = one_or_many(self.channel)
        self.name = label("channel", self.layer, indices(self.channel))

    def check(self, shapes: Shapes) -> None:
        check_channel(shapes[self.layer], self.channel)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        p = positions(x)
        if isinstance(self.channel, int):
            return p[:, self.channel].mean(1)
        return p[:, list(self.channel)].mean(2).sum(1)

    def stack_key(self) -> tuple | None:
        return (self.layer,) if isinstance(self.channel, int) else None

    @classmethod
    def stacked(cls, leaves: Sequence[Leaf], x: torch.Tensor) -> torch.Tensor:
        """One gather of the leaves' channels."""
        channels = tuple(cast(Channel, leaf).channel for leaf in leaves)
        chosen = index_tensor(cast(tuple[int, ...], channels), x.device)
        return positions(x)[:, chosen].mean(2)


@dataclass(eq=False)
class Neuron(Leaf):
    """A channel at one position: a[b, c, y, x] (x = column, y = row), default the centre;
    several channels: the sum of their activations there.

    On token layers [B, T, C], x is the token index and y is not used.
    """

    layer: str
    channel: int | tuple[int, ...]
    x: int | None = None
    y: int | None = None

    def __post_init__(self) -> None:
        self.channel = one_or_many(self.channel)
        self.name = label("neuron", self.layer, indices(self.channel), x=self.x, y=self.y)

    def check(self, shapes: Shapes) -> None:
        check_channel(shapes[self.layer], self.channel)
        check_position(shapes[self.layer], self.x, self.y)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        a = at_position(x, self.x, self.y)
        if isinstance(self.channel, int):
            return a[:, self.channel]
        return a[:, list(self.channel)].sum(1)


@dataclass(eq=False)
class LayerMean(Leaf):
    """Mean activation over a whole layer (captum's LayerActivation): mean of a[b, ...]."""

    whole_canvas = True

    layer: str

    def __post_init__(self) -> None:
        self.name = label("layer", self.layer)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1)


@dataclass(eq=False)
class DeepDream(Leaf):
    """DeepDream: mean of squared activations, mean a[b, ...]^2 (amplify whatever is there)."""

    whole_canvas = True

    layer: str

    def __post_init__(self) -> None:
        self.name = label("deepdream", self.layer)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).square().mean(1)


@dataclass(eq=False)
class ClassLogit(Leaf):
    """Sum of class logits: sum_k z[b, k] over the chosen classes (logits, never softmax)."""

    layer: str
    indices: tuple[int, ...]

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> Objective:
        """The logits summed; a warning when the layer looks like probabilities (a softmax)."""
        layer = ctx.layer(loc)
        probe = ctx.probe.get(layer)
        if probe is not None and probe.dim() == 2 and _probabilities(probe):
            ctx.warnings.append(
                (
                    (*loc, "layer"),
                    f"class_logit reads {layer!r}, which outputs probabilities (softmax); "
                    "logits give better visualizations: point `layer` at the module before the "
                    "softmax (`fvis layers CONFIG` lists them)",
                )
            )
        return cls(layer, tuple(node.index))

    def __post_init__(self) -> None:
        self.name = label("class_logit", self.layer, indices(self.indices))

    def check(self, shapes: Shapes) -> None:
        shape = shapes[self.layer]
        if len(shape) != 2:
            raise TermError("layer", f"expects a [B, classes] layer, got {list(shape)}")
        bad = [i for i in self.indices if i >= shape[1]]
        if bad:
            raise TermError("index", f"class {bad[0]} is out of range: {shape[1]} classes")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, list(self.indices)].sum(1)


@dataclass(eq=False)
class Opacity(Leaf):
    """Mean opacity: the mean of each image's alpha channel (its last), in [0, 1].

    `param.alpha_penalty` subtracts it, weighted, from the objective (as lucid's transparency
    renders do), so that only what carries the objective stays opaque. A term like any other:
    reported in run.json and scaled with the loss under fp16.
    """

    layer: str = IMAGE

    def __post_init__(self) -> None:
        self.name = label("opacity", self.layer)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1].flatten(1).mean(1)


@dataclass(eq=False)
class TotalVariation(Leaf):
    """Total variation: sum |a[.., y+1, x] - a[.., y, x]| + |a[.., y, x+1] - a[.., y, x]|."""

    layer: str = IMAGE

    def __post_init__(self) -> None:
        self.name = label("total_variation", self.layer)

    def check(self, shapes: Shapes) -> None:
        if len(shapes[self.layer]) != 4:
            raise TermError(
                "layer", f"expects a [B, C, H, W] layer, got {list(shapes[self.layer])}"
            )

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
        self.name = label("l1", self.layer, unless(self.constant, 0.0))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.constant).abs().flatten(1).sum(1)


@dataclass(eq=False)
class L2(Leaf):
    """L2 norm: sqrt(sum (a - constant)^2 + 1e-12) over each item (epsilon keeps the gradient)."""

    layer: str = IMAGE
    constant: float = 0.0

    def __post_init__(self) -> None:
        self.name = label("l2", self.layer, unless(self.constant, 0.0))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.constant).square().flatten(1).sum(1) + 1e-12).sqrt()


@dataclass(eq=False)
class L2Mean(Leaf):
    """Mean squared distance to a constant: mean (a - constant)^2 over each item."""

    layer: str = IMAGE
    constant: float = 0.0

    def __post_init__(self) -> None:
        self.name = label("l2_mean", self.layer, unless(self.constant, 0.0))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.constant).square().flatten(1).mean(1)
