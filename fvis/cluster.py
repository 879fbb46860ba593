"""Sweeps on a Ray cluster: each optimization of a sweep a Ray task, its files written here.

`--backend ray` hands the parts of a sweep (its batches of items) to Ray, the distributed
engine the PyTorch ecosystem already runs on, rather than a scheduler of fvis's own. Each part
is one task declaring its resources (a GPU where the config's device wants one and the cluster
has them, else a CPU); a worker builds the part's plan and runs it exactly as `fvis sweep` does
locally (`fvis.sweep.render_part`), and sends back each item's PNG bytes, objective and curve.
The driver, this process, writes them as they arrive, atomically, into the sweep folder it
holds locked: workers need no shared storage, and an interrupted sweep keeps what arrived.

A task whose worker dies (a killed process, a lost node) is run again by Ray, up to RETRIES
times. Ctrl-C cancels the tasks still out; running the sweep again renders what is missing.
Ray is an optional extra: `pip install 'fvis[ray]'`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fvis.errors import UserError
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
    return render_part(part, Path(base))


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
        self.task = self.ray.remote(max_retries=RETRIES, retry_exceptions=False)(_render_task)

    def gpus(self, part: list[SweepItem]) -> int:
        """GPUs a part's task asks for: one where its device wants CUDA and the cluster has it."""
        device = part[0].config.device
        wants = device.startswith("cuda") or device == "auto"
        return int(wants and self.ray.cluster_resources().get("GPU", 0) >= 1)

    def render(
        self, parts: list[list[SweepItem]], base: Path
    ) -> Iterator[tuple[list[SweepItem], Rendered]]:
        """Every part submitted at once; each yielded as its task completes. Leaving early
        (Ctrl-C, a failure) cancels the tasks still out."""
        ray = self.ray
        out = {
            self.task.options(num_cpus=1, num_gpus=self.gpus(part)).remote(
                [_portable(item) for item in part], str(base)
            ): part
            for part in parts
        }
        try:
            while out:
                done, _ = ray.wait(list(out), num_returns=1)
                for ref in done:
                    yield out.pop(ref), self._result(ref)
        finally:
            for ref in out:
                ray.cancel(ref, force=True)

    def _result(self, ref: Any) -> Rendered:
        """A task's result; a user mistake it met (a config that does not build) as the one
        line it would be locally, not as the worker's traceback."""
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
