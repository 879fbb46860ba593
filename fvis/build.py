"""Compiling a validated config into the objects the render loop runs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from fvis.config import Config, ObjectiveNode
from fvis.errors import SpecError, UserError, YamlPath
from fvis.fusion import fold_batchnorms
from fvis.hooks import IMAGE, Capture, resolve_layer, select, split_layer
from fvis.models import Network, build_network
from fvis.objectives import Objective
from fvis.objectives.algebra import Masked, Sum
from fvis.objectives.compile import Context, compile_objective, layer_fields
from fvis.params import ImageParam, build_param
from fvis.transforms import Pipeline, build_transforms


@dataclass
class Plan:
    """Everything a render needs, on its device."""

    config: Config
    device: torch.device
    network: Network
    objective: Objective
    param: ImageParam
    transforms: Pipeline
    streams: list[torch.Generator]
    warnings: list[tuple[YamlPath, str]]
    base: Path


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
    torch.manual_seed(config.seed)  # random-init models (weights: null) build reproducibly
    dtype = torch.float64 if config.optim.float64 else torch.float32
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
        config = config.model_copy(
            update={"param": config.param.model_copy(update={"batch": len(items)})}
        )
        parts = [
            _objective(item.config, network, base, size, channels, device, dtype) for item in items
        ]
        objective: Objective = Sum(tuple(Masked(part, (i,)) for i, (part, _) in enumerate(parts)))
        warnings = [w for _, found in parts for w in found]
        streams = [streams_for(item.config.seed, [item.key])[0] for item in items]
    else:
        objective, warnings = _objective(config, network, base, size, channels, device, dtype)
        streams = streams_for(config.seed, list(range(config.param.batch)))
    if config.optim.fold_batchnorm:
        fold_batchnorms(network.model, keep={split_layer(s)[0] for s in objective.layers})
    if config.optim.channels_last is True or (
        config.optim.channels_last == "auto" and device.type == "cpu"
    ):
        network = network.to(memory_format=torch.channels_last)
    try:
        param = build_param(
            config.param,
            size,
            channels,
            prep.color_correlation,
            streams,
            base=base,
            optim=config.optim,
            transparency=config.output.transparency,
        )
    except ValueError as exc:
        raise SpecError(("param", "decorrelate"), str(exc)) from None
    if config.optim.precision != "fp32" and device.type != "cuda":
        warnings.append(
            (
                ("optim", "precision"),
                f"{config.optim.precision} applies on CUDA only; {device} runs in fp32",
            )
        )
    return Plan(
        config=config,
        device=device,
        network=network,
        objective=objective,
        param=param.to(device, dtype),
        transforms=build_transforms(config.transforms, size, alpha=config.param.alpha),
        streams=streams,
        warnings=warnings,
        base=base,
    )


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
        return _probe(network, {spec}, load_image(path, size, channels).to(device, dtype))[spec][0]

    ctx = Context(specs, probe, base, config.param.batch, activation_of)
    objective = compile_objective(config.objective, ("objective",), ctx)
    for loc, reg in roots[1:]:
        objective = objective - compile_objective(reg, loc, ctx)
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


def load_image(path: Path, size: tuple[int, int], channels: int) -> torch.Tensor:
    """An image file as [1, C, H, W] in [0, 1], resized to `size` (bilinear)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = {1: "L", 3: "RGB"}.get(channels, "RGB")
            pixels = image.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            data = torch.frombuffer(bytearray(pixels.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None
    return data.view(size[0], size[1], -1).permute(2, 0, 1)[None].float() / 255
