"""Sweeps: one image per value of one or more config paths, packed as batch items of one run.

`--over objective.channel=0:64` renders 64 images. Items differing only in their objective or
seed share an optimization (batch item i optimizes item i's objective, with a random stream
keyed by the item, so batching changes no image); items that differ elsewhere (say `param.decay`)
go to separate runs. A sweep folder holds one PNG per item, a labelled contact sheet and
`sweep.json`; rerunning skips the items already there.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from fvis.build import build_plan
from fvis.config import KINDS, Config, Loaded, load_config
from fvis.errors import UserError
from fvis.io import png_bytes, to_json, to_pil, write_atomic
from fvis.render import Renderer
from fvis.writers import contact_sheet

INDEX = "sweep.json"
SHEET = "sheet.png"


@dataclass
class SweepItem:
    """One image: its overrides ('objective.channel=5'), its config, its file."""

    key: str
    overrides: list[str]
    config: Config

    @property
    def file(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,-]", "_", self.key) + ".png"


def _caption(key: str) -> str:
    """'objective.channel=5,param.decay=1.5' -> 'channel=5,decay=1.5'."""
    return ",".join(
        part.split("=")[0].split(".")[-1] + "=" + part.split("=", 1)[1] for part in key.split(",")
    )


def parse_over(spec: str) -> tuple[str, list[Any]]:
    """'objective.channel=0:64' -> ('objective.channel', [0, ..., 63]).

    Values are a range `start:stop[:step]`, a comma-separated list, or one YAML value.
    """
    path, sep, raw = spec.partition("=")
    if not sep or not path or not raw:
        raise UserError(f"--over {spec}: expected path=values, e.g. objective.channel=0:64")
    if re.fullmatch(r"-?\d+:-?\d+(:-?\d+)?", raw):
        start, stop, *step = map(int, raw.split(":"))
        values: list[Any] = list(range(start, stop, step[0] if step else 1))
    else:
        try:
            values = [yaml.safe_load(part) for part in raw.split(",")]
        except yaml.YAMLError:
            raise UserError(f"--over {spec}: values must be YAML") from None
    if not values:
        raise UserError(f"--over {spec}: no values")
    return path, values


def expand(path: Path, overrides: Sequence[str], overs: Sequence[str]) -> list[SweepItem]:
    """Every combination of the --over values, each validated as a config of its own."""
    axes = [parse_over(spec) for spec in overs]
    items = []
    for combo in itertools.product(*(values for _, values in axes)):
        sets = [f"{p}={json.dumps(v)}" for (p, _), v in zip(axes, combo, strict=True)]
        key = ",".join(f"{p}={v}" for (p, _), v in zip(axes, combo, strict=True))
        config = load_config(path, [*overrides, *sets]).config
        items.append(SweepItem(key, sets, config))
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
# outgrow the caches and the allocator's reusable blocks); a GPU takes a 64-channel layer in
# one optimization.
MAX_BATCH = {"cpu": 8, "cuda": 64}
# The share of the device's free memory a sweep's batch may plan to fill.
MEMORY_SHARE = 0.5


def default_batch(item: SweepItem, base: Path) -> int:
    """Items per optimization: as many as fit in MEMORY_SHARE of the device's free memory,
    from one step's measured need for one item (twice what autograd saves: the gradients of
    the saved tensors take about as much again), capped at MAX_BATCH."""
    plan = build_plan(item.config, base, [item])
    cap = MAX_BATCH.get(plan.device.type, MAX_BATCH["cpu"])
    free = free_memory(plan.device)
    if free is None:
        return cap
    need = 2 * Renderer(plan).step_bytes()
    return max(1, min(cap, int(free * MEMORY_SHARE) // max(need, 1)))


def free_memory(device: Any) -> int | None:
    """Bytes free on a CUDA device, or available to processes on a Linux host; None where
    neither can be read (then the batch is MAX_BATCH, and CUDA out-of-memory halves it)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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
) -> tuple[Path, dict[str, Any]]:
    """Render every item not yet in the sweep folder; returns the folder and its index."""
    loaded = load_config(path, list(overrides))
    items = expand(path, overrides, overs)
    check_batchable(loaded)
    folder = out or loaded.config.output.dir / f"{loaded.config.name}-sweep"
    folder.mkdir(parents=True, exist_ok=True)
    index = read_index(folder)
    todo = [i for i in items if i.key not in index or not (folder / i.file).is_file()]
    size = batch or (default_batch(todo[0], path.parent) if todo else 1)
    if progress and todo:
        progress(f"{len(todo)} items to render, up to {size} per optimization")
    for chunk in groups(todo, size):
        pending = [chunk]
        while pending:
            part = pending.pop(0)
            try:
                plan = build_plan(part[0].config, path.parent, part)
                result = Renderer(plan).run()
            except torch.OutOfMemoryError:
                if len(part) == 1:
                    raise UserError("out of memory with a batch of 1: reduce param.size") from None
                half = len(part) // 2
                pending[:0] = [part[:half], part[half:]]  # retry with half the batch
                continue
            if result.failure:
                raise UserError(f"{part[0].key}: {result.failure}")
            for b, item in enumerate(part):
                write_atomic(folder / item.file, png_bytes(to_pil(result.final.images[b])))
                index[item.key] = {
                    "file": item.file,
                    "overrides": item.overrides,
                    "objective": result.final.objective[b],
                    "seconds_per_step": result.seconds / max(result.steps_done, 1) / len(part),
                }
            write_atomic(folder / INDEX, to_json({"config": str(path), "items": index}))
            if progress:
                progress(f"{len(index)}/{len(items)} items ({part[-1].key})")
    done = [i for i in items if i.key in index]
    sheet = contact_sheet([folder / i.file for i in done], [_caption(i.key) for i in done])
    write_atomic(folder / SHEET, png_bytes(sheet))
    return folder, index
