"""Sweeps: one image per value of one or more config paths, packed as batch items of one run.

`--over objective.channel=0:64` renders 64 images. Items differing only in their objective or
seed share an optimization; items that differ elsewhere (say `param.decay`) go to separate
runs. Batch item i optimizes item i's objective with the random stream a render of item i's
own config gives its image 0 (items with one seed start from the same noise): optimized alone,
an item is byte for byte the `image_0.png` of `fvis render --set objective.channel=5`; in a
batch, the same up to the float rounding of batched kernels. A sweep folder holds one PNG per
item, a labelled contact sheet, curves.png (each item's objective over the steps) and
`sweep.json`, which records each item's curve; rerunning skips the items already there. A sweep
holds at most MAX_ITEMS items, counted before any is made.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from fvis import budget, curves
from fvis.build import build_plan, memory_need
from fvis.config import KINDS, Config, Loaded, Source, load_config
from fvis.errors import SpecError, UserError
from fvis.io import png_bytes, to_json, to_pil, write_atomic
from fvis.models import resolve_device
from fvis.objectives.batch import ItemWise
from fvis.render import Renderer, term_names
from fvis.runs import locked
from fvis.writers import contact_sheet

INDEX = "sweep.json"
SHEET = "sheet.png"
# Items in one sweep at most: sheet.png shows every item (rows of 8 cells of 96 + 18 px), and
# 8,000 is about the most whose sheet stays within budget.MAX_GRID_PIXELS, the largest image
# Pillow-based readers (fvis compare among them) accept.
MAX_ITEMS = 8_000
# Integers in a range START:STOP[:STEP] at most this many digits long.
MAX_DIGITS = 18
# Points of an item's curve in sweep.json at most (evenly spaced, the last step kept), and their
# significant digits: each series of an item then takes at most about 3 kB of sweep.json.
CURVE_POINTS = 256
CURVE_DIGITS = 6


class SweepFailed(UserError):
    """A render of the sweep started and failed (a NaN, out of memory with one item): exit 1."""

    exit_code = 1


@dataclass
class SweepItem:
    """One image: its overrides ('objective.channel=5'), its config, its file."""

    key: str
    overrides: list[str]
    config: Config
    source: Source | None = None  # locates the item's build errors (file, line, --set)

    @property
    def file(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,-]", "_", self.key) + ".png"


def _caption(key: str) -> str:
    """'objective.channel=5,param.decay=1.5' -> 'channel=5,decay=1.5'."""
    return ",".join(
        part.split("=")[0].split(".")[-1] + "=" + part.split("=", 1)[1] for part in key.split(",")
    )


def parse_over(spec: str) -> tuple[str, Sequence[Any]]:
    """'objective.channel=0:64' -> ('objective.channel', range(0, 64)).

    Values are a range `start:stop[:step]` (kept lazy: its size is checked before any item is
    made), a comma-separated list, or one YAML value.
    """
    path, sep, raw = spec.partition("=")
    shown = _shown(spec)
    if not sep or not path or not raw:
        raise UserError(f"--over {shown}: expected path=values, e.g. objective.channel=0:64")
    if re.fullmatch(r"-?\d+:-?\d+(:-?\d+)?", raw):
        if any(len(part.lstrip("-")) > MAX_DIGITS for part in raw.split(":")):
            raise UserError(
                f"--over {_shown(path)}: START:STOP:STEP must be integers of at most "
                f"{MAX_DIGITS} digits"
            )
        start, stop, *rest = map(int, raw.split(":"))
        step = rest[0] if rest else 1
        if step == 0:
            raise UserError(f"--over {shown}: STEP must not be 0")
        values = range(start, stop, step)
        if not values:
            order = "above" if step > 0 else "below"
            raise UserError(
                f"--over {shown}: the range is empty: STOP must be {order} START with a STEP "
                f"of {step} (e.g. {start}:{start + 4 * step}:{step})"
            )
        return path, values
    try:
        return path, [yaml.safe_load(part) for part in raw.split(",")]
    except (yaml.YAMLError, ValueError, RecursionError):
        raise UserError(f"--over {shown}: values must be YAML") from None


def _shown(text: str, limit: int = 60) -> str:
    """`text` as quoted in a message: at most `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expand(path: Path, overrides: Sequence[str], overs: Sequence[str]) -> list[SweepItem]:
    """Every combination of the --over values, each validated as a config of its own; more
    than MAX_ITEMS combinations are refused before any is made."""
    axes = [parse_over(spec) for spec in overs]
    sizes = [len(values) for _, values in axes]
    total = math.prod(sizes)
    if total > MAX_ITEMS:
        given = " ".join(f"--over {_shown(spec)}" for spec in overs)
        count = " x ".join(map(str, sizes)) + f" = {total}" if len(sizes) > 1 else str(total)
        raise UserError(
            f"{given}: {count} items, more than the {MAX_ITEMS} a sweep holds: sweep fewer "
            "values, or split them into several sweeps"
        )
    items = []
    for combo in itertools.product(*(values for _, values in axes)):
        sets = [f"{p}={json.dumps(v)}" for (p, _), v in zip(axes, combo, strict=True)]
        key = ",".join(f"{p}={v}" for (p, _), v in zip(axes, combo, strict=True))
        loaded = load_config(path, [*overrides, *sets])
        items.append(SweepItem(key, sets, loaded.config, loaded.source))
    return items


def _kinds(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("kind"), str):
            yield node["kind"]
        for value in node.values():
            yield from _kinds(value)
    elif isinstance(node, list):
        for value in node:
            yield from _kinds(value)


def check_batchable(loaded: Loaded) -> None:
    """Sweep items optimize their own objective: cross-batch objectives and parameters shared
    across the batch cannot be split into items."""
    kinds = _kinds(loaded.config.model_dump(mode="json")["objective"])
    used = {kind for kind in kinds if KINDS[kind].cross_batch}
    if used:
        raise UserError(
            f"{loaded.source.path}: the objective uses {', '.join(sorted(used))}, which compares "
            "batch items: render it with `fvis render` instead of sweeping"
        )
    if loaded.config.param.shared:
        raise UserError(
            f"{loaded.source.path}: param.shared ties the batch items together, so a sweep's "
            "items would depend on each other: set param.shared=0 to sweep"
        )


def groups(items: Sequence[SweepItem], batch: int) -> Iterator[list[SweepItem]]:
    """Chunks of at most `batch` items that can share one optimization (same config but for
    objective and seed), in sweep order."""
    by_rest: dict[str, list[SweepItem]] = {}
    for item in items:
        rest = item.config.model_dump(mode="json", exclude={"objective", "seed"})
        by_rest.setdefault(json.dumps(rest, sort_keys=True), []).append(item)
    for members in by_rest.values():
        for start in range(0, len(members), batch):
            yield members[start : start + batch]


# Items per optimization at most. On a CPU the time per item is lowest at batches of 4 to 8
# and rises beyond (at 16, ResNet-50's layer1 takes twice as long per item: its activations
# outgrow the caches and the allocator's reusable blocks). On a GPU (an H200, benchmarks/
# results.md) the time per item falls up to 64 and rises again at 128, on googlenet and ResNet-50.
MAX_BATCH = {"cpu": 8, "cuda": 64}
# The share of the device's free memory a sweep's batch may plan to fill.
MEMORY_SHARE = 0.5


def default_batch(item: SweepItem, base: Path) -> int:
    """Items per optimization: as many as fit in MEMORY_SHARE of the memory available, from
    one item's need as `fvis.budget` estimates it (the estimate `build_plan` refuses a batch
    by), capped at MAX_BATCH."""
    per_item = memory_need(item.config, base, [item])
    device = resolve_device(item.config.device)
    cap = MAX_BATCH.get(device.type, MAX_BATCH["cpu"])
    if per_item is None:  # the model fails on the image: building the batch will say why
        return cap
    return budget.largest_batch(per_item, device, MEMORY_SHARE, cap)


def read_index(folder: Path) -> dict[str, Any]:
    """The items a sweep folder already holds (by key)."""
    try:
        return json.loads((folder / INDEX).read_text())["items"]
    except (OSError, ValueError, KeyError):
        return {}


def run_sweep(
    path: Path,
    overrides: Sequence[str],
    overs: Sequence[str],
    out: Path | None,
    batch: int | None,
    progress: Callable[[str], None] | None = None,
    on_built: Callable[[], None] | None = None,
    backend: Backend | None = None,
    advance: Callable[[int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Render every item not yet in the sweep folder; returns the folder and its index.

    `progress` gets lines to show (and, without `advance`, one per optimization done);
    `advance` gets (items rendered, items to render) as they arrive, from wherever they ran: a
    progress bar's numbers. `on_built` is called once, when the first optimization has been
    built (the user's code, if the config names any, has then run). `backend` renders the
    parts (default: one after the other in this process; `fvis.cluster.RayBackend`: as tasks on
    a Ray cluster); this process writes every file either way.
    """
    loaded = load_config(path, list(overrides))
    items = expand(path, overrides, overs)
    check_batchable(loaded)
    folder = out or loaded.config.output.dir / f"{loaded.config.name}-sweep"
    with locked(folder):  # one command per folder: a second sweep into it is refused
        if backend is not None and on_built:
            on_built()  # the workers build and run the user's code
        local = Local(on_built)
        return folder, _fill(folder, path, items, batch, progress, backend or local, advance)


def _fill(
    folder: Path,
    path: Path,
    items: list[SweepItem],
    batch: int | None,
    progress: Callable[[str], None] | None,
    backend: Backend,
    advance: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Render the items `folder` lacks, then its contact sheet; returns the folder's index."""
    index = read_index(folder)
    todo = [i for i in items if i.key not in index or not (folder / i.file).is_file()]
    size = batch or (default_batch(todo[0], path.parent) if todo else 1)
    if progress and todo:
        progress(f"{len(todo)} items to render, up to {size} per optimization")
    finished = 0
    for part, rendered in _rendered(path, list(groups(todo, size)), backend, progress):
        try:
            _write_items(folder, path, part, rendered, index)
        except UserError as exc:  # a full disk: the items written so far stay, indexed
            raise SweepFailed(f"{exc}; rerun the sweep to render the rest") from None
        finished += len(part)
        if advance:
            advance(finished, len(todo))
        elif progress:
            progress(f"{len(index)}/{len(items)} items ({part[-1].key})")
    done = [i for i in items if i.key in index]
    drawing = items[0].config.output.curves  # items share their output settings
    if todo or not _pictured(folder, [i.key for i in done], drawing):
        _draw(folder, path, items, done, index, drawing)
    return index


def _rendered(
    path: Path,
    parts: list[list[SweepItem]],
    backend: Backend,
    progress: Callable[[str], None] | None,
) -> Iterator[tuple[list[SweepItem], Rendered]]:
    """Each part rendered by `backend`, as it completes; a part that ran out of memory is
    tried again in halves (a single item out of memory, or any other failure, stops the
    sweep: what was written stays)."""
    base = path.parent.resolve()  # workers may run in another folder
    pending = parts
    while pending:
        halves: list[list[SweepItem]] = []
        for part, rendered in backend.render(pending, base):
            if rendered.out_of_memory:
                if len(part) == 1:
                    raise SweepFailed(
                        f"{path}: {part[0].key}: out of {_device_name(part[0])} memory with one "
                        "item per optimization: lower param.size"
                    )
                half = len(part) // 2
                if progress:
                    progress(
                        f"out of memory with {len(part)} items per optimization: trying {half}"
                    )
                halves += [part[:half], part[half:]]
            elif rendered.failure:
                raise SweepFailed(f"{path}: {part[0].key}: {rendered.failure}")
            else:
                yield part, rendered
        pending = halves


def _pictured(folder: Path, keys: list[str], drawing: bool) -> bool:
    """Whether the folder's sheet (and curves, when drawn) show these items already: a rerun
    with nothing new leaves the folder as it was and costs no drawing."""
    try:
        shown = json.loads((folder / INDEX).read_text()).get("pictured")
    except (OSError, ValueError):
        return False
    pictures = [folder / SHEET, *([folder / curves.FILE] if drawing else [])]
    return shown == keys and all(p.is_file() for p in pictures)


def _draw(
    folder: Path,
    path: Path,
    items: list[SweepItem],
    done: list[SweepItem],
    index: dict[str, Any],
    drawing: bool,
) -> None:
    """The contact sheet and curves.png of the `done` items, then the index naming them."""
    sheet = contact_sheet([folder / i.file for i in done], [_caption(i.key) for i in done])
    _update(folder / SHEET, png_bytes(sheet))
    if drawing:
        axes = ", ".join(o.partition("=")[0] for o in items[0].overrides)
        title = f"{items[0].config.name or folder.name}: a sweep over {axes}"
        _write_curves(folder / curves.FILE, title, [(_caption(i.key), index[i.key]) for i in done])
    pictured = {"config": str(path), "items": index, "pictured": [i.key for i in done]}
    write_atomic(folder / INDEX, to_json(pictured))


def _write_items(
    folder: Path, path: Path, part: list[SweepItem], rendered: Rendered, index: dict[str, Any]
) -> None:
    """Each item's PNG, then the index naming it (an item is done once both are written)."""
    for item, entry in zip(part, rendered.items, strict=True):
        write_atomic(folder / item.file, entry["png"])
        index[item.key] = {
            "file": item.file,
            "overrides": item.overrides,
            **{k: v for k, v in entry.items() if k != "png"},
        }
    write_atomic(folder / INDEX, to_json({"config": str(path), "items": index}))


def _curve(renderer: Renderer, b: int) -> dict[str, Any]:
    """Item `b`'s trace as sweep.json records it: {"steps": [...], "objective": [...],
    "terms": {name: [...]}}, its own terms named as its own render names them, values as
    optimized (on randomly transformed images, before each step's update), at most
    CURVE_POINTS of them, rounded to CURVE_DIGITS significant digits."""
    result = renderer.result
    steps = result.trace_steps
    stride = max(1, -(-len(steps) // CURVE_POINTS))
    kept = range(len(steps) - 1, -1, -stride)[::-1]

    def column(name: str) -> list[float]:
        return [float(f"{result.trace[name][i][b]:.{CURVE_DIGITS}g}") for i in kept]

    return {
        "steps": [steps[i] for i in kept],
        "objective": column("objective"),
        "terms": {own: column(name) for own, name in _own_terms(renderer, b).items()},
    }


def _own_terms(renderer: Renderer, b: int) -> dict[str, str]:
    """Item `b`'s terms: their names in a render of the item alone -> in the batch's trace,
    which holds every item's terms (ItemWise, one objective per item; one item's Masked holds
    its own), each computed on every item's image, and numbers a name shared by items (#2)."""
    objective = renderer.plan.objective
    own = list((objective.terms[b] if isinstance(objective, ItemWise) else objective).leaves())
    traced = {id(leaf): name for leaf, name in zip(renderer.leaves, renderer.names, strict=True)}
    return {name: traced[id(leaf)] for leaf, name in zip(own, term_names(own), strict=True)}


def _write_curves(path: Path, title: str, done: list[tuple[str, dict[str, Any]]]) -> None:
    """curves.png: each item's objective (thin) from the curve sweep.json records for it, and
    their mean at the steps all of them have; items without a curve (indexed by an older fvis)
    are left out, and with none nothing is written."""
    drawn = {
        caption: (entry["curve"]["steps"], entry["curve"]["objective"])
        for caption, entry in done
        if (entry.get("curve") or {}).get("steps")
    }
    if not drawn:
        return
    by_step = [dict(zip(*line, strict=True)) for line in drawn.values()]
    shared = sorted(set.intersection(*(set(values) for values in by_step)))
    mean = [sum(values[s] for values in by_step) / len(by_step) for s in shared]
    _update(path, curves.png(title, {"mean": (shared, mean)}, drawn))


def _update(path: Path, data: bytes) -> None:
    """Write `data` to `path` unless it holds them already: a rerun that renders nothing new
    leaves the folder as it was (its files' times included; both pictures are deterministic)."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    write_atomic(path, data)


def _render(
    part: list[SweepItem], base: Path, on_built: Callable[[], None] | None = None
) -> Renderer | None:
    """One optimization of `part`'s items; None if building it ran out of memory. `on_built`
    is called between building the optimization and running it.

    A build error is located against the item it comes from: items of one part differ in
    their objective and seed only, so an objective error is looked for item by item.
    """
    try:
        plan = build_plan(part[0].config, base, part)
    except torch.OutOfMemoryError:
        return None
    except SpecError as exc:
        culprit = part[0]
        if exc.loc[:1] == ("objective",) and len(part) > 1:
            for item in part:
                try:
                    build_plan(item.config, base, [item])
                except SpecError as own:
                    culprit, exc = item, own
                    break
        raise UserError(culprit.source.error(exc) if culprit.source else exc.message) from None
    if on_built:
        on_built()
    renderer = Renderer(plan)
    renderer.run()
    return renderer


@dataclass(frozen=True)
class Rendered:
    """One optimization of a part of a sweep, as its items are written: per item its PNG's
    bytes, final objective, seconds per step and curve (sweep.json's keys); or why it failed."""

    items: list[dict[str, Any]]
    failure: str | None = None
    out_of_memory: bool = False


def render_part(
    part: list[SweepItem], base: Path, on_built: Callable[[], None] | None = None
) -> Rendered:
    """Build and run one optimization of `part`'s items (here, or in a worker of a cluster)."""
    renderer = _render(part, base, on_built)
    if renderer is None:
        return Rendered([], "out of memory while building", out_of_memory=True)
    result = renderer.result
    if result.failure:
        return Rendered([], result.failure, result.out_of_memory)
    seconds = result.seconds / max(result.steps_done, 1) / len(part)
    return Rendered(
        [
            {
                "png": png_bytes(to_pil(result.final.images[b])),
                "objective": result.final.objective[b],
                "seconds_per_step": seconds,
                "curve": _curve(renderer, b),
            }
            for b in range(len(part))
        ]
    )


class Backend(Protocol):
    """What renders a sweep's parts: each part with its `Rendered`, in any order, as they
    complete."""

    def render(
        self, parts: list[list[SweepItem]], base: Path
    ) -> Iterator[tuple[list[SweepItem], Rendered]]: ...


class Local:
    """The parts one after the other in this process; `on_built` is called once, when the
    first optimization has been built."""

    def __init__(self, on_built: Callable[[], None] | None = None) -> None:
        self.on_built = on_built

    def render(
        self, parts: list[list[SweepItem]], base: Path
    ) -> Iterator[tuple[list[SweepItem], Rendered]]:
        for part in parts:
            rendered = render_part(part, base, self.on_built)
            if not rendered.out_of_memory:
                self.on_built = None  # a build succeeded: the user's code has run
            yield part, rendered


def _device_name(item: SweepItem) -> str:
    """'CPU' or 'CUDA': the memory an item's device ran out of."""
    return resolve_device(item.config.device).type.upper()
