"""Sweeps and passes over data on a Ray cluster: the work cut into Ray tasks, their results
written here.

`--backend ray` hands work to Ray, the distributed engine the PyTorch ecosystem already runs
on, rather than a scheduler of fvis's own. Each task declares its resources (a GPU where the
config's device wants one and the cluster has them, else a CPU):

- a sweep's part (a batch of items): a worker builds its plan and runs it as `fvis sweep` does
  locally (`fvis.sweep.render_part`), and sends back each item's PNG bytes, objective and curve;
- a shard of a pass over data (`fvis examples`, `stats`, ...: a run of whole batches of images):
  a worker feeds it to a blank copy of the pass's accumulator (`fvis.scan.Scan.read`) and sends
  back its state, which this process merges in image order (`Accumulator.extend`).

A worker builds each network once (`fvis.models.keep_networks`) and gives every task a copy. The
driver, this process, writes every file, atomically, into the folder it holds locked: workers
need no shared storage, and an interrupted command keeps what arrived. A task whose worker dies
(a killed process, a lost node) is run again by Ray, up to RETRIES times. Ctrl-C cancels the
tasks still out; running the command again (with --resume for a pass) goes on. Ray is an
optional extra: `pip install 'fvis[ray]'`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fvis.data import Images
from fvis.errors import UserError
from fvis.models import build_network, keep_networks, resolve_device
from fvis.scan import Accumulator, Read, Recipe, Scan
from fvis.sweep import Rendered, SweepItem, render_part

RETRIES = 3
"""Runs of a task again after its worker died (Ray's task retries on system failures)."""
MISSING = "--backend ray needs Ray, an optional extra: pip install 'fvis[ray]'"


def ray_module() -> Any:
    """The `ray` package, or a one-line UserError saying how to install it."""
    try:
        import ray  # lazy: start-up time (an optional extra, about 2 s to import)
    except ImportError:
        raise UserError(MISSING) from None
    return ray


def _render_task(part: list[SweepItem], base: str) -> Rendered:
    """A part rendered in a Ray worker (threads: the CPUs Ray gives the task)."""
    keep_networks()
    return render_part(part, Path(base))


@dataclass(frozen=True)
class _Pass:
    """A pass as its tasks receive it (once, through Ray's object store): how to build its
    network, its layers, its images, its batch size, and the folder relative paths start from."""

    recipe: Recipe
    layers: dict[str, str]
    images: Images
    batch: int
    folder: str


def _scan_task(work: _Pass, accumulator: Accumulator, first: int, stop: int) -> Read:
    """Images [first, stop) of a pass read in a Ray worker: its network built once per worker,
    each task feeding a copy; the shard's state, count and unreadable images sent back."""
    keep_networks()
    recipe = work.recipe
    scan = Scan(
        build_network(recipe.spec, recipe.base),
        work.layers,
        work.images.rooted(Path(work.folder)),
        work.batch,
        0,
        resolve_device(recipe.device),
    )
    return scan.read(accumulator, range(first, stop))


class RayBackend:
    """Parts rendered as tasks on the Ray cluster at `address` ('auto': the one this machine
    belongs to, `ray start`'s), or on a local cluster of `cpus` CPUs started for this process
    (None: every CPU)."""

    def __init__(self, address: str | None = None, cpus: int | None = None) -> None:
        self.ray = ray_module()
        if not self.ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                options["address"] = address
            else:
                options["num_cpus"] = cpus or os.cpu_count() or 1
            try:
                self.ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "a local cluster"
                raise UserError(f"--backend ray: cannot start or reach {where} ({exc})") from None
        remote = self.ray.remote(max_retries=RETRIES, retry_exceptions=False)
        self.render_task, self.scan_task = remote(_render_task), remote(_scan_task)

    def gpus(self, device: str) -> int:
        """GPUs a task asks for: one where its `device` wants CUDA and the cluster has one."""
        wants = device.startswith("cuda") or device == "auto"
        return int(wants and self.ray.cluster_resources().get("GPU", 0) >= 1)

    def slots(self) -> int:
        """Tasks the cluster runs at once: one per CPU."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def render(
        self, parts: list[list[SweepItem]], base: Path
    ) -> Iterator[tuple[list[SweepItem], Rendered]]:
        """Every part of a sweep submitted at once; each yielded as its task completes."""
        tasks = {
            self.render_task.options(num_cpus=1, num_gpus=self.gpus(part[0].config.device)).remote(
                [_portable(item) for item in part], str(base)
            ): i
            for i, part in enumerate(parts)
        }
        for i, rendered in self._completed(tasks):
            yield parts[i], rendered

    def scan(
        self, scan: Scan, accumulator: Accumulator, shards: list[range]
    ) -> Generator[tuple[int, Read]]:
        """Every shard of a pass submitted at once; each yielded, with its index, as its task
        completes."""
        if scan.recipe is None:
            raise ValueError("a pass on a cluster needs the recipe of its network")
        ray = self.ray
        try:  # sent once, not with each task
            work = ray.put(_Pass(scan.recipe, scan.layers, scan.images, scan.batch, os.getcwd()))
            blank = ray.put(accumulator)
        except (TypeError, pickle.PicklingError) as exc:
            raise UserError(
                f"--backend ray: this pass cannot be sent to Ray's workers ({exc})"
            ) from None
        options = {"num_cpus": 1, "num_gpus": self.gpus(scan.recipe.device)}
        tasks = {
            self.scan_task.options(**options).remote(work, blank, shard.start, shard.stop): i
            for i, shard in enumerate(shards)
        }
        yield from self._completed(tasks)

    def _completed(self, tasks: dict[Any, int]) -> Iterator[tuple[int, Any]]:
        """(its key, its result) of each task, as it completes. Leaving early (Ctrl-C, a
        failure) cancels the tasks still out."""
        ray = self.ray
        try:
            while tasks:
                done, _ = ray.wait(list(tasks), num_returns=1)
                for ref in done:
                    yield tasks.pop(ref), self._result(ref)
        finally:
            for ref in tasks:
                ray.cancel(ref, force=True)

    def _result(self, ref: Any) -> Any:
        """A task's result; a user mistake it met (a config that does not build, an image
        source a worker cannot reach) as the one line it would be locally, not as the worker's
        traceback."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, UserError):
                raise UserError(str(exc.cause)) from None
            raise


def _portable(item: SweepItem) -> SweepItem:
    """An item as a task receives it: its key, overrides and config (its source, which only
    locates errors on the driver, stays here)."""
    return SweepItem(item.key, item.overrides, item.config)
