"""Compiling a validated config into the objects the render loop runs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fvis import objectives as obj
from fvis.config import (
    ChannelObjective,
    ClassLogitObjective,
    Config,
    L1Objective,
    L2Objective,
    LayerObjective,
    NegObjective,
    NeuronObjective,
    ObjectiveNode,
    SumObjective,
    TotalVariationObjective,
)
from fvis.errors import SpecError, UserError, YamlPath
from fvis.hooks import IMAGE, Capture, resolve_layer
from fvis.models import Network, build_network
from fvis.params import ImageParam, build_param
from fvis.transforms import Pipeline, build_transforms


@dataclass
class Plan:
    """Everything a render needs, on its device."""

    config: Config
    device: torch.device
    network: Network
    objective: obj.Objective
    param: ImageParam
    transforms: Pipeline
    streams: list[torch.Generator]


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise SpecError(("device",), f"{name} is not available on this machine (try auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SpecError(("device",), "mps is not available on this machine (try auto or cpu)")
    return device


def item_seed(seed: int, key: object) -> int:
    """The seed of one batch item's random stream, from the run seed and the item's key.

    Keyed by the item (not its position in a batch), so an item renders the same in any batch.
    """
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def streams_for(seed: int, keys: list[object]) -> list[torch.Generator]:
    """One CPU random generator per batch item."""
    return [torch.Generator().manual_seed(item_seed(seed, key)) for key in keys]


def build_plan(config: Config, base: Path) -> Plan:
    """Model, objective, image parameterization and transforms, checked against each other.

    `base` is the config's folder, against which relative model paths resolve.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # random-init models (weights: null) build reproducibly
    network = build_network(config.model, base).to(device)
    prep = network.prep
    size = config.param.size or prep.size
    channels = config.param.channels or prep.channels
    if channels != prep.channels:
        raise SpecError(
            ("param", "channels"),
            f"the image has {channels} channels, the model takes {prep.channels}",
        )

    locs: dict[obj.Leaf, YamlPath] = {}

    def layer(name: str, loc: YamlPath) -> str:
        return resolve_layer(name, config.hooks, network.model, loc)

    objective = compile_objective(config.objective, ("objective",), layer, locs, config)
    for i, reg in enumerate(config.regularizers):
        objective = objective - compile_objective(reg, ("regularizers", i), layer, locs, config)
    _check_shapes(network, objective, locs, size, channels, device)

    streams = streams_for(config.seed, list(range(config.param.batch)))
    try:
        param = build_param(config.param, size, channels, prep.color_correlation, streams)
    except ValueError as exc:
        raise SpecError(("param", "decorrelate"), str(exc)) from None
    return Plan(
        config=config,
        device=device,
        network=network,
        objective=objective,
        param=param.to(device),
        transforms=build_transforms(config.transforms, size),
        streams=streams,
    )


# Each objective kind's builder: (config node, resolved layer path) -> leaf objective.
LEAVES: dict[type, Callable[[Any, str], obj.Leaf]] = {
    ChannelObjective: lambda n, p: obj.Channel(p, n.channel),
    NeuronObjective: lambda n, p: obj.Neuron(p, n.channel, n.x, n.y),
    LayerObjective: lambda n, p: obj.LayerMean(p),
    ClassLogitObjective: lambda n, p: obj.ClassLogit(p, tuple(n.index)),
    TotalVariationObjective: lambda n, p: obj.TotalVariation(p),
    L1Objective: lambda n, p: obj.L1(p, n.constant),
    L2Objective: lambda n, p: obj.L2(p, n.constant),
}


def compile_objective(
    node: ObjectiveNode,
    loc: YamlPath,
    layer: Callable[[str, YamlPath], str],
    locs: dict[obj.Leaf, YamlPath],
    config: Config,
) -> obj.Objective:
    """The objective a config tree describes; records where each leaf came from in `locs`."""
    result: obj.Objective
    if isinstance(node, SumObjective):
        result = obj.Sum(
            tuple(
                compile_objective(t, (*loc, "terms", i), layer, locs, config)
                for i, t in enumerate(node.terms)
            )
        )
    elif isinstance(node, NegObjective):
        result = -compile_objective(node.term, (*loc, "term"), layer, locs, config)
    else:
        leaf = LEAVES[type(node)](node, layer(node.layer, (*loc, "layer")))  # type: ignore[attr-defined]
        locs[leaf] = loc
        result = leaf
    if node.batch is not None:
        outside = [b for b in node.batch if b >= config.param.batch]
        if outside:
            raise SpecError(
                (*loc, "batch"),
                f"batch item {outside[0]} does not exist: param.batch is {config.param.batch}",
            )
        result = obj.Masked(result, tuple(node.batch))
    return result if node.weight == 1.0 else node.weight * result


def _check_shapes(
    network: Network,
    objective: obj.Objective,
    locs: dict[obj.Leaf, YamlPath],
    size: tuple[int, int],
    channels: int,
    device: torch.device,
) -> None:
    """One dry forward at batch 1 to check every term against the shape of the layer it reads."""
    probe = torch.full((1, channels, *size), 0.5, device=device)
    try:
        with torch.no_grad(), Capture(network.model, objective.layers, network) as capture:
            tensors = {**capture.run(probe), IMAGE: probe}
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[0]
        raise UserError(
            f"the model fails on a {channels}x{size[0]}x{size[1]} image: {text} (check "
            "param.size and model.input)"
        ) from None
    for leaf, loc in locs.items():
        value = tensors[leaf.layer]
        if not isinstance(value, torch.Tensor):
            raise SpecError(
                (*loc, "layer"),
                f"layer {leaf.layer!r} outputs a {type(value).__name__}, not a tensor",
            )
        try:
            leaf.check(tuple(value.shape))
        except obj.TermError as exc:
            raise SpecError((*loc, exc.field), f"{leaf.layer}: {exc}") from None
