"""A run folder's life: checkpoints while rendering, the final write, resuming a stopped run."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from fvis.config import Config
from fvis.errors import UserError
from fvis.io import write_atomic
from fvis.render import Plan, Renderer, Result
from fvis.writers import write_run

CHECKPOINT = "checkpoint.pt"


def save_progress(run_dir: Path, config: Config, plan: Plan, renderer: Renderer) -> None:
    """The outputs so far (status 'running') and a checkpoint to resume from."""
    write_run(run_dir, config, plan, renderer.result)
    buffer = io.BytesIO()
    torch.save(renderer.state(), buffer)
    write_atomic(run_dir / CHECKPOINT, buffer.getvalue())


def finish(run_dir: Path, config: Config, plan: Plan, renderer: Renderer) -> Result:
    """The final outputs; the checkpoint is kept only while the run can still be resumed."""
    result = renderer.result
    if result.status == "complete":
        write_run(run_dir, config, plan, result)
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    else:
        save_progress(run_dir, config, plan, renderer)
    return result


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """A run's checkpoint, loaded without running any code (weights_only)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        done = (run_dir / "run.json").is_file()
        reason = "the run is complete" if done else "no checkpoint there"
        raise UserError(f"{run_dir}: nothing to resume ({reason})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path}: unreadable checkpoint ({exc})") from None


def resume_source(run_dir: Path) -> tuple[Path, Path]:
    """The config a run was made from (its resolved copy) and the folder its paths are from."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    try:
        base = Path(json.loads((run_dir / "run.json").read_text())["config_dir"])
    except (OSError, ValueError, KeyError):
        base = run_dir
    return config, base


def restore(renderer: Renderer, run_dir: Path) -> None:
    """Continue a renderer from a run's checkpoint; a checkpoint of another config is refused."""
    state = load_checkpoint(run_dir)
    try:
        renderer.restore(state)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(
            f"{run_dir}: the checkpoint does not fit this config (was it changed?): {first}"
        ) from None
