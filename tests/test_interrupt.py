"""Ctrl-C and SIGTERM keep what was rendered: images and run.json with status 'interrupted'."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_writes_partial_outputs(write_config, workdir: Path, sig, code) -> None:
    path = write_config(tiny_config(optim={"steps": 1_000_000}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fvis", "render", str(path), "--quiet"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(8)  # imports, model build, then well into the loop
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "cfg: interrupted" in stderr
    run_dir = workdir / "outputs/cfg"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert 0 < run["steps"] < 1_000_000
    assert run["snapshots"][-1]["step"] == run["steps"] >= run["history"]["steps"][-1]
    assert (run_dir / "grid.png").stat().st_size > 0 and (run_dir / "image_0.png").exists()
    assert not list(run_dir.glob(".*.tmp"))
