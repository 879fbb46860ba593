"""The command line: help for every command and option, schema, layers, python -m fvis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from conftest import tiny_config
from fvis.cli import app
from fvis.config import Config

COMMANDS = [
    "render",
    "attribute",
    "validate",
    "schema",
    "layers",
    "compare",
    "zoo list",
    "zoo train",
    "examples",
    "stats",
    "probe train",
    "groups",
    "grid",
    "atlas",
    "microscope",
    "serve",
]


def test_top_level_help_lists_every_command(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("render", "validate", "schema", "layers", "compare", "zoo"):
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(cli, command: str) -> None:
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0
    click_cmd = typer.main.get_command(app)
    for part in command.split():
        click_cmd = click_cmd.commands[part]  # type: ignore[attr-defined]
    for param in click_cmd.params:
        if param.param_type_name == "option":
            assert param.help, f"{command} {param.opts} has no help"
            assert param.opts[0] in result.stdout
    assert click_cmd.help


def _descriptions_missing(schema: dict) -> list[str]:
    missing = []
    for name, definition in {"Config": schema, **schema.get("$defs", {})}.items():
        for field, prop in definition.get("properties", {}).items():
            if field in ("kind", "source"):
                continue
            if "description" not in prop:
                missing.append(f"{name}.{field}")
    return missing


def test_schema_is_json_and_every_field_is_described(cli) -> None:
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == json.loads(json.dumps(Config.model_json_schema()))
    assert set(schema["properties"]) >= {"model", "hooks", "objective", "param", "optim"}
    assert _descriptions_missing(schema) == []


def test_layers_of_a_config(cli, write_config) -> None:
    path = write_config(tiny_config())
    result = cli("layers", path, "--size", "24")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "Conv2d" in line]
    assert len(lines) == 2 and "[1, 16, 12, 12]" in lines[1]


def test_layers_bad_target(cli) -> None:
    result = cli("layers", "nothing")
    assert result.exit_code == 2
    assert "expected a config file, zoo:NAME or torchvision:NAME" in result.stderr


def test_python_dash_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fvis", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "render" in done.stdout


def test_committed_schema_is_current() -> None:
    """fvis.schema.json (what editors read) matches the code: regenerate with `make schema`."""
    committed = json.loads((Path(__file__).parent.parent / "fvis.schema.json").read_text())
    assert committed == Config.model_json_schema()


def test_zoo_list(cli) -> None:
    result = cli("zoo", "list")
    assert result.exit_code == 0
    assert "conv3" in result.stdout and "9 blue" in result.stdout


def test_a_config_that_runs_user_code_says_so_where_it_does(cli, write_config) -> None:
    path = write_config(tiny_config())
    note = (
        f"{path}:4: model.factory: note: runs your code (tinynets:convnet); use only code you trust"
    )
    for command in (("validate", path, "--deep"), ("layers", path)):
        result = cli(*command)
        assert result.exit_code == 0 and note in result.stderr.splitlines(), result.stderr


def test_a_build_that_fails_says_only_why(cli, write_config) -> None:
    plugin = {"kind": "plugin", "factory": "tinynets:not_a_module", "layer": "conv2"}
    path = write_config(tiny_config(objective=plugin))
    result = cli("validate", path, "--deep")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "objective: tinynets:not_a_module refused its arguments" in result.stderr


def test_a_zoo_config_runs_no_user_code_and_says_nothing(cli, write_config) -> None:
    path = write_config(tiny_config(model={"source": "zoo", "name": "shapes"}))
    result = cli("layers", path)
    assert result.exit_code == 0 and "note:" not in result.stderr
