"""`fvis render a.yaml b.yaml ...`: several configs in turn in one process, the worst exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml

import fvis.cli
from conftest import tiny_config


def fast(**overrides: object) -> dict:
    return tiny_config(optim={"steps": 3, "thresholds": [3]}, **overrides)


BAD = "model: {source: factory, factory: 'tinynets:convnet'}\nobjective: {kind: chanel}\n"
# channel 5 of the tiny net's second ReLU is dead on every image: 1 / 0 is infinite (exit 1)
NAN = tiny_config(
    hooks={"relu2": "3"},
    objective="channel(relu2, 8) + 1e-3 * channel(relu2, 5) ^ -1",
    optim={"steps": 4, "thresholds": [2]},
)


def test_two_configs_render_into_their_own_folders(cli, write_config, workdir: Path) -> None:
    a, b = write_config(fast(), "a.yaml"), write_config(fast(seed=1), "b.yaml")
    result = cli("render", a, b, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["outputs/a/grid.png", "outputs/b/grid.png"]
    for name in ("a", "b"):
        assert (workdir / "outputs" / name / "run.json").is_file()


def test_a_bad_config_between_two_good_ones(cli, write_config, workdir: Path) -> None:
    a, c = write_config(fast(), "a.yaml"), write_config(fast(), "c.yaml")
    bad = write_config(BAD, "bad.yaml")
    result = cli("render", a, bad, c, "--quiet")
    assert result.exit_code == 2
    assert (workdir / "outputs/a/grid.png").is_file() and (workdir / "outputs/c/grid.png").is_file()
    assert not (workdir / "outputs/bad").exists()
    assert f"{bad}:2: objective" in result.stderr  # located in its file, as with one config
    assert result.stdout.splitlines() == ["outputs/a/grid.png", "outputs/c/grid.png"]


def test_out_holds_one_folder_per_config(cli, write_config, workdir: Path) -> None:
    a, b = write_config(fast(), "a.yaml"), write_config(fast(name="named"), "b.yaml")
    result = cli("render", a, b, "--out", "runs", "--quiet")
    assert result.exit_code == 0, result.output
    assert (workdir / "runs/a/grid.png").is_file() and (workdir / "runs/named/grid.png").is_file()
    assert not (workdir / "outputs").exists()
    # one config: --out is the run folder itself, as before
    assert cli("render", a, "--out", "one", "--quiet").exit_code == 0
    assert (workdir / "one/grid.png").is_file()


def test_the_exit_code_is_the_worst(cli, write_config, workdir: Path) -> None:
    good, nan = write_config(fast(), "good.yaml"), write_config(NAN, "nan.yaml")
    bad = write_config(BAD, "bad.yaml")
    failed = cli("render", nan, good, "--quiet", "--force")
    assert failed.exit_code == 1
    assert "nan: the objective became NaN or infinite" in failed.stderr
    assert (workdir / "outputs/good/grid.png").is_file()
    assert cli("render", bad, nan, good, "--quiet", "--force").exit_code == 2
    assert cli("render", good, nan, bad, "--quiet", "--force").exit_code == 2
    assert cli("render", good, good.parent / "nothing.yaml", "--force", "-q").exit_code == 2


def test_two_configs_never_share_a_run_folder(cli, write_config, workdir: Path) -> None:
    a = write_config(fast(name="same"), "a.yaml")
    b = write_config(fast(name="same", seed=1), "b.yaml")
    result = cli("render", a, b, "--quiet", "--force")
    assert result.exit_code == 2
    assert f"{b}: run folder outputs/same is also {a}'s in this command" in result.stderr
    assert result.stdout.splitlines() == ["outputs/same/grid.png"]
    assert '"seed": 0' in (workdir / "outputs/same/run.json").read_text()


def test_an_interrupt_stops_the_whole_command(
    cli, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = []

    def interrupted(config: Path, *args: object) -> None:
        rendered.append(config.name)
        raise typer.Exit(130)  # what a render stopped by Ctrl-C exits with, after saving

    monkeypatch.setattr(fvis.cli.render_commands, "_render_one", interrupted)
    paths = [write_config(fast(), f"{name}.yaml") for name in "abc"]
    assert cli("render", *paths).exit_code == 130
    assert rendered == ["a.yaml"]


def test_resume_takes_one_run(cli, write_config) -> None:
    a, b = write_config(fast(), "a.yaml"), write_config(fast(), "b.yaml")
    result = cli("render", a, b, "--resume", "outputs/a")
    assert result.exit_code == 2
    assert "--resume continues one run" in result.stderr


def test_each_config_imports_its_own_folder_s_module(cli, workdir: Path) -> None:
    """Two folders with a `net.py` each: the second config must not get the first's module."""
    for folder, layer in (("a", "conv"), ("b", "special")):
        (workdir / folder).mkdir()
        (workdir / folder / "net.py").write_text(
            "from collections import OrderedDict\nfrom torch import nn\n\n\n"
            "def build():\n"
            f"    return nn.Sequential(OrderedDict({layer}=nn.Conv2d(3, 4, 3), "
            "pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))\n"
        )
        objective = {"kind": "channel", "layer": layer, "channel": 1}
        config = fast(model={"source": "factory", "factory": "net:build"}, hooks={})
        config.update(objective=objective, name=folder)
        (workdir / folder / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = cli("render", "a/cfg.yaml", "b/cfg.yaml", "--quiet")
    assert result.exit_code == 0, result.output
    assert (workdir / "outputs/b/grid.png").is_file()
