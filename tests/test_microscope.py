"""`fvis microscope`: a whole model's channels rendered (resumably), with their dataset
examples, groups and atlases, gathered into a manifest and a site."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fvis import microscope
from fvis.config import ZooModelSpec
from fvis.hooks import Capture, select
from fvis.io import read_image
from fvis.models import build_network
from fvis.zoo import SHAPES

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
FAST = ["--set", "optim.steps=6", "--quiet"]


def build(cli: Callable[..., object], out: Path, *args: object) -> object:
    return cli("microscope", QUICKSTART, "--out", out, *args, *FAST)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conv2 and the logits of the built-in model, two seeds, examples over 64 images, the
    groups and atlas of conv2: one build shared by the tests that only read it."""
    from typer.testing import CliRunner

    from fvis.cli import app

    out = tmp_path_factory.mktemp("microscope") / "site"
    args = ["microscope", str(QUICKSTART), "--layers", "conv2,logits", "--seeds", "2"]
    args += ["--data", "zoo:shapes:64", "--groups", "2", "--atlas", "3", "--attribution"]
    args += ["--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "index.html")]
    return out


def manifest(folder: Path) -> dict:
    return json.loads((folder / microscope.MANIFEST).read_text())


def test_every_channel_of_every_layer_is_listed_with_its_renders(site: Path) -> None:
    found = manifest(site)
    assert found["format"] == microscope.FORMAT and found["seeds"] == [0, 1]
    assert [layer["name"] for layer in found["layers"]] == ["conv2", "logits"]
    conv2, logits = found["layers"]
    assert conv2["shape"] == [32, 32, 32] and conv2["type"] == "ConvBlock"
    assert logits["shape"] == [10] and logits["type"] == "Linear"
    assert [u["channel"] for u in conv2["units"]] == list(range(32))
    assert [u["name"] for u in logits["units"]] == list(SHAPES.classes)
    assert all(u["name"] is None for u in conv2["units"])
    sweep = json.loads((site / "conv2" / "renders" / "sweep.json").read_text())["items"]
    for unit in conv2["units"]:
        assert len(unit["renders"]) == 2 and all((site / r).is_file() for r in unit["renders"])
        for seed, value in enumerate(unit["objective"]):
            item = sweep[f"objective.channel={unit['channel']},seed={seed}"]
            assert value == pytest.approx(item["objective"], abs=1e-4)
    assert found["model"] == {
        "description": "zoo:shapes",
        "parameters": sum(p.numel() for p in SHAPES.build().parameters()),
        "input": [3, 64, 64],
    }
    assert found["steps"] == 6 and found["data"] == "zoo:shapes:64"
    assert (site / found["config"]).is_file()


def test_diversity_is_the_mean_one_minus_ssim_of_the_seeds(site: Path) -> None:
    from fvis.compare import ssim

    unit = manifest(site)["layers"][0]["units"][3]
    a, b = (read_image(site / r) for r in unit["renders"])
    assert unit["diversity"] == pytest.approx(1 - ssim(a, b), abs=1e-4)
    assert 0 < unit["diversity"] <= 1  # two seeds start from different noise
    assert microscope.diversity([site / unit["renders"][0]]) is None
    assert microscope.diversity([site / unit["renders"][0]] * 2) == 0


def test_each_channel_has_its_curve_and_examples(site: Path) -> None:
    found = manifest(site)
    for layer in found["layers"]:
        for unit in layer["units"]:
            curve = unit["curve"]
            assert curve["steps"][-1] == 6 and len(curve["objective"]) == 2
            assert all(len(values) == len(curve["steps"]) for values in curve["objective"])
            assert (site / unit["examples"]).is_file()
            assert len(unit["top"]) == microscope.TOP_NAMED
            values = [entry["value"] for entry in unit["top"]]
            assert values == sorted(values, reverse=True)
    for unit in found["layers"][0]["units"]:  # three top images above, their maps below
        strip = read_image(site / unit["attribution"])
        assert strip.shape == (3, 2 * 64, microscope.ATTRIBUTED * 64)
    conv2 = found["layers"][0]
    assert conv2["groups"] == "conv2/groups/groups.png" and (site / conv2["groups"]).is_file()
    assert conv2["atlas"] == "conv2/atlas/atlas.png" and (site / conv2["atlas"]).is_file()
    assert found["layers"][1]["groups"] is None  # the logits have no positions


def test_the_attribution_is_of_the_units_mean_activation() -> None:
    from captum.attr import IntegratedGradients

    network = build_network(ZooModelSpec(), ROOT)
    mean = microscope._unit_mean(network, "conv3", 12)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), Capture(network.model, ["conv3"], network) as capture:
        expected = select(capture.run(images), "conv3")[:, 12].mean((1, 2))
        black = select(capture.run(torch.zeros_like(images)), "conv3")[:, 12].mean((1, 2))
    assert torch.allclose(mean(images), expected)
    # integrated gradients' completeness: the maps sum to f(x) - f(black)
    maps = IntegratedGradients(mean).attribute(images, n_steps=64)
    assert torch.allclose(maps.sum((1, 2, 3)), expected - black, rtol=0.05, atol=1e-3)


def test_a_channels_command_renders_its_picture_again(
    site: Path, tmp_path: Path, cli: Callable[..., object]
) -> None:
    unit = manifest(site)["layers"][0]["units"][5]
    words = shlex.split(unit["command"])
    assert words[:2] == ["fvis", "render"]
    result = cli(*words[1:], "--out", tmp_path / "again", "--quiet")
    assert result.exit_code == 0, result.output
    again = read_image(tmp_path / "again" / "image_0.png")
    first = read_image(site / unit["renders"][0])
    # the sweep rendered it in a batch of channels: the same up to the rounding of batched
    # kernels (see fvis.sweep), far nearer than another seed's render
    other = read_image(site / unit["renders"][1])
    assert (again - first).abs().mean() < 0.1 * (other - first).abs().mean()


def test_the_site_pages_are_written(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "conv2" / "index.html").is_file()
    assert (site / "logits" / "0009.html").is_file()


def test_a_rebuild_renders_nothing_new_and_adding_a_layer_keeps_the_rest(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    out = tmp_path / "site"
    assert build(cli, out, "--layers", "logits").exit_code == 0
    renders = out / "logits" / "renders"
    before = {p.name: p.stat().st_mtime_ns for p in renders.iterdir()}
    built = manifest(out)["seconds"]
    again = cli(
        "microscope", QUICKSTART, "--out", out, "--layers", "logits", "--set", "optim.steps=6"
    )
    assert again.exit_code == 0, again.output
    assert "items to render" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in renders.iterdir()} == before
    spent = manifest(out)["seconds"]  # every run's time, the build's kept
    assert spent.keys() == built.keys() and spent["renders"] >= built["renders"] > 0
    added = build(cli, out, "--layers", "conv1")
    assert added.exit_code == 0, added.output
    assert [layer["name"] for layer in manifest(out)["layers"]] == ["logits", "conv1"]
    assert {p.name: p.stat().st_mtime_ns for p in renders.iterdir()} == before
    assert (out / "conv1" / "0015.html").is_file()


def test_an_interrupted_first_build_goes_on(
    tmp_path: Path, cli: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "site"
    first = microscope.render_layer

    def interrupted(settings, layer, folder, log, backend):  # type: ignore[no-untyped-def]
        if layer.name == "logits":
            raise KeyboardInterrupt
        return first(settings, layer, folder, log, backend)

    monkeypatch.setattr(microscope, "render_layer", interrupted)
    stopped = build(cli, out, "--layers", "conv1,logits")
    assert stopped.exit_code == 130 and "interrupted" in stopped.stderr
    made = (out / "conv1" / "renders" / "objective.channel=3,seed=0.png").stat().st_mtime_ns
    monkeypatch.setattr(microscope, "render_layer", first)
    again = build(cli, out, "--layers", "conv1,logits")
    assert again.exit_code == 0, again.output
    assert [layer["name"] for layer in manifest(out)["layers"]] == ["conv1", "logits"]
    assert (out / "conv1" / "renders" / "objective.channel=3,seed=0.png").stat().st_mtime_ns == made


def test_another_config_is_refused_unless_forced(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    out = tmp_path / "site"
    assert build(cli, out, "--layers", "logits").exit_code == 0
    first = read_image(out / "logits" / "renders" / "objective.channel=0,seed=0.png")
    other = cli("microscope", QUICKSTART, "--out", out, "--set", "optim.steps=3", "-q")
    assert other.exit_code == 2
    assert other.stderr.strip() == (
        f"{out}: a microscope of another config (its optim differ); pass --force to render it "
        "again, or choose another --out"
    )
    forced = cli("microscope", QUICKSTART, "--out", out, "--set", "optim.steps=3", "-q", "-f")
    assert forced.exit_code == 0, forced.output
    assert manifest(out)["steps"] == 3
    again = read_image(out / "logits" / "renders" / "objective.channel=0,seed=0.png")
    assert not torch.equal(first, again)


def test_forced_again_the_examples_groups_and_atlas_are_made_again(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    out = tmp_path / "site"
    data = ["--layers", "conv1", "--data", "zoo:shapes:24", "--workers", "0", "--attribution"]
    data += ["--groups", "2", "--atlas", "2", "-q"]
    first = cli("microscope", QUICKSTART, "--out", out, *data, "--set", "optim.steps=3")
    assert first.exit_code == 0, first.output
    indices = [out / "examples" / "examples.json", out / "conv1" / "groups" / "groups.json"]
    indices.append(out / "conv1" / "atlas" / "atlas.json")
    made = {p: p.stat().st_mtime_ns for p in indices}
    again = cli("microscope", QUICKSTART, "--out", out, *data, "--set", "optim.steps=2", "-f")
    assert again.exit_code == 0, again.output
    assert all(p.stat().st_mtime_ns > when for p, when in made.items())
    found = manifest(out)
    assert found["steps"] == 2 and found["identity"]["optim"]["steps"] == 2
    strips = list((out / "conv1" / "attribution").glob("*.png"))
    assert len(strips) == 16 and all(
        (out / u["attribution"]).is_file() for u in found["layers"][0]["units"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--groups", "2"],
            "--groups, --atlas and --attribution read a dataset: pass --data SOURCE as well",
        ),
        (["--layers", "conv9"], "--layers conv9: unknown layer"),
        (["--seeds", "0"], "Invalid value for '--seeds'"),
    ],
)
def test_microscope_errors_are_one_line(
    tmp_path: Path, cli: Callable[..., object], args: list[str], message: str
) -> None:
    result = build(cli, tmp_path / "site", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_of_something_else_is_refused(tmp_path: Path, cli: Callable[..., object]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = build(cli, out, "--layers", "logits")
    assert result.exit_code == 2
    assert f"{out}: not empty and not a microscope folder (no microscope.json)" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_layer_folders_are_safe_and_unique() -> None:
    taken = set(microscope.RESERVED)
    assert microscope._slug("features.3", taken) == "features.3"
    assert microscope._slug("a/../b", taken) == "a_.._b"
    assert microscope._slug("examples", taken) == "examples-2"
    assert microscope._slug("..", taken) == "layer"


def test_the_built_site_opens_cleanly_in_a_browser(site: Path) -> None:
    from test_site_browser import check_site, start_driver

    driver = start_driver()  # skips without a browser, unless FVIS_BROWSER_TESTS=required
    try:
        check_site(driver, site)
    finally:
        driver.quit()
