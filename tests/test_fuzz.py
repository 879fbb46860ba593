"""Fuzzing: random and mutated configs never produce a traceback, only exit 0 or 2."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import TINY_NETS, tiny_config
from fvis.cli import app

BASE = tiny_config(
    regularizers=[{"kind": "total_variation", "weight": 0.001}],
    transforms=[{"kind": "pad", "pixels": 2}, {"kind": "jitter", "pixels": 1}],
)
KEYS = [
    "kind",
    "layer",
    "channel",
    "steps",
    "size",
    "batch",
    "lr",
    "weight",
    "source",
    "index",
    "terms",
    "x",
    "y",
    "thresholds",
    "decay",
    "name",
    "seed",
    "device",
    "hooks",
    "vector",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["channel", "fft", "pixel", "conv2", "sum", "zoo"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict:
    config = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(config)))
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if action == "set":
            parent[path[-1]] = draw(values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(values)
    return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    (path / "tinynets.py").write_text(TINY_NETS)
    return path


def _run(folder: Path, text: str, *args: str) -> int:
    path = folder / "fuzz.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, [*args[:1], str(path), *args[1:]])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        text,
        result.output,
        result.exception,
    )
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), (text, result.output)
    return result.exit_code


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(config=mutated())
def test_mutated_configs_validate_or_fail_cleanly(folder: Path, config: dict) -> None:
    _run(folder, yaml.safe_dump(config), "validate")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_random_text_validates_or_fails_cleanly(folder: Path, text: str) -> None:
    _run(folder, text, "validate")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(config=mutated())
def test_valid_mutants_render(folder: Path, config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    text = yaml.safe_dump(config)
    small = [
        "--set",
        "optim.steps=2",
        "--set",
        "optim.thresholds=null",
        "--set",
        "param.size=16",
        "--set",
        "param.batch=1",
        "--set",
        "device=cpu",
        "--quiet",
        "--force",
        "--out",
        str(folder / "out"),
    ]
    if _run(folder, text, "validate") == 0:
        _run(folder, text, "render", *small)


# ----------------------------------------------------------------------------- hostile inputs
# Depth, size and duplicates (issue 15): each refused by `fvis validate` in exactly one line
# naming the file, exit 2, never a traceback, wherever in the config it is put.

BOMB = "BOMB_PLACEHOLDER"


def _clean_refusal(folder: Path, text: str, *args: str) -> str:
    """The one line `fvis validate` prints for a config it must refuse."""
    path = folder / "hostile.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(path), *args])
    shown = (text[:200], [a[:200] for a in args], result.output[-2000:], result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert "Traceback" not in result.output, shown
    assert result.exit_code == 2, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith(f"{path}"), shown
    return lines[0]


@st.composite
def placed(draw: st.DrawFn) -> tuple[str, tuple]:
    """BASE as YAML text with the value at a random place replaced by BOMB (flow style, so a
    bomb of any shape fits where a value goes)."""
    config = copy.deepcopy(BASE)
    path = draw(st.sampled_from(_paths(config)))
    parent = config
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = BOMB
    return yaml.safe_dump(config, default_flow_style=True, width=10**9), path


def _nested(shape: str, depth: int) -> str:
    """`depth` levels of one shape of nesting, in YAML flow style."""
    if shape == "list":
        return "[" * depth + "1" + "]" * depth
    if shape == "mapping":
        return "{a: " * depth + "1" + "}" * depth
    return "[{a: " * (depth // 2) + "1" + "}]" * (depth // 2)  # alternating


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    where=placed(),
    shape=st.sampled_from(["list", "mapping", "alternating"]),
    depth=st.integers(66, 20_000),
)
def test_depth_bombs_anywhere_are_one_line(folder: Path, where, shape: str, depth: int) -> None:
    text, _ = where
    line = _clean_refusal(folder, text.replace(BOMB, _nested(shape, depth)))
    assert "nested more than 64 levels deep" in line


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    prefix=st.sampled_from(["(", "-", "- ", "(-", "channel(conv2, [", "interpolate("]),
    depth=st.integers(65, 5000),
)
def test_deep_expressions_are_one_line(folder: Path, prefix: str, depth: int) -> None:
    closing = {"(": ")", "[": "]"}
    inner = prefix * depth + ("1" if prefix.endswith("[") else "channel(conv2, 1)")
    suffix = "".join(closing.get(c, "") for c in reversed(prefix * depth))
    if prefix == "interpolate(":  # every call but the innermost needs its second argument
        inner = "interpolate(layer(conv2), " * depth + "layer(conv2)"
        suffix = ")" * depth
    config = {**BASE, "objective": BOMB}
    text = yaml.safe_dump(config).replace(BOMB, f"'{inner}{suffix}'")
    line = _clean_refusal(folder, text)
    assert ": objective: nested more than 64 levels deep at column" in line


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    shape=st.sampled_from(["list", "mapping", "alternating"]),
    depth=st.integers(66, 5000),
    path=st.sampled_from(["objective.channel", "param.size", "name", "transforms.0", "hooks"]),
)
def test_deep_set_values_are_one_line(folder: Path, shape: str, depth: int, path: str) -> None:
    line = _clean_refusal(folder, yaml.safe_dump(BASE), "--set", f"{path}={_nested(shape, depth)}")
    assert "nested more than 64 levels deep" in line
    assert len(line) < 500  # the --set item is quoted by its start


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    where=placed(),
    digits=st.integers(101, 6000),
    form=st.sampled_from(["{}", "-{}", "+{}", "0x{}", "1_{}"]),
    via_set=st.booleans(),
)
def test_huge_integers_anywhere_are_one_line(
    folder: Path, where, digits: int, form: str, via_set: bool
) -> None:
    text, path = where
    number = form.format("7" * digits)
    if via_set:
        dotted = ".".join(map(str, path))
        line = _clean_refusal(folder, yaml.safe_dump(BASE), "--set", f"{dotted}={number}")
    else:
        line = _clean_refusal(folder, text.replace(BOMB, number))
    assert f"integer with {digits + form.count('1')} digits is too large" in line


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_duplicate_keys_anywhere_are_one_line(folder: Path, data: st.DataObject) -> None:
    """Any key line of the block-style config written twice: refused at the second one."""
    lines = yaml.safe_dump(BASE).splitlines()
    keyed = [i for i, t in enumerate(lines) if re.match(r"^\s*(- )?[\w]+:", t)]
    i = data.draw(st.sampled_from(keyed))
    indent, item, rest = re.match(r"^(\s*)(- )?(.*)$", lines[i]).groups()
    repeat = indent + ("  " if item else "") + rest
    text = "\n".join([*lines[: i + 1], repeat, *lines[i + 1 :]]) + "\n"
    line = _clean_refusal(folder, text)
    assert line.endswith(f"duplicate key (first at line {i + 1})"), (text, line)
    assert line.startswith(f"{folder / 'hostile.yaml'}:{i + 2}: ")


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(where=placed(), length=st.integers(5000, 300_000), char=st.sampled_from("x/é0"))
def test_long_strings_anywhere_validate_or_fail_cleanly(
    folder: Path, where, length: int, char: str
) -> None:
    """A very long string where any value goes: accepted, or refused without a traceback."""
    text, _ = where
    text = text.replace(BOMB, "'" + char * length + "'")
    path = folder / "hostile.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(path), "--deep"])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        text[:200],
        result.exception,
    )
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output[-2000:]
