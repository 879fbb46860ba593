"""Fuzzing: random and mutated configs never produce a traceback, only exit 0 or 2."""

from __future__ import annotations

import copy
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
