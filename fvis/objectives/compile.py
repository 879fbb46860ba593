"""Compiling an objective tree from the config into the objective algebra.

Each objective kind is one entry of `LEAVES`: a function from its config node to a leaf.
Layers are resolved and their shapes known before compiling (one dry forward), so every leaf is
checked against the layer it reads as it is built, and errors point at the config key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from fvis import config as c
from fvis.errors import SpecError, YamlPath
from fvis.objectives import activation as act
from fvis.objectives import batch as bat
from fvis.objectives import direction as dirn
from fvis.objectives import frequency as freq
from fvis.objectives.algebra import Interpolate, Leaf, Masked, Objective, Product, Sum, TermError

LAYER_FIELDS = ("layer", "ultimate")


@dataclass
class Context:
    """What compiling needs: resolved layer specs and shapes, the config folder, the batch."""

    specs: dict[YamlPath, str]
    probe: dict[str, torch.Tensor]
    base: Path
    batch: int
    activation_of: Callable[[Path, str], torch.Tensor]
    warnings: list[tuple[YamlPath, str]] = field(default_factory=list)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every layer read, from the dry forward at batch 1."""
        return {spec: tuple(t.shape) for spec, t in self.probe.items()}

    def layer(self, loc: YamlPath, name: str = "layer") -> str:
        return self.specs[(*loc, name)]


def layer_fields(node: BaseModel, loc: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    """(YAML path, layer name) of every layer an objective tree names, depth first."""
    for key, value in node:
        if key in LAYER_FIELDS and isinstance(value, str):
            yield (*loc, key), value
        elif isinstance(value, c.ObjectiveNode):
            yield from layer_fields(value, (*loc, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, c.ObjectiveNode):
                    yield from layer_fields(item, (*loc, key, i))


def compile_objective(node: c.ObjectiveNode, loc: YamlPath, ctx: Context) -> Objective:
    """The objective a config tree describes, each leaf checked against its layer's shape."""
    result: Objective
    if isinstance(node, c.SumObjective):
        result = Sum(tuple(_each(node.terms, (*loc, "terms"), ctx)))
    elif isinstance(node, c.ProductObjective):
        result = Product(tuple(_each(node.terms, (*loc, "terms"), ctx)))
    elif isinstance(node, c.NegObjective):
        result = -compile_objective(node.term, (*loc, "term"), ctx)
    elif isinstance(node, c.PowerObjective):
        result = compile_objective(node.term, (*loc, "term"), ctx) ** node.exponent
    elif isinstance(node, c.InterpolateObjective):
        start = compile_objective(node.start, (*loc, "start"), ctx)
        result = Interpolate(start, compile_objective(node.end, (*loc, "end"), ctx))
    else:
        result = _leaf(node, loc, ctx)
    if node.batch is not None:
        outside = [b for b in node.batch if b >= ctx.batch]
        if outside:
            raise SpecError(
                (*loc, "batch"),
                f"batch item {outside[0]} does not exist: param.batch is {ctx.batch}",
            )
        result = Masked(result, tuple(node.batch))
    return result if node.weight == 1.0 else node.weight * result


def _each(nodes: list[Any], loc: YamlPath, ctx: Context) -> Iterator[Objective]:
    for i, node in enumerate(nodes):
        yield compile_objective(node, (*loc, i), ctx)


def _leaf(node: Any, loc: YamlPath, ctx: Context) -> Leaf:
    leaf = LEAVES[type(node)](node, loc, ctx)
    try:
        leaf.check(ctx.shapes)
    except TermError as exc:
        raise SpecError((*loc, exc.field), f"layer {leaf.layer!r}: {exc}") from None
    if isinstance(leaf, act.ClassLogit) and _looks_like_probabilities(ctx, leaf.layer):
        ctx.warnings.append(
            (
                (*loc, "layer"),
                f"class_logit reads {leaf.layer!r}, which outputs probabilities (softmax); "
                "logits give better visualizations: point `layer` at the module before the "
                "softmax (`fvis layers CONFIG` lists them)",
            )
        )
    return leaf


def _looks_like_probabilities(ctx: Context, spec: str) -> bool:
    probe = ctx.probe.get(spec)
    if probe is None or probe.dim() != 2:
        return False
    return bool((probe >= 0).all() and torch.allclose(probe.sum(1), torch.ones(1), atol=1e-3))


# ----------------------------------------------------------------------------- tensors


def load_tensor(spec: Any, loc: YamlPath, ctx: Context, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor given inline, in a file, or as {random: seed} of `shape` (or its own shape)."""
    if isinstance(spec, list):
        try:
            return torch.tensor(spec, dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise SpecError(loc, f"not a rectangular list of numbers ({exc})") from None
    if isinstance(spec, c.RandomTensor):
        generator = torch.Generator().manual_seed(spec.random)
        return torch.randn(tuple(spec.shape or shape), generator=generator)
    return _read_tensor(spec, loc, ctx)


def _read_tensor(spec: c.TensorFile, loc: YamlPath, ctx: Context) -> torch.Tensor:
    path = spec.file if spec.file.is_absolute() else ctx.base / spec.file
    if not path.is_file():
        raise SpecError((*loc, "file"), f"no such file: {path}")
    try:
        if path.suffix == ".npy":
            import numpy as np

            content: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content = load_file(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError((*loc, "file"), f"cannot read {path}: {first}") from None
    if isinstance(content, dict):
        key = spec.key or (next(iter(content)) if len(content) == 1 else None)
        if key not in content:
            raise SpecError(
                (*loc, "key"), f"{path} holds {', '.join(map(str, content))}: set key to one"
            )
        content = content[key]
    if not isinstance(content, torch.Tensor):
        raise SpecError((*loc, "file"), f"{path} does not hold a tensor")
    if spec.index is not None:
        if content.dim() == 0 or spec.index >= content.shape[0]:
            raise SpecError(
                (*loc, "index"), f"row {spec.index} is outside a tensor of {list(content.shape)}"
            )
        content = content[spec.index]
    return content.float()


def _vector(node: Any, loc: YamlPath, ctx: Context, key: str = "vector", layer: str = "layer"):
    """A direction over the channels of the layer the node reads."""
    shape = ctx.shapes[ctx.layer(loc, layer)]
    return load_tensor(getattr(node, key), (*loc, key), ctx, (act.channel_count(shape),))


def _transform(node: Any, loc: YamlPath, ctx: Context) -> torch.Tensor | None:
    if node.transform is None:
        return None
    channels = act.channel_count(ctx.shapes[ctx.layer(loc)])
    matrix = load_tensor(node.transform, (*loc, "transform"), ctx, (channels, channels))
    if matrix.dim() != 2:
        raise SpecError((*loc, "transform"), f"must be a matrix, got {list(matrix.shape)}")
    return matrix


def _target(node: c.L2InversionObjective, loc: YamlPath, ctx: Context) -> torch.Tensor:
    spec = ctx.layer(loc)
    if isinstance(node.target, c.ImageTarget):
        path = (
            node.target.image if node.target.image.is_absolute() else ctx.base / node.target.image
        )
        if not path.is_file():
            raise SpecError((*loc, "target", "image"), f"no such file: {path}")
        return ctx.activation_of(path, spec)
    return load_tensor(node.target, (*loc, "target"), ctx, ctx.shapes[spec][1:])


def _directional(cls: type, *extra: str) -> Callable[[Any, YamlPath, Context], Leaf]:
    """Builder for the direction family: layer, vector, transform and the named fields."""

    def build(node: Any, loc: YamlPath, ctx: Context) -> Leaf:
        fields = {name: getattr(node, name) for name in extra}
        return cls(ctx.layer(loc), _vector(node, loc, ctx), _transform(node, loc, ctx), **fields)

    return build


LEAVES: dict[type, Callable[[Any, YamlPath, Context], Leaf]] = {
    c.ChannelObjective: lambda n, loc, ctx: act.Channel(ctx.layer(loc), n.channel),
    c.NeuronObjective: lambda n, loc, ctx: act.Neuron(ctx.layer(loc), n.channel, n.x, n.y),
    c.LayerObjective: lambda n, loc, ctx: act.LayerMean(ctx.layer(loc)),
    c.ClassLogitObjective: lambda n, loc, ctx: act.ClassLogit(ctx.layer(loc), tuple(n.index)),
    c.DeepDreamObjective: lambda n, loc, ctx: act.DeepDream(ctx.layer(loc)),
    c.TotalVariationObjective: lambda n, loc, ctx: act.TotalVariation(ctx.layer(loc)),
    c.BlurObjective: lambda n, loc, ctx: freq.BlurResidual(ctx.layer(loc), n.sigma),
    c.L1Objective: lambda n, loc, ctx: act.L1(ctx.layer(loc), n.constant),
    c.L2Objective: lambda n, loc, ctx: act.L2(ctx.layer(loc), n.constant),
    c.L2MeanObjective: lambda n, loc, ctx: act.L2Mean(ctx.layer(loc), n.constant),
    c.DirectionObjective: _directional(dirn.Direction, "cossim_pow", "floor"),
    c.DotCossimObjective: _directional(dirn.DotCossim, "cossim_pow", "floor"),
    c.CosineObjective: _directional(dirn.Cosine),
    c.NeuronDirectionObjective: _directional(dirn.NeuronDirection, "x", "y", "cossim_pow", "floor"),
    c.AngledNeuronDirectionObjective: _directional(
        dirn.AngledNeuronDirection, "x", "y", "cossim_pow", "floor"
    ),
    c.DotOrthogonalObjective: _directional(dirn.DotOrthogonal, "penalty"),
    c.VectorObjective: _directional(dirn.VectorLoss, "relu"),
    c.TensorDirectionObjective: lambda n, loc, ctx: dirn.TensorDirection(
        ctx.layer(loc),
        load_tensor(n.tensor, (*loc, "tensor"), ctx, (*ctx.shapes[ctx.layer(loc)][1:2], 1, 1)),
        n.cossim_pow,
        n.floor,
    ),
    c.ActivationWeightsObjective: lambda n, loc, ctx: dirn.ActivationWeights(
        ctx.layer(loc), _vector(n, loc, ctx, "weights")
    ),
    c.FacetObjective: lambda n, loc, ctx: dirn.Facet(
        ctx.layer(loc),
        ctx.layer(loc, "ultimate"),
        _vector(n, loc, ctx, "vector", "ultimate"),
        _vector(n, loc, ctx, "weights"),
        n.strength,
    ),
    c.L2InversionObjective: lambda n, loc, ctx: dirn.L2Inversion(
        ctx.layer(loc), _target(n, loc, ctx)
    ),
    c.DiversityObjective: lambda n, loc, ctx: bat.Diversity(ctx.layer(loc)),
    c.AlignmentObjective: lambda n, loc, ctx: bat.Alignment(ctx.layer(loc), n.decay, n.distance),
}
