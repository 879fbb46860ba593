"""What the commands print: names and shapes whole in a terminal and a pipe, help that fits."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer.main
from rich.console import Console
from rich.table import Table

import fvis.cli
import fvis.display
from conftest import tiny_config
from fvis.cli import app
from fvis.config import objective_kinds
from fvis.display import show

# A model with names as long as a vision transformer's (vit_b_16's longest has 55 characters).
DEEP_NETS = textwrap.dedent(
    """
    from collections import OrderedDict

    from torch import nn


    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attention_projection = nn.Conv2d(4, 4, 1)
            self.feed_forward_network = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())

        def forward(self, x):
            return self.feed_forward_network(self.self_attention_projection(x))


    def deep() -> nn.Module:
        layers = nn.Sequential(
            OrderedDict((f"encoder_layer_with_a_long_name_{i}", Block()) for i in range(3))
        )
        encoder = nn.Sequential(OrderedDict(layers=layers))
        return nn.Sequential(
            OrderedDict(
                stem=nn.Conv2d(3, 4, 3, padding=1),
                encoder_stack=encoder,
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                head=nn.Linear(4, 2),
            )
        )
    """
)


@pytest.fixture
def deep_config(write_config, workdir: Path) -> tuple[Path, list[str]]:
    """A config of the deep-named model, and its layer names."""
    (workdir / "deepnets.py").write_text(DEEP_NETS)
    space: dict = {}
    exec(DEEP_NETS, space)
    names = [name for name, _ in space["deep"]().named_modules() if name]
    assert max(map(len, names)) > 70
    model = {"source": "factory", "factory": "deepnets:deep"}
    objective = {"kind": "channel", "layer": "stem", "channel": 0}
    return write_config(tiny_config(model=model, hooks={}, objective=objective)), names


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Make fvis's stdout console a terminal of a given width; returns what it printed."""

    def make(width: int) -> io.StringIO:
        text = io.StringIO()
        console = Console(file=text, force_terminal=True, width=width, color_system=None)
        monkeypatch.setattr(fvis.display, "out", console)
        return text

    return make


def test_layers_piped_prints_one_tab_separated_line_per_layer(cli, deep_config) -> None:
    path, names = deep_config
    result = cli("layers", path, "--size", "16")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == [*names, "output"]
    assert all(len(row) == 3 for row in rows)
    assert rows[1] == ["encoder_stack", "Sequential", "[1, 4, 16, 16]"]


def test_layers_in_an_80_column_terminal_keeps_names_whole(cli, deep_config, terminal) -> None:
    path, names = deep_config
    printed = terminal(80)
    result = cli("layers", path, "--size", "16")
    assert result.exit_code == 0, result.output
    # too narrow for a table of these names: plain lines, as in a pipe
    assert printed.getvalue() == ""
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [*names, "output"]

    wide = terminal(140)
    assert cli("layers", path, "--size", "16").exit_code == 0
    table = wide.getvalue()
    assert "…" not in table and max(map(len, table.splitlines())) <= 140
    for name in names:
        assert f"│ {name} " in table


def test_layers_table_of_a_small_model_in_an_80_column_terminal(
    cli, write_config, terminal
) -> None:
    printed = terminal(80)
    assert cli("layers", write_config(tiny_config()), "--size", "24").exit_code == 0
    table = printed.getvalue()
    assert "│ 2 " in table and "[1, 16, 12, 12]" in table and "…" not in table
    assert max(map(len, table.splitlines())) <= 80


def test_layers_subprocess_with_80_columns_and_a_pipe(deep_config, workdir: Path) -> None:
    path, names = deep_config
    done = subprocess.run(
        [sys.executable, "-m", "fvis", "layers", str(path), "--size", "16"],
        capture_output=True,
        text=True,
        check=False,
        cwd=workdir,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == [*names, "output"]


def test_show_wraps_descriptions_between_words_and_keeps_names_whole(terminal) -> None:
    name = "encoder.layers.encoder_layer_11.self_attention.out_proj"
    table = Table(title="a table")
    table.add_column("name")
    table.add_column("about")
    table.add_row(name, "a long description " * 4 + "with a word like NonDynamically")
    printed = terminal(80)
    show(table, wrap=(1,))
    lines = printed.getvalue().splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in printed.getvalue()
    assert f"│ {name} │" in lines[4] and "NonDynamically" in printed.getvalue()

    table.add_row("x" * 70, "short")  # names too long for a table at 80 columns
    printed = terminal(80)
    show(table, wrap=(1,))
    assert printed.getvalue() == ""  # plain lines instead, on stdout


def test_show_piped_prints_a_title_line_then_tab_separated_rows(capsys) -> None:
    table = Table(title="runs")
    table.add_column("file")
    table.add_column("verdict")
    table.add_row("a/" * 50 + "image_0.png", "ok")
    show(table)
    assert capsys.readouterr().out == "# runs\n" + "a/" * 50 + "image_0.png\tok\n"


def test_objectives_and_zoo_list_piped_print_whole_lines(cli) -> None:
    listed = cli("objectives")
    assert listed.exit_code == 0 and "…" not in listed.stdout
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    for kind, node in objective_kinds().items():
        assert len(rows[kind]) == 4
        if node.positional:
            assert rows[kind][3] == f"{kind}({', '.join(node.positional)})"

    from fvis import zoo

    shown = cli("zoo", "list")
    assert shown.exit_code == 0 and "…" not in shown.stdout
    for model in zoo.MODELS.values():
        assert f"# {model.name}: {model.description}" in shown.stdout.splitlines()
        for layer, about in model.layers:
            assert f"{layer}\t{about}" in shown.stdout.splitlines()


def test_compare_piped_prints_long_paths_whole(cli, write_config, workdir: Path) -> None:
    path = write_config(tiny_config(optim={"steps": 2, "thresholds": [2]}))
    run = workdir / "runs" / ("a-rather-long-run-folder-name-" * 3)
    assert cli("render", path, "--out", run, "--quiet").exit_code == 0
    result = cli("compare", workdir / "runs", workdir / "runs")
    assert result.exit_code == 0, result.output
    assert f"{run.name}/image_0.png\t0.0000\t1.0000\tidentical" in result.stdout.splitlines()
    assert "…" not in result.stdout


GROUPS = [[], ["zoo"]]


@pytest.mark.parametrize("group", GROUPS, ids=["fvis", "fvis zoo"])
def test_help_summaries_are_whole_sentences_at_80_columns(
    cli, group: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fvis --help` shows each command's first paragraph whole: one sentence that fits."""
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(*group, "--help")
    assert result.exit_code == 0
    click_group = typer.main.get_command(app)
    for part in group:
        click_group = click_group.commands[part]  # type: ignore[attr-defined]
    listing = result.stdout.split("Commands:\n")[1].splitlines()
    commands = click_group.commands  # type: ignore[attr-defined]
    assert len(listing) == len(commands)
    for line in listing:
        assert len(line) <= 80
        name, summary = line.split(maxsplit=1)
        first = " ".join((commands[name].help or "").partition("\n\n")[0].split())
        assert summary == first, f"{name}: the summary is cut: {summary!r}"
        assert summary.endswith(".") and not summary.endswith("...")
        assert summary.count(". ") == 0, f"{name}: more than one sentence: {summary!r}"


def _all_commands() -> list[list[str]]:
    click_app = typer.main.get_command(app)
    found = []
    for name, command in click_app.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", {})
        found += [[name, sub] for sub in subcommands] or [[name]]
    return found


@pytest.mark.parametrize("command", _all_commands(), ids=" ".join)
def test_every_help_fits_80_columns(cli, command: list[str], monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert max(map(len, result.stdout.splitlines())) <= 80
    assert "..." not in result.stdout.split("Options:")[0].replace("[CONFIG]...", "")
