"""Stops keep what was rendered; --resume continues to the image an uninterrupted run makes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_runs import stopped_run

from conftest import tiny_config
from fvis import runs
from fvis.build import build_plan
from fvis.config import load_config
from fvis.render import Renderer


def _start(path: Path, workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fvis", "render", *args, "--quiet"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_writes_partial_outputs(write_config, workdir: Path, sig, code) -> None:
    path = write_config(tiny_config(optim={"steps": 1_000_000}))
    proc = _start(path, workdir, str(path))
    run_dir = workdir / "outputs/cfg"
    deadline = time.monotonic() + 120
    while not run_dir.exists() and time.monotonic() < deadline:  # created right before the loop
        time.sleep(0.2)
    time.sleep(1.5)  # well into the loop
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "cfg: interrupted" in stderr and "resume with: fvis render --resume" in stderr
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert 0 < run["steps"] < 1_000_000
    assert run["snapshots"][-1]["step"] == run["steps"] >= run["history"]["steps"][-1]
    assert (run_dir / "grid.png").stat().st_size > 0 and (run_dir / "image_0.png").exists()
    assert (run_dir / runs.CHECKPOINT).exists()
    assert not list(run_dir.glob(".*.tmp"))

    # resuming finishes the run from where it stopped (a short one: cut the steps)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fvis",
            "render",
            "--resume",
            str(run_dir),
            "--quiet",
            "--set",
            f"optim.steps={run['steps'] + 5}",
            "--set",
            "optim.thresholds=null",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    # the step count is part of the checkpoint's shape: a changed config is refused cleanly
    assert done.returncode == 2 and "does not fit this config" in done.stderr


def _plan(path: Path):
    loaded = load_config(path)
    return build_plan(loaded.config, path.parent)


@pytest.mark.parametrize("lr_end", [None, 0.01])
def test_resumed_run_ends_in_the_same_image(write_config, workdir: Path, lr_end) -> None:
    """Also with an annealed learning rate: the rate follows the step, not the run's start."""
    optim = {"steps": 40, "thresholds": [10, 25], "lr_end": lr_end}
    path = write_config(tiny_config(optim=optim, param={"size": 24, "batch": 2}))
    straight = Renderer(_plan(path)).run()

    plan = _plan(path)
    first = Renderer(plan)
    first.run(on_snapshot=lambda r: r.request_stop(signal.SIGINT))  # stop at step 10
    assert first.result.status == "interrupted" and first.result.steps_done == 10
    run_dir = workdir / "run"
    run_dir.mkdir()
    runs.finish(run_dir, load_config(path).config, plan, first)

    second = Renderer(_plan(path))
    runs.restore(second, run_dir, load_config(path).config)
    resumed = second.run()
    assert resumed.status == "complete" and resumed.steps_done == 40
    assert [s.step for s in resumed.snapshots] == [0, 10, 25, 40]
    assert torch.equal(resumed.final.images, straight.final.images)
    assert resumed.trace == straight.trace


def test_resume_of_a_complete_run_is_refused(write_config, cli, workdir: Path) -> None:
    path = write_config(tiny_config(optim={"steps": 2}))
    assert cli("render", path, "--quiet").exit_code == 0
    result = cli("render", "--resume", workdir / "outputs/cfg", "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("nothing to resume (the run is complete)")


def test_non_finite_term_fails_naming_term_and_step(write_config, cli, workdir: Path) -> None:
    # channel 5 of the tiny net's second ReLU is dead on every image: 1 / 0 is infinite
    config = tiny_config(
        hooks={"relu2": "3"},
        objective="channel(relu2, 8) + 1e-3 * channel(relu2, 5) ^ -1",
        optim={"steps": 20, "thresholds": [10]},
    )
    result = cli("render", write_config(config), "--quiet")
    assert result.exit_code == 1
    message = (
        "the objective became NaN or infinite with every term finite (check powers, products "
        "and weights) at step 1; kept the snapshot of step 0"
    )
    assert message in result.stderr
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    assert run["status"] == "failed" and message in run["error"]
    assert run["steps"] == 0 and [s["step"] for s in run["snapshots"]] == [0]
    assert (workdir / "outputs/cfg/image_0.png").exists()


def test_a_resumed_run_writes_what_an_uninterrupted_run_writes(
    cli, write_config, workdir: Path, monkeypatch
) -> None:
    """Stopped between two snapshots, the run's own grid shows where it stopped; resumed, its
    outputs are byte for byte an uninterrupted run's (run.json too, but for timings)."""
    path = write_config(
        tiny_config(optim={"steps": 12, "thresholds": [4, 8]}, param={"size": 24, "batch": 2})
    )
    assert cli("render", path, "--quiet", "--out", "straight").exit_code == 0
    stopped_run(path, workdir / "resumed", 6, monkeypatch)
    stopped = json.loads((workdir / "resumed/run.json").read_text())
    assert [s["step"] for s in stopped["snapshots"]] == [0, 4, 6]  # the stop's own snapshot

    assert cli("render", "--resume", workdir / "resumed", "--quiet").exit_code == 0
    for name in ("grid.png", "image_0.png", "image_1.png", "config.yaml"):
        resumed, straight = workdir / "resumed" / name, workdir / "straight" / name
        assert resumed.read_bytes() == straight.read_bytes(), name
    timings = ("wall_seconds", "seconds_per_step")
    resumed, straight = (
        {
            k: v
            for k, v in json.loads((workdir / d / "run.json").read_text()).items()
            if k not in timings
        }
        for d in ("resumed", "straight")
    )
    assert resumed == straight
    assert cli("compare", workdir / "resumed", workdir / "straight", "--exact").exit_code == 0
