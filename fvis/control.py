"""The control of a learned prior: the same render on a network without learned features.

Olah et al. 2017 name the limit of learned priors: what in a picture came from the network
being visualized, and what from the prior? A `prior` term with `control: true` answers it with
numbers. Once the render is complete, fvis renders the same config (objective, prior, seed) on
the control network, `model.control: shuffled` (every weight tensor's entries permuted: the
same architecture and weight statistics, no learned feature), into RUN/control/, and writes
RUN/control.json: per item, the SSIM between the render and its control (how much of the
picture the prior would draw alone) and the objective each reaches on the real network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fvis import runs
from fvis.build import build_plan, objective_nodes
from fvis.compare import ssim
from fvis.config import Config
from fvis.config.objective import PriorObjective
from fvis.errors import UserError
from fvis.io import to_json, write_atomic
from fvis.render import Progress, Renderer

FOLDER = "control"
FILE = "control.json"


def wanted(config: Config) -> bool:
    """Whether a `prior` term of the config (in its objective or regularizers) asks for the
    control render."""
    return any(
        isinstance(node, PriorObjective) and node.control for _, node in objective_nodes(config)
    )


def run(
    run_dir: Path,
    config: Config,
    base: Path,
    renderer: Renderer,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Render `config`'s control into run_dir/control (held by the caller with run_dir) and
    write run_dir/control.json from it and `renderer`'s complete render; returns what it holds."""
    model = config.model.model_copy(update={"control": "shuffled"})
    shuffled = config.model_copy(update={"model": model})
    plan = build_plan(shuffled, base)
    control = Renderer(plan)
    folder = run_dir / FOLDER
    with runs.locked(folder):
        runs.claim(folder, True)
        result = runs.render_run(folder, shuffled, plan, control, progress)
    if result.status != "complete":
        raise UserError(f"{folder}: the control render did not complete ({result.status})")
    real, other = renderer.result.final, result.final
    measures = {
        "network": "model.control: shuffled (every weight tensor's entries permuted)",
        "folder": FOLDER,
        "ssim": [round(ssim(a, b), 4) for a, b in zip(real.images, other.images, strict=True)],
        "objective": {"render": real.objective, "control": renderer.score(other.images)},
    }
    write_atomic(run_dir / FILE, to_json(measures))
    return measures


def summary(path: Path, measures: dict[str, Any]) -> str:
    """One line of what control.json (at `path`) holds: the mean SSIM, and the mean objective
    of the render and of its control on the real network."""
    mean = {key: sum(v) / len(v) for key, v in measures["objective"].items()}
    similarity = sum(measures["ssim"]) / len(measures["ssim"])
    return (
        f"{path}: the control render (shuffled weights) has SSIM {similarity:.3f} with the "
        f"render; objective {mean['render']:.4g}, the control's {mean['control']:.4g} on the "
        "real network"
    )
