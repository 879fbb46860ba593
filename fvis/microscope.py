"""fvis microscope: every channel of a model's layers rendered, with its dataset examples, the
layers' neuron groups and atlases, gathered into a static site (`fvis.site`).

A microscope folder holds one sweep per layer (`LAYER/renders`, every channel by every seed,
batched and resumable as `fvis sweep` is), the dataset examples of all its layers in one pass
(`examples/`, with --data), a layer's groups and atlas where asked (`LAYER/groups`,
`LAYER/atlas`), then `microscope.json`, the manifest the site is built from, and the pages.
Running it again renders only what is missing: a new layer, a new seed; a rebuild with nothing
new only rewrites the manifest and the pages that changed. A folder made from another config
is refused, unless --force, which renders it again.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from fvis import atlas, groups, runs, site, zoo
from fvis import examples as dataset_examples
from fvis.attribution import heatmaps
from fvis.compare import ssim
from fvis.config import Config, Loaded, ZooModelSpec
from fvis.data import Images
from fvis.errors import UserError
from fvis.filters import gaussian_blur
from fvis.hooks import Capture, select, split_layer
from fvis.io import png_bytes, read_image, to_json, to_pil, write_atomic
from fvis.models import Network
from fvis.objectives.activation import positions
from fvis.scan import Scan, layer_specs
from fvis.sweep import Backend, run_sweep
from fvis.writers import versions

FORMAT = "fvis-microscope-1"
MANIFEST = "microscope.json"
CONFIG = "config.yaml"
EXAMPLES = "examples"
RENDERS = "renders"
RESERVED = {EXAMPLES, "assets"}
"""Folder names of the site's own: a layer never gets one as its folder."""
TOP_NAMED = 5
"""Top examples a channel's page names (with their values) beside the sheet."""
ATTRIBUTED = 3
"""Top images by maximum whose attribution a channel's page shows (with --attribution)."""
IG_STEPS = 16
"""Integrated gradients' steps from the black image: a Riemann sum fine enough for a map."""
SMOOTHING = 32
"""An attribution map is shown blurred by a Gaussian of sigma = the image's side / SMOOTHING
(2 px at 64 px): unblurred, the maps of the built-in model's noisy images are speckle."""

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """What a microscope is made of: the config at `config` with its `overrides`, the layers
    (names as given), seeds per channel, examples per ranking, neuron groups per layer and the
    atlas's cells a side (None: none), whether the top examples get attribution maps, channels
    per optimization (None: as a sweep chooses), the data source as given (--data) and the
    command line that asked for it (both shown on the index)."""

    config: Path
    overrides: tuple[str, ...]
    layers: tuple[str, ...]
    seeds: int = 1
    top: int = 9
    groups: int | None = None
    atlas: int | None = None
    attribution: bool = False
    batch: int | None = None
    data: str | None = None
    command: str = ""


@dataclass(frozen=True)
class Layer:
    """A layer as the site shows it: its name, spec, folder (`slug`), module type, output
    shape without the batch ([C, H, W], [T, C] or [C]) and its units' names (a classifier's
    classes; empty: unnamed)."""

    name: str
    spec: str
    slug: str
    type: str
    shape: tuple[int, ...]
    names: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return self.shape[-1] if len(self.shape) == 2 else self.shape[0]

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3


# ----------------------------------------------------------------------------- the layers


def model_layers(
    network: Network, names: Sequence[str], hooks: dict[str, str], classes: Sequence[str]
) -> list[Layer]:
    """The layers `names` of the network with their shapes (one forward of a grey image) and
    folders; a flat layer with one unit per class is named by `classes`."""
    specs = layer_specs(network, list(names), hooks, "--layers")
    probe = torch.full((1, network.prep.channels, *network.prep.size), 0.5)
    network.to(torch.device("cpu"))
    with torch.no_grad(), Capture(network.model, specs.values(), network) as capture:
        outputs = capture.run(probe)
    found: list[Layer] = []
    taken = set(RESERVED)
    for name, spec in specs.items():
        try:
            shape = tuple(select(outputs, spec).shape[1:])
        except TypeError as exc:  # a tuple or dict output, or a selector that does not fit it
            raise UserError(f"--layers {name}: {exc}") from None
        if len(shape) not in (1, 2, 3):
            raise UserError(
                f"--layers {name}: an output of shape {[1, *shape]}; expected [B, C], "
                "[B, T, C] (tokens) or [B, C, H, W]"
            )
        named = tuple(classes) if len(shape) == 1 and shape[0] == len(classes) else ()
        slug = _slug(name, taken)
        taken.add(slug)
        found.append(Layer(name, spec, slug, _module_type(network, spec), shape, named))
    return found


def _slug(name: str, taken: set[str]) -> str:
    """A folder name for a layer: its name with anything but letters, digits, '.', '_' and '-'
    replaced, made unique among `taken` with -2, -3..."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "layer"
    slug = base
    for n in itertools.count(2):
        if slug not in taken:
            return slug
        slug = f"{base}-{n}"
    raise AssertionError("unreachable")


def _module_type(network: Network, spec: str) -> str:
    """The class name of the module a layer spec reads ('(model output)' for the output)."""
    try:
        return type(network.model.get_submodule(split_layer(spec)[0])).__name__
    except AttributeError:
        return "(model output)"


# ----------------------------------------------------------------------------- the renders


def objective(layer: Layer, channel: int = 0) -> str:
    """The `--set` that makes a config's objective a channel of `layer` (flow YAML)."""
    node = {"kind": "channel", "layer": layer.name, "channel": channel}
    return f"objective={json.dumps(node)}"


def render_layer(
    settings: Settings,
    layer: Layer,
    folder: Path,
    log: Log | None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Every channel of `layer` by every seed, as a sweep into `folder` (those already there
    are kept), on `backend` (None: in this process); returns the sweep's index."""
    sets = [*settings.overrides, "param.batch=1", objective(layer)]
    overs = [f"objective.channel=0:{layer.channels}", f"seed=0:{settings.seeds}"]
    shown = prefixed(log, layer.name)
    _, index = run_sweep(
        settings.config, sets, overs, folder, settings.batch, shown, backend=backend
    )
    return index


def prefixed(log: Log | None, prefix: str) -> Log | None:
    """`log` with every line led by `prefix` (a layer's name)."""
    if log is None:
        return None
    return lambda line: log(f"{prefix}: {line}")


def command(settings: Settings, layer: Layer, channel: int, seed: int) -> str:
    """The shell line that renders one channel's image alone, as a normal config."""
    sets = [*settings.overrides, "param.batch=1", objective(layer, channel), f"seed={seed}"]
    words = ["fvis", "render", str(settings.config), *(w for s in sets for w in ("--set", s))]
    return shlex.join(words)


def diversity(files: Sequence[Path]) -> float | None:
    """Mean pairwise 1 - SSIM of a channel's renders (one per seed): 0 when the seeds all give
    one picture; None for a single render."""
    if len(files) < 2:
        return None
    images = [read_image(path) for path in files]
    pairs = list(itertools.combinations(images, 2))
    return round(sum(1 - ssim(a, b) for a, b in pairs) / len(pairs), 4)


# -------------------------------------------------------------- examples, groups and atlases


def find_examples(scan: Scan, folder: Path, top: int, progress: Any) -> dict[str, Any]:
    """The dataset examples of the scan's layers in `folder`: those already there when they
    were found over the same data for these layers and more, else one pass anew."""
    index_path = folder / dataset_examples.INDEX
    index = _read(index_path)
    same = index.get("data") == scan.identity.get("data") and index.get("top") == top
    if same and set(scan.layers) <= set(index.get("layers", ())):
        return index
    with runs.locked(folder):
        runs.claim(folder, True, runs.EXAMPLES)
        found = dataset_examples.measure(scan, dataset_examples.layers(scan, None))
        dataset_examples.run(scan, found, top, folder, False, progress)
    return json.loads(index_path.read_text())


def attributions(
    network: Network, layer: Layer, units: list[dict[str, Any]], images: Images, folder: Path
) -> dict[int, str]:
    """For each unit of `layer` (as examples.json lists them), where its top ATTRIBUTED images
    by maximum drive it: integrated gradients (Sundararajan et al. 2017; Captum's, from a black
    image in IG_STEPS steps) of the unit's mean activation over the input, summed over colours,
    smoothed for display (the images' own noise speckles a pixel map) and drawn over the image
    on one colour scale per unit (`fvis.attribution.heatmaps`), the images above, their maps
    below. A strip's name holds its images' ids, so a strip is made once for the same images.
    Returns {unit: the strip's path relative to the site}."""
    # Captum costs about a second to import; fvis.attribution (imported above) has given the
    # matplotlib it imports a private folder.
    from captum.attr import IntegratedGradients  # lazy: start-up time

    network.to(torch.device("cpu"))
    (folder / layer.slug / "attribution").mkdir(parents=True, exist_ok=True)
    strips = {}
    for unit in units:
        entries = unit.get("top_max", unit.get("top")) or []
        ids = [entry["id"] for entry in entries[:ATTRIBUTED]]
        if not ids:
            continue
        name = f"{unit['unit']:04d}-{'-'.join(map(str, ids))}.png"
        path = folder / layer.slug / "attribution" / name
        if not path.is_file():
            batch = torch.stack([images.read(i) for i in ids])
            mean = _unit_mean(network, layer.spec, unit["unit"])
            maps = IntegratedGradients(mean).attribute(batch, n_steps=IG_STEPS).sum(1, True)
            shown = gaussian_blur(maps.detach(), max(batch.shape[-2:]) / SMOOTHING)[:, 0]
            write_atomic(path, png_bytes(to_pil(_strip(batch, shown))))
        strips[unit["unit"]] = path.relative_to(folder).as_posix()
    return strips


def _unit_mean(network: Network, spec: str, unit: int) -> Callable[[Tensor], Tensor]:
    """x [B, C, H, W] in [0, 1] -> a unit's mean activation over positions [B]."""

    def mean(x: Tensor) -> Tensor:
        with Capture(network.model, [spec], network) as capture:
            return positions(select(capture.run(x), spec))[:, unit].mean(-1)

    return mean


def _strip(images: Tensor, maps: Tensor) -> Tensor:
    """[3, 2H, N W]: the images in a row, their maps overlaid below (one scale)."""
    scale = heatmaps.scale_of(maps, "auto")
    shown = [heatmaps.overlay(image, m, scale) for image, m in zip(images, maps, strict=True)]
    colour = images if images.shape[1] == 3 else images.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return torch.cat([torch.cat(list(colour), 2), torch.cat(shown, 2)], 1)


def layer_groups(
    scan: Scan,
    settings: Settings,
    layer: Layer,
    seed: int,
    folder: Path,
    log: Log | None,
    backend: Backend | None = None,
) -> None:
    """The layer's neuron groups over the data in `folder`, unless already there for as many
    groups over the same data."""
    count = settings.groups
    assert count is not None
    found = _read(folder / groups.INDEX)
    if found.get("count") == count and found.get("data") == settings.data:
        return
    chosen = groups.Settings(
        layer.name, count, settings.config, settings.overrides, seed=seed, data=settings.data
    )
    with runs.locked(folder):
        runs.claim(folder, True, groups.KIND)
        log = prefixed(log, f"{layer.name} groups")
        groups.run(scan.network, layer.spec, chosen, folder, scan, log=log, backend=backend)


def layer_atlas(
    scan: Scan,
    settings: Settings,
    layer: Layer,
    seed: int,
    folder: Path,
    log: Log | None,
    backend: Backend | None = None,
) -> None:
    """The layer's activation atlas in `folder`, unless already there with as many cells
    over the same data."""
    grid = settings.atlas
    assert grid is not None
    found = _read(folder / atlas.INDEX)
    made = found.get("parameters", {}).get("grid")
    if made == grid and found.get("data") == scan.identity.get("data"):
        return
    one = replace(scan, layers={layer.name: layer.spec})  # the pass reads this layer alone
    chosen = atlas.Settings(layer.name, grid=grid, seed=seed, classes=tuple(scan.images.classes))
    with runs.locked(folder):
        runs.claim(folder, True, atlas.KIND)
        log = prefixed(log, f"{layer.name} atlas")
        atlas.run(
            one, chosen, settings.config, settings.overrides, folder, log=log, backend=backend
        )


def _read(index: Path) -> dict[str, Any]:
    """A JSON index's top level; empty where it is missing or unreadable."""
    try:
        found = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


# ----------------------------------------------------------------------------- the manifest


def built_layers(folder: Path) -> list[str]:
    """The layers a microscope folder already shows (none for a new folder): a run adds its
    layers to them."""
    return [layer["name"] for layer in _read(folder / MANIFEST).get("layers", ())]


def identity(loaded: Loaded) -> dict[str, Any]:
    """What the renders depend on: the resolved config but its name and outputs."""
    return loaded.config.model_dump(mode="json", exclude={"name", "output"})


def claim(folder: Path, loaded: Loaded, force: bool) -> None:
    """Refuse a folder holding something else, or a microscope of another config (unless
    `force`: then its renders and examples are made again). A new folder gets a manifest of
    no layers at once, so that a first run interrupted is a microscope folder to go on in."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if any(p.name != runs.LOCK for p in folder.iterdir()):
            raise UserError(
                f"{folder}: not empty and not a microscope folder (no {MANIFEST}); choose a new "
                "or empty folder with --out DIR"
            )
        started = {"format": FORMAT, "title": loaded.config.name, "identity": identity(loaded)}
        write_atomic(manifest, to_json({**started, "layers": []}))
        return
    try:
        old = json.loads(manifest.read_text())
        layers, made_from = old["layers"], old["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{manifest}: not a microscope manifest; choose another --out") from None
    now = identity(loaded)
    if made_from == now:
        return
    if not force:
        changed = sorted(k for k in made_from.keys() | now.keys() if made_from.get(k) != now.get(k))
        raise UserError(
            f"{folder}: a microscope of another config (its {', '.join(changed)} differ); pass "
            "--force to render it again, or choose another --out"
        )
    passes = [(folder / EXAMPLES, runs.EXAMPLES)]
    for layer in layers:  # what the old config made goes; the pictures are made again
        made = folder / layer["slug"]
        (made / RENDERS / "sweep.json").unlink(missing_ok=True)
        for strip in (made / "attribution").glob("*.png"):
            strip.unlink()
        passes += [(made / "groups", groups.KIND), (made / "atlas", atlas.KIND)]
    for done, kind in passes:
        if done.is_dir():
            with runs.locked(done):
                runs.claim(done, True, kind)
    write_atomic(manifest, to_json({**old, "identity": now, "seconds": {}}))


def units(
    settings: Settings,
    layer: Layer,
    index: dict[str, Any],
    folder: Path,
    found: dict[str, Any] | None,
    strips: dict[int, str],
) -> list[dict[str, Any]]:
    """Each channel of a layer as the manifest lists it: its renders, objectives, curves,
    diversity, examples, attribution strip and the command that renders it."""
    ranked = {u["unit"]: u for u in found["layers"][layer.name]["units"]} if found else {}
    listed = []
    for c in range(layer.channels):
        items = [index[f"objective.channel={c},seed={s}"] for s in range(settings.seeds)]
        files = [f"{layer.slug}/{RENDERS}/{item['file']}" for item in items]
        curves = [item.get("curve") for item in items]
        unit = ranked.get(c)
        listed.append(
            {
                "channel": c,
                "name": layer.names[c] if layer.names else None,
                "renders": files,
                "objective": [round(item["objective"], 4) for item in items],
                "curve": None if None in curves else _curves(curves),
                "diversity": diversity([folder / f for f in files]),
                "examples": None if unit is None else f"{EXAMPLES}/{unit['sheet']}",
                "top": None if unit is None else _named(unit),
                "attribution": strips.get(c),
                "command": command(settings, layer, c, 0),
            }
        )
    return listed


def _curves(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' curves of a channel (one config: the same steps) as one entry."""
    return {"steps": curves[0]["steps"], "objective": [curve["objective"] for curve in curves]}


def _named(unit: dict[str, Any]) -> list[dict[str, Any]]:
    """The TOP_NAMED images that excite a unit most (by mean over positions), with values."""
    ranking = unit.get("top_mean", unit.get("top")) or []
    return [{"image": e["image"], "value": round(e["value"], 4)} for e in ranking[:TOP_NAMED]]


def layer_entry(
    settings: Settings,
    layer: Layer,
    index: dict[str, Any],
    folder: Path,
    found: dict[str, Any] | None,
    strips: dict[int, str],
) -> dict[str, Any]:
    """A layer as the manifest lists it, with its pictures where they exist."""

    def where(path: str) -> str | None:
        return path if (folder / path).is_file() else None

    return {
        "name": layer.name,
        "slug": layer.slug,
        "type": layer.type,
        "shape": list(layer.shape),
        "channels": layer.channels,
        "sheet": where(f"{layer.slug}/{RENDERS}/sheet.png"),
        "curves": where(f"{layer.slug}/{RENDERS}/curves.png"),
        "groups": where(f"{layer.slug}/groups/{groups.PICTURE}"),
        "atlas": where(f"{layer.slug}/atlas/{atlas.PICTURE}"),
        "units": units(settings, layer, index, folder, found, strips),
    }


# ----------------------------------------------------------------------------- the whole


def run(
    settings: Settings,
    loaded: Loaded,
    network: Network,
    folder: Path,
    scan: Scan | None = None,
    force: bool = False,
    log: Log | None = None,
    progress: Any = None,
    backend: Backend | None = None,
) -> Path:
    """Render what `folder` lacks (on `backend`: None, in this process), find the examples,
    groups and atlases asked for, write the manifest and build the site; returns its
    index.html."""
    config = loaded.config
    with runs.locked(folder):
        claim(folder, loaded, force)
        layers = model_layers(network, settings.layers, config.hooks, class_names(config, scan))
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        indices = {
            layer.name: render_layer(settings, layer, folder / layer.slug / RENDERS, log, backend)
            for layer in layers
        }
        start = _lap(seconds, "renders", start)
        found = None
        strips: dict[str, dict[int, str]] = {}
        if scan is not None:
            found = find_examples(scan, folder / EXAMPLES, settings.top, progress)
            start = _lap(seconds, "examples", start)
            if settings.attribution:
                for layer in layers:
                    ranked = found["layers"][layer.name]["units"]
                    strips[layer.name] = attributions(network, layer, ranked, scan.images, folder)
                start = _lap(seconds, "attribution", start)
            for layer in layers:
                if settings.groups and layer.spatial:
                    here = folder / layer.slug / "groups"
                    layer_groups(scan, settings, layer, config.seed, here, log, backend)
                if settings.atlas and layer.spatial:
                    here = folder / layer.slug / "atlas"
                    layer_atlas(scan, settings, layer, config.seed, here, log, backend)
            start = _lap(seconds, "groups and atlases", start)
        entries = [
            layer_entry(
                settings, layer, indices[layer.name], folder, found, strips.get(layer.name, {})
            )
            for layer in layers
        ]
        write_atomic(
            folder / CONFIG,
            yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode(),
        )
        manifest = {
            "format": FORMAT,
            "title": config.name,
            "command": settings.command,
            "config": CONFIG,
            "identity": identity(loaded),
            "versions": versions(),
            "model": {
                "description": describe(config.model.model_dump(mode="json")),
                "parameters": sum(p.numel() for p in network.model.parameters()),
                "input": [network.prep.channels, *network.prep.size],
            },
            "data": settings.data,
            "render": render_size(folder, entries),
            "seeds": list(range(settings.seeds)),
            "steps": config.optim.steps,
            "seconds": spent(folder, seconds),
            "layers": entries,
        }
        write_atomic(folder / MANIFEST, to_json(manifest))
        site.build(folder)
    return folder / "index.html"


def class_names(config: Config, scan: Scan | None) -> tuple[str, ...]:
    """The model's classes by logit: a zoo model's own, else the data's (none without)."""
    if isinstance(config.model, ZooModelSpec):
        return zoo.get(config.model.name).classes
    return tuple(scan.images.classes) if scan is not None else ()


def spent(folder: Path, seconds: dict[str, float]) -> dict[str, float]:
    """Seconds per stage over every run that built the folder: this run's added to those its
    manifest recorded (a rebuild adds little, and the site keeps what building it took)."""
    before = _read(folder / MANIFEST).get("seconds") or {}
    stages = dict.fromkeys([*before, *seconds], 0.0)
    return {k: round(float(before.get(k, 0)) + seconds.get(k, 0), 2) for k in stages}


def render_size(folder: Path, entries: list[dict[str, Any]]) -> list[int] | None:
    """The renders' [H, W] in pixels, from the first (a config's renders share one size)."""
    for entry in entries:
        for unit in entry["units"]:
            return list(read_image(folder / unit["renders"][0]).shape[1:])
    return None


def describe(model: dict[str, Any]) -> str:
    """A model spec in a few words: 'zoo:shapes', 'torchvision:resnet50', else its fields."""
    if "source" in model and "name" in model:
        return f"{model['source']}:{model['name']}"
    return ", ".join(f"{k}={v}" for k, v in model.items() if k != "input")


def _lap(seconds: dict[str, float], stage: str, start: float) -> float:
    now = time.perf_counter()
    seconds[stage] = round(now - start, 2)
    return now
