"""The optimization loop: maximize the objective over the image parameters, keep snapshots.

A run can stop three ways before its last step, and keeps what it rendered in each: a stop
request (Ctrl-C or SIGTERM, honoured between two steps so the state stays consistent), a
non-finite objective term (the run fails, naming the term and the step, with the last finite
snapshot kept), or a crash of the process, after which `--resume` continues from the last
checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fvis.config import DeviceOptions, Schedule
from fvis.errors import YamlPath
from fvis.hooks import IMAGE, Capture
from fvis.models import Network
from fvis.objectives import Activations, Objective
from fvis.params import ImageParam
from fvis.relu import redirect_relus
from fvis.transforms import Pipeline

# (step, the step's mean objective) -> None; called a few times per second
Progress = Callable[[int, float], None]
REPORT_SECONDS = 0.25
MAX_TRACE = 1_000_000


@dataclass
class Plan:
    """Everything a render needs, on its device (made by `fvis.build.build_plan`).

    It lives here, with the loop that consumes it, so that the loop and the writers of its
    results need nothing from the builder.
    """

    device: torch.device
    options: DeviceOptions  # precision resolved: fp32 wherever autocast does not apply
    schedule: Schedule
    network: Network
    objective: Objective
    param: ImageParam
    transforms: Pipeline
    regions: dict[str, tuple[int, int]]  # a framed canvas: each map's part on the image alone
    streams: list[torch.Generator]  # one per batch item
    warnings: list[tuple[YamlPath, str]]
    base: Path

    @property
    def batch(self) -> int:
        return len(self.streams)


@dataclass
class Snapshot:
    """The images after `step` updates and every term's value on them, per batch item."""

    step: int
    images: torch.Tensor
    objective: list[float]
    terms: dict[str, list[float]]


@dataclass
class Result:
    """What a render produced (so far)."""

    snapshots: list[Snapshot] = field(default_factory=list)
    trace_steps: list[int] = field(default_factory=list)
    trace: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    steps_done: int = 0
    stopped_by: int | None = None  # the signal (SIGINT, SIGTERM) that stopped the run early
    failure: str | None = None
    out_of_memory: bool = False  # the failure was the device running out of memory
    running: bool = False

    @property
    def status(self) -> str:
        if self.failure:
            return "failed"
        if self.stopped_by:
            return "interrupted"
        return "running" if self.running else "complete"

    @property
    def initial(self) -> Snapshot:
        return self.snapshots[0]

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]


class NonFinite(Exception):
    """An objective term became NaN or infinite."""


class Renderer:
    """One render's state: parameters, optimizer, random streams, trace and snapshots.

    `state()` and `restore()` capture everything a run depends on, so a run resumed from a
    checkpoint ends in the same image as an uninterrupted one (on the same device).
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        schedule, options = plan.schedule, plan.options
        self.adam = torch.optim.Adam(plan.param.parameters(), lr=schedule.lr)
        self.leaves = list(plan.objective.leaves())
        self.names = term_names(self.leaves)
        self.batch = plan.batch
        self.logged = _logged_steps(schedule.steps, (1 + len(self.leaves)) * self.batch)
        self.row = {step: i for i, step in enumerate(self.logged)}
        rows = (len(self.logged), 1 + len(self.leaves), self.batch)
        self.trace = torch.zeros(rows, device=plan.device)
        # First step at which each row (objective, then each term) was not finite; 0: never.
        self.first_bad = torch.zeros(rows[1], dtype=torch.long, device=plan.device)
        self.result = Result()
        self.seconds_before = 0.0
        self.stop_requested: int | None = None
        self.forward = torch.compile(plan.network) if options.compile else plan.network
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.precision)
        self.autocast = dtype is not None
        self.dtype = dtype or torch.float32
        # fp16 gradients can underflow: scale the loss up. Adam's step does not change with a
        # constant gradient scale, so nothing needs unscaling.
        self.loss_scale = 1024.0 if self.autocast and dtype is torch.float16 else 1.0

    def request_stop(self, signum: int) -> None:
        """Stop after the current step (safe to call from a signal handler)."""
        self.stop_requested = signum

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the run; loadable with torch.load(weights_only=True).

        Only the schedule's snapshots (and step 0's) are kept: the one `run` adds where a stop
        request ends it belongs to the stopped run's own outputs, and a resumed run's outputs
        must equal an uninterrupted run's.
        """
        kept = {0, *self.plan.schedule.snapshot_steps}
        return {
            "step": self.result.steps_done,
            "param": self.plan.param.state_dict(),
            "adam": self.adam.state_dict(),
            "streams": [g.get_state() for g in self.plan.streams],
            "trace": self.trace.cpu(),
            "seconds": self.seconds_before + self.result.seconds,
            "snapshots": [
                {"step": s.step, "images": s.images, "objective": s.objective, "terms": s.terms}
                for s in self.result.snapshots
                if s.step in kept
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a state saved by `state()` (checked against this renderer first: see
        `fvis.runs.restore`)."""
        self.plan.param.load_state_dict(state["param"])
        self.adam.load_state_dict(state["adam"])
        for generator, saved in zip(self.plan.streams, state["streams"], strict=True):
            generator.set_state(saved)
        self.trace.copy_(state["trace"])
        self.seconds_before = float(state["seconds"])
        self.result.steps_done = int(state["step"])
        self.result.snapshots = [Snapshot(**s) for s in state["snapshots"]]

    def run(
        self,
        progress: Progress | None = None,
        on_snapshot: Callable[[Renderer], None] | None = None,
    ) -> Result:
        """Adam on the image parameters for the schedule's steps; snapshots at 0 and at each of
        the schedule's snapshot steps.

        Scores are maximized, so the loss is minus the sum of the per-item scores (summing
        keeps each item's gradient independent of the batch size). Values stay on the device;
        they are read back (a sync) only a few times per second, for progress and the check
        for non-finite terms, and at snapshots, where `on_snapshot` can save the run.
        """
        plan, schedule = self.plan, self.plan.schedule
        snapshot_steps = set(schedule.snapshot_steps)
        start = last_report = time.perf_counter()
        self.result.running = True
        model = plan.network.model
        with (
            self._ending(start),
            Capture(model, plan.objective.layers, self.forward) as capture,
            _cudnn_benchmark(plan.options.cudnn_benchmark),
        ):
            if not self.result.snapshots:
                self.result.snapshots.append(self._snapshot(capture, 0))
            try:
                for step in range(self.result.steps_done + 1, schedule.steps + 1):
                    redirect = step <= schedule.redirected_relu
                    score = self._step(capture, step, redirect=redirect)
                    self.result.steps_done = step
                    now = time.perf_counter()
                    due = now - last_report >= REPORT_SECONDS or step == schedule.steps
                    if due or step in snapshot_steps:
                        self._check_finite()
                    if step in snapshot_steps:
                        self.result.snapshots.append(self._snapshot(capture, step))
                        self.result.seconds = now - start
                        if on_snapshot:
                            on_snapshot(self)
                    if progress and due:
                        progress(step, float(score.detach().mean()))
                        last_report = now
                    if self.stop_requested:
                        self.result.stopped_by = self.stop_requested
                        self._check_finite()
                        if self.result.final.step != step:
                            self.result.snapshots.append(self._snapshot(capture, step))
                        break
            except NonFinite as exc:
                self.result.failure = str(exc)
            except torch.OutOfMemoryError:
                self.result.out_of_memory = True
                self.result.failure = (
                    f"out of {plan.device.type.upper()} memory at step {self.result.steps_done + 1}"
                    f": try a smaller param.batch ({self.batch}) or param.size"
                )
        return self.result

    @contextmanager
    def _ending(self, start: float) -> Iterator[None]:
        """However `run` ends, even by an exception from `on_snapshot` (a file that cannot be
        written), the result is left consistent: not running, its time and trace complete."""
        try:
            yield
        finally:
            self.result.running = False
            self.result.seconds = self.seconds_before + time.perf_counter() - start
            self._finish_trace()

    def step_bytes(self) -> int:
        """Memory one step holds for its backward pass: the bytes of the tensors autograd
        saves, each storage counted once, the network's weights left out (they are shared by
        any batch size). Runs one forward pass without updating anything."""
        model = self.plan.network.model
        weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with (
            Capture(model, self.plan.objective.layers, self.forward) as capture,
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            self._score(capture)
        return sum(saved.values())

    def _score(self, capture: Capture) -> tuple[torch.Tensor, Activations]:
        """Each item's objective on a randomly transformed image, and the activations."""
        plan = self.plan
        image = plan.param()
        with torch.autocast("cuda", self.dtype) if self.autocast else nullcontext():
            x = plan.transforms(image, plan.streams)
            acts = Activations({**capture.run(x), IMAGE: image}, regions=plan.regions)
            return plan.objective(acts).float(), acts

    def _step(self, capture: Capture, step: int, redirect: bool) -> torch.Tensor:
        with redirect_relus(self.plan.network.model) if redirect else nullcontext():
            score, acts = self._score(capture)
            self.adam.zero_grad(set_to_none=True)
            (-score.sum() * self.loss_scale).backward()
        for group in self.adam.param_groups:
            group["lr"] = self.plan.schedule.lr_at(step)
        self.adam.step()
        values = torch.stack(
            [v.detach().expand(self.batch) for v in (score, *(acts.values[x] for x in self.leaves))]
        )
        bad = ~torch.isfinite(values).all(1)
        self.first_bad = torch.where(bad & (self.first_bad == 0), step, self.first_bad)
        if step in self.row:
            self.trace[self.row[step]] = values
        return score

    def _check_finite(self) -> None:
        """Raise NonFinite naming the first term and step that went NaN or infinite."""
        first = self.first_bad.tolist()
        if not any(first):
            return
        step = min(s for s in first if s)
        leaves = [name for name, s in zip(self.names, first[1:], strict=True) if s == step]
        what = (
            f"term {leaves[0]!r} became NaN or infinite"
            if leaves
            else "the objective became NaN or infinite with every term finite (check powers, "
            "products and weights)"
        )
        self.result.steps_done = step - 1
        self.result.snapshots = [s for s in self.result.snapshots if s.step < step]
        raise NonFinite(
            f"{what} at step {step}; kept the snapshot of step {self.result.final.step} "
            "(try a lower optim.lr, or check the objective)"
        )

    def _finish_trace(self) -> None:
        done = sum(step <= self.result.steps_done for step in self.logged)
        self.result.trace_steps = self.logged[:done]
        names = ["objective", *self.names]
        self.result.trace = {name: self.trace[:done, i].tolist() for i, name in enumerate(names)}

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> list[float]:
        """The objective of each of `images` [B, C, H, W] in [0, 1] (another render's, with
        this render's batch size) on this render's network, as a snapshot scores its own."""
        model = self.plan.network.model
        with Capture(model, self.plan.objective.layers, self.forward) as capture:
            image = images.to(self.plan.device)
            acts = Activations({**capture.run(self.plan.param.opaque(image)), IMAGE: image})
            return self.plan.objective(acts).expand(len(image)).tolist()

    @torch.no_grad()
    def _snapshot(self, capture: Capture, step: int) -> Snapshot:
        """The current images and the value of every term on them, without random transforms."""
        image = self.plan.param()
        acts = Activations({**capture.run(self.plan.param.opaque(image)), IMAGE: image})
        b = image.shape[0]
        total = self.plan.objective(acts).expand(b)
        terms = {
            name: leaf(acts).expand(b).tolist()
            for name, leaf in zip(self.names, self.leaves, strict=True)
        }
        return Snapshot(step, image.detach().float().cpu(), total.tolist(), terms)


@contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    """torch.backends.cudnn.benchmark switched on for the block if `on` (a no-op off CUDA)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def render(plan: Plan, progress: Progress | None = None) -> Result:
    """Run a plan from its first step to its last (see `Renderer.run`)."""
    return Renderer(plan).run(progress)


def term_names(leaves: list[Any]) -> list[str]:
    """Each leaf's name, made unique with #2, #3... when two leaves share one."""
    names: list[str] = []
    for leaf in leaves:
        name, n = leaf.name, 1
        while name in names:
            n += 1
            name = f"{leaf.name} #{n}"
        names.append(name)
    return names


def _logged_steps(steps: int, values_per_step: int) -> list[int]:
    """The steps whose per-item term values are kept: every step, or evenly spaced ones so
    that the trace holds at most MAX_TRACE values (the last step always included)."""
    stride = max(1, -(-steps * values_per_step // MAX_TRACE))
    return sorted({*range(stride, steps + 1, stride), steps})
