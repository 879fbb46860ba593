"""fvis's own regression renders: each config in tests/regression/configs renders like its golden.

The goldens were rendered on CPU (every config pins `device: cpu`), most in float64
(`optim.float64`), so that they hold on any processor: PyTorch, oneDNN and MKL pick their kernels
per processor, and Adam turns a last-bit float32 difference into a visible one. The checks run
here with this CPU's own code paths and in subprocesses under each other path
(`CPU_CODE_PATHS`). After an intended change to what fvis renders, refresh them with
`make regress-update`, check them with `make regress-portable` and commit the new files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import fvis.zoo
from fvis.writers import LABEL_HEIGHT, LABEL_WIDTH

REGRESSION = Path(__file__).parent / "regression"
CONFIGS = REGRESSION / "configs"
GOLDENS = REGRESSION / "goldens"
NAMES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
MAX_GOLDEN_BYTES = 300_000

# The Makefile's CPU_CODE_PATHS: environments under which PyTorch's kernels (ATen), oneDNN and MKL
# take the code paths another processor would (generic kernels, MKL's compatible and AVX2 paths).
CPU_CODE_PATHS = {
    "generic-kernels": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-avx2": {"MKL_CBWR": "AVX2"},
}


def _render(cli, name: str, out: Path, *overrides: str) -> Path:
    sets = [arg for value in overrides for arg in ("--set", value)]
    result = cli("render", CONFIGS / f"{name}.yaml", "--out", out, "--quiet", *sets)
    assert result.exit_code == 0, result.output
    return out


def test_every_config_has_a_small_golden() -> None:
    assert len(NAMES) >= 4
    assert sorted(p.name for p in GOLDENS.iterdir() if p.is_dir()) == NAMES
    files = [p for p in GOLDENS.rglob("*") if p.is_file()]
    assert {p.name for p in files} <= {"run.json", *(f"image_{i}.png" for i in range(8))}
    assert sum(p.stat().st_size for p in files) < MAX_GOLDEN_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_render_matches_its_golden(cli, tmp_path: Path, name: str) -> None:
    run = _render(cli, name, tmp_path / name)
    result = cli("compare", run, GOLDENS / name)
    assert result.exit_code == 0, result.stdout
    assert "ok: " in result.stdout
    assert not (run / "diff").exists()


@pytest.mark.parametrize("path", sorted(CPU_CODE_PATHS))
def test_goldens_hold_on_every_cpu_code_path(cli, tmp_path: Path, path: str) -> None:
    """What another processor renders: the same goldens pass with the default thresholds."""
    env = {**os.environ, **CPU_CODE_PATHS[path]}
    done = subprocess.run(
        # one process (the variables must be set before torch loads): DIR/<name> per config
        [
            sys.executable,
            "-m",
            "fvis",
            "render",
            *sorted(CONFIGS.glob("*.yaml")),
            "--out",
            tmp_path,
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = cli("compare", tmp_path, GOLDENS)
    assert result.exit_code == 0, result.stdout
    assert f"ok: {tmp_path} matches" in result.stdout


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("class-logit", ["optim.lr=0.055"]),  # learning rate +10 %
        ("regularized", ["objective.terms.1.weight=-0.022"]),  # one term's weight +10 %
        ("conv3-channel", ["objective.channel=6"]),  # another channel
        ("conv2-neuron-pixel", ["optim.lr=0.055"]),  # the float32 golden is as sensitive
    ],
)
def test_a_changed_config_fails(cli, tmp_path: Path, name: str, overrides: list[str]) -> None:
    """The portable goldens still catch what a regression check is for."""
    run = _render(cli, name, tmp_path / name, *overrides)
    result = cli("compare", run, GOLDENS / name)
    assert result.exit_code == 1, result.stdout
    assert "regression: " in result.stdout


def test_changed_model_weights_fail(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zoo model with its conv2 weights 1 % larger no longer renders like the golden."""
    load = fvis.zoo.load

    def scaled(name: str) -> torch.nn.Module:
        model = load(name)
        with torch.no_grad():
            model.conv2.conv.weight.mul_(1.01)
        return model

    monkeypatch.setattr(fvis.zoo, "load", scaled)
    run = _render(cli, "class-logit", tmp_path / "class-logit")
    result = cli("compare", run, GOLDENS / "class-logit")
    assert result.exit_code == 1, result.stdout
    assert "regression: 1 of 1 images differ" in result.stdout


def test_changed_default_fails_with_a_diff_image(cli, tmp_path: Path) -> None:
    """What `make regress` shows when a default that shapes renders changes (here param.decay)."""
    run = _render(cli, "class-logit", tmp_path / "class-logit", "param.decay=2")
    result = cli("compare", run, GOLDENS / "class-logit")
    assert result.exit_code == 1, result.stdout
    assert "FAIL: MAD, SSIM" in result.stdout
    assert "regression: 1 of 1 images, 2 of 2 values differ" in result.stdout
    with Image.open(run / "diff" / "image_0.png") as diff:
        # golden | run | difference, each 64 px image upscaled to 128
        assert diff.size == (LABEL_WIDTH + 3 * (128 + 2), LABEL_HEIGHT + 128 + 2)


def test_compare_passes_on_the_same_run_and_fails_on_another_seed(cli, tmp_path: Path) -> None:
    first = _render(cli, "class-logit", tmp_path / "seed0", "optim.steps=16")
    same = cli("compare", first, first, "--exact")
    assert same.exit_code == 0, same.stdout
    assert "ok: " in same.stdout and "identical" in same.stdout
    other = _render(cli, "class-logit", tmp_path / "seed1", "optim.steps=16", "seed=1")
    result = cli("compare", other, first)
    assert result.exit_code == 1, result.stdout
    assert "regression: 2 of 2 images, 2 of 2 values differ" in result.stdout  # grid.png too
    assert {p.name for p in (other / "diff").iterdir()} == {"grid.png", "image_0.png"}
