"""Compiling a validated config into the objects the render loop runs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from fvis import budget
from fvis.config import KINDS, Config, DeviceOptions, ObjectiveNode, ParamNode, TensorFile
from fvis.config.param import COLOR_KEY
from fvis.errors import SpecError, UserError, YamlPath
from fvis.fusion import fold_batchnorms
from fvis.hooks import IMAGE, Capture, resolve_layer, select, split_layer
from fvis.io import read_image, resolve
from fvis.models import Network, build_network, resolve_device
from fvis.objectives import Objective
from fvis.objectives.activation import Opacity
from fvis.objectives.algebra import Masked
from fvis.objectives.batch import ItemWise
from fvis.objectives.compile import Context, layer_fields, read_tensor
from fvis.params import ColorRoot, build_param, check_color_root
from fvis.render import Plan
from fvis.transforms import build_transforms


def item_seed(seed: int, key: object) -> int:
    """The seed of one batch item's random stream, from the run seed and the item's key: its
    index in the batch (a sweep item is index 0, as in a render of its own config)."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def streams_for(seed: int, keys: list[object]) -> list[torch.Generator]:
    """One CPU random generator per batch item."""
    return [torch.Generator().manual_seed(item_seed(seed, key)) for key in keys]


class Item(Protocol):
    """One image of a sweep: its own config (objective, seed) and a key naming it."""

    key: str
    config: Config


@dataclass
class _Start:
    """What a plan starts from, before the probe and the image parameters: the device, the
    network, the image's size and channels, and every layer spec the objectives read (by
    config: the render's, or each sweep item's)."""

    device: torch.device
    options: DeviceOptions
    dtype: torch.dtype
    network: Network
    size: tuple[int, int]
    channels: int
    specs: list[dict[YamlPath, str]]
    warnings: list[tuple[YamlPath, str]]


def build_plan(config: Config, base: Path, items: Sequence[Item] = ()) -> Plan:
    """Model, objective, image parameterization and transforms, checked against each other.

    `base` is the config's folder, against which relative model paths resolve. With `items`
    (a sweep), batch item i optimizes item i's objective with the random stream a render of
    item i's own config gives its image 0 (`item_seed(seed, 0)`): it renders as `fvis render`
    does, in any batch, at any position. As soon as the network is built, before the dry
    forward at the image's size and before the image parameters are allocated, grid.png's size
    and the memory the render needs are checked (`fvis.budget`): a render too large for this
    machine is refused at once.
    """
    start = _start(config, base, items)
    at_batch_one = [] if items else _batch_warnings(config)
    _check_budget(config, start, items)
    network, size, channels = start.network, start.size, start.channels
    device, dtype, options, warnings = start.device, start.dtype, start.options, start.warnings
    if items:
        parts = [
            _objective(item.config, network, base, size, channels, device, dtype, specs)
            for item, specs in zip(items, start.specs, strict=True)
        ]
        # One item keeps its render's objective exactly (a sweep of one is byte for byte the
        # render); several share ItemWise's few operations.
        objective: Objective = (
            Masked(parts[0][0], (0,)) if len(parts) == 1 else ItemWise(tuple(p for p, _ in parts))
        )
        warnings += [w for _, found in parts for w in found]
        streams = [streams_for(item.config.seed, [0])[0] for item in items]
    else:
        objective, found = _objective(
            config, network, base, size, channels, device, dtype, start.specs[0]
        )
        warnings += [*found, *at_batch_one]
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
            _color_root(config.param, base, network),
            streams,
            base=base,
            preconditioning=config.optim.preconditioning,
            transparency=config.output.transparency,
        )
    except ValueError as exc:
        raise SpecError(("param", "decorrelate"), str(exc)) from None
    transforms = build_transforms(config.transforms, size, alpha=config.param.alpha)
    return Plan(
        device=device,
        options=options,
        schedule=config.optim.schedule,
        network=network,
        objective=objective,
        param=param.to(device, dtype),
        transforms=transforms,
        regions=_regions(config, start, objective.layers, transforms.canvas(size)),
        streams=streams,
        warnings=warnings,
        base=base,
    )


def _regions(
    config: Config, start: _Start, specs: set[str], canvas: tuple[int, int]
) -> dict[str, tuple[int, int]]:
    """Where the model sees a framed canvas larger than the image: each read layer's [H, W] on
    the image alone, the part of the canvas's map that terms indexing positions read
    (`Activations`). The model must take the canvas, and every spatial layer must be a map."""
    if canvas == start.size:
        return {}
    loc: YamlPath = ("transforms", _framed_pad(config), "frame")
    specs = specs - {IMAGE}

    def grey(hw: tuple[int, int]) -> torch.Tensor:
        return torch.full((1, start.channels, *hw), 0.5, device=start.device, dtype=start.dtype)

    on_image = _probe(start.network, specs, grey(start.size))
    try:
        hint = "the canvas of a framed pad; set frame: false"
        on_canvas = _probe(start.network, specs, grey(canvas), hint)
    except UserError as exc:
        raise SpecError(loc, str(exc)) from None
    regions = {}
    for spec in specs:
        image, whole = on_image[spec].shape, on_canvas[spec].shape
        if image == whole:
            continue
        if len(image) != 4 or image[:2] != whole[:2]:
            raise SpecError(
                loc,
                f"{spec} gives {list(whole)} on the {canvas[1]}x{canvas[0]} canvas and "
                f"{list(image)} on the image: a frame needs [B, C, H, W] maps; set frame: false",
            )
        regions[spec] = (image[2], image[3])
    return regions


def _framed_pad(config: Config) -> int:
    """The index in `transforms:` of the first pad that keeps its frame."""
    return next(i for i, t in enumerate(config.transforms) if getattr(t, "frame", False))


def _color_root(spec: ParamNode, base: Path, network: Network) -> ColorRoot | None:
    """The colour-covariance root the image decorrelates with: `decorrelate`'s file's
    (checked: a finite, invertible 3x3 matrix), else the model's (None: ImageNet's)."""
    if not isinstance(spec.decorrelate, TensorFile):
        return network.prep.color_correlation
    loc: YamlPath = ("param", "decorrelate")
    matrix = read_tensor(spec.decorrelate, base, loc, default_key=COLOR_KEY)
    try:
        check_color_root(matrix)
    except ValueError as exc:
        raise SpecError(loc, f"{resolve(base, spec.decorrelate.file)}: {exc}") from None
    return matrix


def memory_need(config: Config, base: Path, items: Sequence[Item] = ()) -> budget.Need | None:
    """What `build_plan(config, base, items)`'s render will need (`fvis.budget`), without
    compiling the objective, allocating the image or comparing with what is available; None
    where the model fails on the image (`build_plan` says why)."""
    return _need(config, _start(config, base, items), items)


def _start(config: Config, base: Path, items: Sequence[Item]) -> _Start:
    """The device, the network, the image's size and channels, and the layer specs."""
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
    specs = [_layer_specs(c, network) for c in [item.config for item in items] or [config]]
    return _Start(device, options, dtype, network, size, channels, specs, warnings)


def _need(config: Config, start: _Start, items: Sequence[Item]) -> budget.Need | None:
    """The render's memory need: one item measured (`budget.measure`), times the batch; a
    sweep (`items`) writes no checkpoint and no grid."""
    try:
        cost = budget.measure(
            start.network,
            {spec for specs in start.specs for spec in specs.values()},
            config.param,
            config.transforms,
            start.size,
            start.channels,
            start.device,
            start.dtype,
            transparency=config.output.transparency,
            fold=start.options.fold_batchnorm,
        )
    except ValueError as exc:
        raise SpecError(("param", "decorrelate"), str(exc)) from None
    if cost is None:
        return None
    h, w = start.size
    image = (start.channels + int(config.param.alpha)) * h * w * 4  # a float32 snapshot
    snapshots = len(config.optim.schedule.snapshot_steps) + 1  # and step 0's
    if items:
        return budget.need(cost, len(items), image, snapshots, checkpoints=False)
    gw, gh = _grid_size(config, start.size)
    return budget.need(cost, config.param.batch, image, snapshots, grid_pixels=gw * gh)


def _grid_size(config: Config, size: tuple[int, int]) -> tuple[int, int]:
    """grid.png's width and height (`budget.grid_size`)."""
    columns = len(config.optim.schedule.snapshot_steps)
    return budget.grid_size(size, config.param.batch, columns, config.output.cell)


def _check_budget(config: Config, start: _Start, items: Sequence[Item]) -> None:
    """Refuse a render whose estimated memory need exceeds what is available, or whose
    grid.png would be larger than budget.MAX_GRID_PIXELS."""
    need = _need(config, start, items)
    short = budget.shortfall(need, start.device) if need else None
    h, w = start.size
    if short is not None:
        if len(items) == 1:
            what, lower = f"one sweep item at {h}x{w} needs", "param.size"
        elif items:
            what, lower = (
                f"a sweep batch of {len(items)} items at {h}x{w} needs",
                "--batch or param.size",
            )
        else:
            batch = config.param.batch
            what, lower = f"{h}x{w} images in a batch of {batch} need", "param.size or param.batch"
        raise SpecError(
            _blame(config, [("param", "size"), ("param", "batch")]),
            f"{what} {short}: lower {lower}",
        )
    if items:
        return
    gw, gh = _grid_size(config, start.size)
    if gw * gh > budget.MAX_GRID_PIXELS:
        batch, cell = config.param.batch, config.output.cell
        columns = len(config.optim.schedule.snapshot_steps)
        raise SpecError(
            _blame(config, [("output", "cell"), ("param", "size"), ("param", "batch")]),
            f"grid.png would be {gw}x{gh} pixels ({gw * gh / 1e6:.0f} megapixels), over the "
            f"limit of {budget.MAX_GRID_PIXELS / 1e6:.0f} megapixels (image readers take larger "
            f"images for decompression bombs): lower output.cell ({cell}), param.batch "
            f"({batch}) or the number of snapshots ({columns} columns: optim.thresholds)",
        )


def _blame(config: Config, locs: list[YamlPath]) -> YamlPath:
    """The first of `locs` (param or output fields) the config sets itself, else the first."""
    for loc in locs:
        node = config.param if loc[0] == "param" else config.output
        if loc[1] in node.model_fields_set:
            return loc
    return locs[0]


def _batch_warnings(config: Config) -> list[tuple[YamlPath, str]]:
    """At param.batch 1, an objective kind that compares batch items (`cross_batch`) has
    nothing to compare: diversity and alignment score 0, interpolate renders its start only.
    Each such node is a warning; an objective whose every leaf scores 0 so is refused (the
    render would maximize nothing)."""
    if config.param.batch > 1:
        return []
    kind = {cls: name for name, cls in KINDS.items()}
    warnings = []
    for loc, node in objective_nodes(config):
        if type(node).cross_batch:
            effect = "renders its start only" if _children(node, loc) else "scores 0"
            warnings.append(
                (
                    loc,
                    f"{kind[type(node)]} compares batch items: at param.batch=1 it {effect} "
                    "(set param.batch to 2 or more)",
                )
            )
    leaves = [n for loc, n in _nodes(("objective",), config.objective) if not _children(n, loc)]
    if all(type(leaf).cross_batch for leaf in leaves):
        kinds = sorted({kind[type(leaf)] for leaf in leaves})
        verbs = (
            "compares batch items and scores"
            if len(kinds) == 1
            else "compare batch items and score"
        )
        raise SpecError(
            ("objective",),
            f"{' and '.join(kinds)} {verbs} 0 at param.batch=1, so the objective leaves nothing "
            "to maximize: set param.batch to 2 or more",
        )
    return warnings


def _children(node: ObjectiveNode, loc: YamlPath) -> list[tuple[YamlPath, ObjectiveNode]]:
    """The objective nodes directly under `node` (sum's terms, neg's term...), located."""
    found: list[tuple[YamlPath, ObjectiveNode]] = []
    for name in type(node).model_fields:
        value = getattr(node, name)
        if isinstance(value, ObjectiveNode):
            found.append(((*loc, name), value))
        elif isinstance(value, list):
            found += [
                ((*loc, name, i), v) for i, v in enumerate(value) if isinstance(v, ObjectiveNode)
            ]
    return found


def objective_nodes(config: Config) -> Iterator[tuple[YamlPath, ObjectiveNode]]:
    """Every objective node of the config's objective and regularizers, located, depth first."""
    yield from _nodes(("objective",), config.objective)
    for i, regularizer in enumerate(config.regularizers):
        yield from _nodes(("regularizers", i), regularizer)


def _nodes(loc: YamlPath, node: ObjectiveNode) -> Iterator[tuple[YamlPath, ObjectiveNode]]:
    """`node` and every objective node under it, located, depth first."""
    yield loc, node
    for child_loc, child in _children(node, loc):
        yield from _nodes(child_loc, child)


def _device_options(
    options: DeviceOptions, device: torch.device
) -> tuple[DeviceOptions, list[tuple[YamlPath, str]]]:
    """The options as they apply on `device`: autocast is CUDA's only (fp32 elsewhere, with a
    warning)."""
    if options.precision == "fp32" or device.type == "cuda":
        return options, []
    warning = f"{options.precision} applies on CUDA only; {device} runs in fp32"
    return replace(options, precision="fp32"), [(("optim", "precision"), warning)]


def _layer_specs(config: Config, network: Network) -> dict[YamlPath, str]:
    """Every layer the objective and the regularizers name, resolved, by YAML location."""
    roots: list[tuple[YamlPath, ObjectiveNode]] = [(("objective",), config.objective)]
    roots += [(("regularizers", i), reg) for i, reg in enumerate(config.regularizers)]
    return {
        loc: resolve_layer(name, config.hooks, network.model, loc)
        for root_loc, root in roots
        for loc, name in layer_fields(root, root_loc)
    }


def _objective(
    config: Config,
    network: Network,
    base: Path,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    specs: dict[YamlPath, str],
) -> tuple[Objective, list[tuple[YamlPath, str]]]:
    """The objective minus the regularizers, every layer (`specs`) checked by shape."""
    grey = torch.full((1, channels, *size), 0.5, device=device, dtype=dtype)
    probe = _probe(network, set(specs.values()), grey)

    def activation_of(path: Path, spec: str) -> torch.Tensor:
        image = read_image(path, "L" if channels == 1 else "RGB", size)[None]
        return _probe(network, {spec}, image.to(device, dtype))[spec][0]

    ctx = Context(specs, probe, base, config.param.batch, activation_of)
    objective = ctx.compile(config.objective, ("objective",))
    for i, reg in enumerate(config.regularizers):
        objective = objective - ctx.compile(reg, ("regularizers", i))
    if config.param.alpha and config.param.alpha_penalty > 0:
        objective = objective - config.param.alpha_penalty * Opacity()
    return objective.to(device, dtype), ctx.warnings


def _probe(
    network: Network, specs: set[str], image: torch.Tensor, hint: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensor at every layer spec for one image (a dry forward, stopped early); `hint`
    ends the message if the model fails on it."""
    try:
        with torch.no_grad(), Capture(network.model, specs, network) as capture:
            outputs = {**capture.run(image), IMAGE: image}
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[0]
        _, c, h, w = image.shape
        hint = hint or (
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
