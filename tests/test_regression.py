"""fvis's own regression renders: each config in tests/regression/configs renders like its golden.

The goldens were rendered on CPU (every config pins `device: cpu`); on the platform and library
versions recorded in their run.json a render is byte-identical, so the default thresholds of
`fvis compare` hold with room to spare. After an intended change to what fvis renders, refresh
them with `make regress-update` and commit the new files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fvis.writers import LABEL_HEIGHT, LABEL_WIDTH

REGRESSION = Path(__file__).parent / "regression"
CONFIGS = REGRESSION / "configs"
GOLDENS = REGRESSION / "goldens"
NAMES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
MAX_GOLDEN_BYTES = 300_000


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
