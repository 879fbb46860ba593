"""Render quality on the built-in model, measured by the network-free class statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fvis.build import build_plan
from fvis.config import load_config
from fvis.render import Result, render
from fvis.zoo.data import CLASSES
from fvis.zoo.quality import high_frequency_share, recover_class

CONFIGS = Path(__file__).parent.parent / "configs"


def _render(name: str, *overrides: str) -> Result:
    loaded = load_config(CONFIGS / name, list(overrides))
    return render(build_plan(loaded.config, CONFIGS))


@pytest.fixture(scope="module")
def classes_fft() -> Result:
    return _render("classes.yaml")


@pytest.fixture(scope="module")
def classes_pixel() -> Result:
    return _render("classes.yaml", "param.kind=pixel")


def test_every_class_render_shows_its_class(classes_fft: Result, capsys) -> None:
    images = classes_fft.final.images
    rows = []
    for i, name in enumerate(CLASSES):
        found = recover_class(images[i])
        rows.append((name, found, high_frequency_share(images[i]), classes_fft.final.objective[i]))
    with capsys.disabled():
        print("\nclass          recovered      hf-share  logit")
        for name, found, hf, logit in rows:
            print(f"{name:<14} {found:<14} {hf:8.3f}  {logit:6.2f}")
    recovered = sum(name == found for name, found, _, _ in rows)
    assert recovered >= 9, rows


def test_fft_renders_are_smoother_than_pixel_renders(
    classes_fft: Result, classes_pixel: Result, capsys
) -> None:
    fft = [high_frequency_share(img) for img in classes_fft.final.images]
    pixel = [high_frequency_share(img) for img in classes_pixel.final.images]
    mean_fft, mean_pixel = sum(fft) / len(fft), sum(pixel) / len(pixel)
    with capsys.disabled():
        print(f"\nhigh-frequency share: fft {mean_fft:.3f}, pixel {mean_pixel:.3f}")
    assert mean_fft < 0.8 * mean_pixel


def test_channel_objective_rises_well_above_its_initial_value(cli, tmp_path: Path) -> None:
    result = cli("render", CONFIGS / "channels.yaml", "--quiet", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run/run.json").read_text())
    before, after = run["initial"]["objective"], run["final"]["objective"]
    ratios = sorted(a / max(b, 1e-3) for a, b in zip(after, before, strict=True))
    assert ratios[0] > 2 and ratios[len(ratios) // 2] > 3, ratios


def test_renders_of_one_class_differ_across_items_and_seeds() -> None:
    base = _render("quickstart.yaml", "optim.steps=64").final.images
    other = _render("quickstart.yaml", "optim.steps=64", "seed=1").final.images
    items = [(base[i] - base[j]).abs().mean().item() for i, j in ((0, 1), (0, 2), (1, 2))]
    assert min(items) > 0.05, items
    assert (base - other).abs().mean().item() > 0.05


RENDER_CONFIGS = sorted(
    [*CONFIGS.glob("*.yaml"), *CONFIGS.glob("objectives/*.yaml"), *CONFIGS.glob("data/*.yaml")]
)


@pytest.mark.parametrize("path", RENDER_CONFIGS, ids=lambda p: p.name)
def test_every_example_config_renders(cli, path: Path, tmp_path: Path) -> None:
    result = cli(
        "render",
        path,
        "--quiet",
        "--set",
        "optim.steps=3",
        "--set",
        "optim.thresholds=null",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    image = Image.open(tmp_path / "run/image_0.png")
    assert image.size[0] >= 8
    assert not torch.isnan(
        torch.tensor(json.loads((tmp_path / "run/run.json").read_text())["final"]["objective"])
    ).any()
