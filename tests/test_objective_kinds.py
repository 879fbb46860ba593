"""An objective kind is declared once: a schema class is all it takes to add one, and users add
their own through `kind: plugin`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import pytest
from pydantic import Field

from conftest import tiny_config
from fvis.config import HOLDERS, KINDS, Config, LayerName, ObjectiveNode


@pytest.fixture
def toy_kind() -> Iterator[type[ObjectiveNode]]:
    """A kind added in one place, the way a built-in one is; removed again afterwards."""

    class PeakObjective(ObjectiveNode):
        """Mean activation of one channel (a toy kind: a new name for `channel`)."""

        kind: Literal["peak"]
        positional = ("layer", "channel")
        builds = "fvis.objectives.activation:Channel"
        layer: LayerName
        channel: int = Field(ge=0, description="Channel index.")

    yield PeakObjective
    del KINDS["peak"]
    for holder in HOLDERS:
        holder.model_rebuild(force=True)


def test_a_kind_declared_once_validates_parses_renders_and_is_listed(
    toy_kind, cli, write_config, workdir
) -> None:
    config = Config.model_validate(
        tiny_config(objective={"kind": "peak", "layer": "conv2", "channel": 3})
    )
    assert isinstance(config.objective, toy_kind)
    parsed = Config.model_validate(tiny_config(objective="peak(conv2, 3) - 0.5 * peak(conv2, 4)"))
    assert [type(t) for t in parsed.objective.terms] == [toy_kind, toy_kind]
    assert parsed.objective.terms[1].weight == -0.5

    path = write_config(tiny_config(objective="peak(conv2, 3)", optim={"steps": 3}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 0, result.output
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    assert "channel(2, 3)" in run["final"]["terms"]

    listed = cli("objectives")
    assert "\npeak\t" in listed.stdout and "peak(layer," in listed.stdout
    assert "peak" in json.dumps(Config.model_json_schema())


def test_a_kind_must_name_what_it_builds() -> None:
    with pytest.raises(TypeError, match="must name the class it builds"):

        class Nameless(ObjectiveNode):
            kind: Literal["nameless"]

    assert "nameless" not in KINDS


PLUGIN = """
from dataclasses import dataclass

from fvis.objectives import Leaf


@dataclass(eq=False)
class Corner(Leaf):
    layer: str
    channel: int
    scale: float

    def __post_init__(self):
        self.name = f"corner({self.layer}, {self.channel})"

    def value(self, x):
        return self.scale * x[:, self.channel, 0, 0]


def corner(layer, channel, scale=1.0):
    return Corner(layer, channel, scale)


def not_an_objective(layer):
    return 42


def elsewhere(layer):
    return Corner("0", 1, 1.0)
"""


def test_a_plugin_objective_from_the_users_module(cli, write_config, workdir) -> None:
    (workdir / "myobjectives.py").write_text(PLUGIN)
    objective = {
        "kind": "plugin",
        "factory": "myobjectives:corner",
        "layer": "conv2",
        "channel": 3,
        "scale": 2.0,
    }
    path = write_config(tiny_config(objective=objective, optim={"steps": 4}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 0, result.output
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    before = run["initial"]["terms"]["corner(2, 3)"][0]
    after = run["final"]["terms"]["corner(2, 3)"][0]
    assert after > before

    expression = "plugin('myobjectives:corner', conv2, channel=3) + channel(conv2, 1)"
    path = write_config(tiny_config(objective=expression, optim={"steps": 2}), "expr.yaml")
    assert cli("render", path, "--quiet").exit_code == 0


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "myobjectives:not_an_objective",
            "objective.factory: myobjectives:not_an_objective "
            "returned 'int', not an fvis Objective",
        ),
        ("myobjectives:missing", "objective.factory: module 'myobjectives' has no callable"),
        ("nomodule:corner", "objective.factory: cannot import 'nomodule'"),
        ("myobjectives:elsewhere", "objective: corner(0, 1) reads '0', which the node does not"),
    ],
)
def test_a_bad_plugin_is_a_located_one_line_error(
    cli, write_config, workdir, factory: str, message: str
) -> None:
    (workdir / "myobjectives.py").write_text(PLUGIN)
    objective = {"kind": "plugin", "factory": factory, "layer": "conv2"}
    path = write_config(tiny_config(objective=objective))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"{path}:") and message in line
    assert "Traceback" not in result.output
