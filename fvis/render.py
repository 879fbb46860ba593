"""The optimization loop: maximize the objective over the image parameters, keep snapshots."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from fvis.build import Plan
from fvis.hooks import IMAGE, Capture
from fvis.objectives import Activations
from fvis.relu import redirect_relus

# (step, the step's mean objective) -> None; called a few times per second
Progress = Callable[[int, float], None]
REPORT_SECONDS = 0.25
MAX_TRACE = 1_000_000


@dataclass
class Snapshot:
    """The images after `step` updates and every term's value on them, per batch item."""

    step: int
    images: torch.Tensor
    objective: list[float]
    terms: dict[str, list[float]]


@dataclass
class Result:
    """What a render produced."""

    snapshots: list[Snapshot] = field(default_factory=list)
    trace_steps: list[int] = field(default_factory=list)
    trace: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    steps_done: int = 0
    interrupted: KeyboardInterrupt | None = None

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "complete"

    @property
    def initial(self) -> Snapshot:
        return self.snapshots[0]

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]


def render(plan: Plan, progress: Progress | None = None) -> Result:
    """Adam on the image parameters for `optim.steps` steps; snapshots at 0 and each threshold.

    Scores are maximized, so the loss is minus the sum of the per-item scores (summing keeps each
    item's gradient independent of the batch size). The step's score stays on the device and is
    read back only when progress is reported, a few times per second. An interrupt (Ctrl-C, or
    SIGTERM raised as `Terminated`) ends the loop early with a snapshot of the last step.
    """
    optim = plan.config.optim
    snapshot_steps = set(optim.snapshot_steps())
    adam = torch.optim.Adam(plan.param.parameters(), lr=optim.lr)
    leaves = list(plan.objective.leaves())
    batch = plan.config.param.batch
    logged = _logged_steps(optim.steps, (1 + len(leaves)) * batch)
    row = {step: i for i, step in enumerate(logged)}
    trace = torch.zeros(len(logged), 1 + len(leaves), batch, device=plan.device)
    result = Result(trace_steps=logged)
    names = _term_names(plan)
    start = last_report = time.perf_counter()
    model = plan.network.model
    with Capture(model, plan.objective.layers, plan.network) as capture:
        result.snapshots.append(_snapshot(plan, capture, 0, names))
        try:
            for step in range(1, optim.steps + 1):
                warm = step <= optim.redirected_relu
                with redirect_relus(model) if warm else nullcontext():
                    image = plan.param()
                    acts = Activations(
                        {**capture.run(plan.transforms(image, plan.streams)), IMAGE: image}
                    )
                    score = plan.objective(acts)
                    adam.zero_grad(set_to_none=True)
                    (-score.sum()).backward()
                adam.step()
                if step in row:
                    values = [score, *(acts.values[leaf] for leaf in leaves)]
                    trace[row[step]] = torch.stack([v.detach().expand(batch) for v in values])
                result.steps_done = step
                if step in snapshot_steps:
                    result.snapshots.append(_snapshot(plan, capture, step, names))
                now = time.perf_counter()
                if progress and (now - last_report >= REPORT_SECONDS or step == optim.steps):
                    progress(step, float(score.detach().mean()))
                    last_report = now
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: keep what was rendered
            result.interrupted = stop
            if result.final.step != result.steps_done:
                result.snapshots.append(_snapshot(plan, capture, result.steps_done, names))
    result.seconds = time.perf_counter() - start
    done = sum(step <= result.steps_done for step in logged)
    result.trace_steps = logged[:done]
    result.trace = {name: trace[:done, i].tolist() for i, name in enumerate(["objective", *names])}
    return result


def _logged_steps(steps: int, values_per_step: int) -> list[int]:
    """The steps whose per-item term values are kept: every step, or evenly spaced ones so
    that the trace holds at most MAX_TRACE values (the last step always included)."""
    stride = max(1, -(-steps * values_per_step // MAX_TRACE))
    return sorted({*range(stride, steps + 1, stride), steps})


def _term_names(plan: Plan) -> list[str]:
    """Each leaf's name, made unique with #2, #3... when two leaves share one."""
    names: list[str] = []
    for leaf in plan.objective.leaves():
        name, n = leaf.name, 1
        while name in names:
            n += 1
            name = f"{leaf.name} #{n}"
        names.append(name)
    return names


@torch.no_grad()
def _snapshot(plan: Plan, capture: Capture, step: int, names: list[str]) -> Snapshot:
    """The current images and the value of every term on them, without random transforms."""
    image = plan.param()
    acts = Activations({**capture.run(image), IMAGE: image})
    total = plan.objective(acts).expand(image.shape[0])
    terms = {
        name: leaf(acts).expand(image.shape[0]).tolist()
        for name, leaf in zip(names, plan.objective.leaves(), strict=True)
    }
    return Snapshot(step, image.detach().float().cpu(), total.tolist(), terms)
