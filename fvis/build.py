"""Compiling a validated config into the objects the render loop runs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch

from fvis.config import Config, DeviceOptions, ObjectiveNode
from fvis.errors import SpecError, UserError, YamlPath
from fvis.fusion import fold_batchnorms
from fvis.hooks import IMAGE, Capture, resolve_layer, select, split_layer
from fvis.io import read_image
from fvis.models import Network, build_network, resolve_device
from fvis.objectives import Objective
from fvis.objectives.algebra import Masked, Sum
from fvis.objectives.compile import Context, layer_fields
from fvis.params import build_param
from fvis.render import Plan
from fvis.transforms import build_transforms


def item_seed(seed: int, key: object) -> int:
    """The seed of one batch item's random stream, from the run seed and the item's key.

    Keyed by the item (not its position in a batch), so an item renders the same in any batch.
    """
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def streams_for(seed: int, keys: list[object]) -> list[torch.Generator]:
    """One CPU random generator per batch item."""
    return [torch.Generator().manual_seed(item_seed(seed, key)) for key in keys]


class Item(Protocol):
    """One image of a sweep: its own config (objective, seed) and a key naming it."""

    key: str
    config: Config


def build_plan(config: Config, base: Path, items: Sequence[Item] = ()) -> Plan:
    """Model, objective, image parameterization and transforms, checked against each other.

    `base` is the config's folder, against which relative model paths resolve. With `items`
    (a sweep), batch item i optimizes item i's objective with a random stream keyed by the
    item, so it renders the same in any batch, at any position.
    """
    device = resolve_device(config.device)
    options, warnings = _device_options(config.optim.device_options, device)
    torch.manual_seed(config.seed)  # random-init models (weights: null) build reproducibly
    dtype = torch.float64 if options.float64 else torch.float32
    network = build_network(config.model, base).to(device, dtype)
    prep = network.prep
    size = config.param.size or prep.size
    channels = config.param.channels or prep.channels
    if channels != prep.channels:
        raise SpecError(
            ("param", "channels"),
            f"the image has {channels} channels, the model takes {prep.channels}",
        )

    if items:
        parts = [
            _objective(item.config, network, base, size, channels, device, dtype) for item in items
        ]
        objective: Objective = Sum(tuple(Masked(part, (i,)) for i, (part, _) in enumerate(parts)))
        warnings += [w for _, found in parts for w in found]
        streams = [streams_for(item.config.seed, [item.key])[0] for item in items]
    else:
        objective, found = _objective(config, network, base, size, channels, device, dtype)
        warnings += found
        streams = streams_for(config.seed, list(range(config.param.batch)))
    if options.fold_batchnorm:
        fold_batchnorms(network.model, keep={split_layer(s)[0] for s in objective.layers})
    if options.channels_last is True or (options.channels_last == "auto" and device.type == "cpu"):
        network = network.to(memory_format=torch.channels_last)
    try:
        param = build_param(
            config.param,
            size,
            channels,
            prep.color_correlation,
            streams,
            base=base,
            preconditioning=config.optim.preconditioning,
            transparency=config.output.transparency,
        )
    except ValueError as exc:
        raise SpecError(("param", "decorrelate"), str(exc)) from None
    return Plan(
        device=device,
        options=options,
        schedule=config.optim.schedule,
        network=network,
        objective=objective,
        param=param.to(device, dtype),
        transforms=build_transforms(config.transforms, size, alpha=config.param.alpha),
        streams=streams,
        warnings=warnings,
        base=base,
    )


def _device_options(
    options: DeviceOptions, device: torch.device
) -> tuple[DeviceOptions, list[tuple[YamlPath, str]]]:
    """The options as they apply on `device`: autocast is CUDA's only (fp32 elsewhere, with a
    warning)."""
    if options.precision == "fp32" or device.type == "cuda":
        return options, []
    warning = f"{options.precision} applies on CUDA only; {device} runs in fp32"
    return replace(options, precision="fp32"), [(("optim", "precision"), warning)]


def _objective(
    config: Config,
    network: Network,
    base: Path,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Objective, list[tuple[YamlPath, str]]]:
    """The objective minus the regularizers, every layer resolved and checked by shape."""
    roots: list[tuple[YamlPath, ObjectiveNode]] = [(("objective",), config.objective)]
    roots += [(("regularizers", i), reg) for i, reg in enumerate(config.regularizers)]
    specs = {
        loc: resolve_layer(name, config.hooks, network.model, loc)
        for root_loc, root in roots
        for loc, name in layer_fields(root, root_loc)
    }
    grey = torch.full((1, channels, *size), 0.5, device=device, dtype=dtype)
    probe = _probe(network, set(specs.values()), grey)

    def activation_of(path: Path, spec: str) -> torch.Tensor:
        image = read_image(path, "L" if channels == 1 else "RGB", size)[None]
        return _probe(network, {spec}, image.to(device, dtype))[spec][0]

    ctx = Context(specs, probe, base, config.param.batch, activation_of)
    objective = ctx.compile(config.objective, ("objective",))
    for loc, reg in roots[1:]:
        objective = objective - ctx.compile(reg, loc)
    return objective.to(device, dtype), ctx.warnings


def _probe(network: Network, specs: set[str], image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensor at every layer spec for one image (a dry forward, stopped early)."""
    try:
        with torch.no_grad(), Capture(network.model, specs, network) as capture:
            outputs = {**capture.run(image), IMAGE: image}
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[0]
        _, c, h, w = image.shape
        hint = (
            "try a smaller param.size, or device: cpu"
            if isinstance(exc, torch.OutOfMemoryError)
            else "check param.size and model.input"
        )
        raise UserError(f"the model fails on a {c}x{h}x{w} image: {text} ({hint})") from None
    probe = {}
    for spec in specs:
        try:
            probe[spec] = select(outputs, spec)
        except TypeError as exc:
            raise UserError(str(exc)) from None
    return probe
