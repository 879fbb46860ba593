"""Fuzzing `fvis render --resume`: hostile checkpoints (random structures, and a real checkpoint
mutated) are refused with exit 2 and one line of fvis's own, never a traceback."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runs import stopped_run
from typer.testing import CliRunner

from conftest import TINY_NETS, tiny_config
from fvis import runs
from fvis.cli import app

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
]
tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    st.sampled_from(DTYPES),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    tensors,
)
keys = st.one_of(st.sampled_from(sorted(runs.CHECKPOINT_KEYS)), st.text(max_size=6), st.integers())
hostile = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=16,
)
NUMBERS = (int, float, bool)


@pytest.fixture(scope="module")
def resumable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """A folder with a run stopped at step 3 (the working folder while the tests run), and its
    checkpoint's entries."""
    workdir = tmp_path_factory.mktemp("resume")
    (workdir / "tinynets.py").write_text(TINY_NETS)
    path = workdir / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(optim={"steps": 8, "thresholds": [2, 4]})))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        stopped_run(path, workdir / "run", 3, patch)
        state = torch.load(workdir / "run" / runs.CHECKPOINT, weights_only=True)
        yield workdir / "run", state


def _refused(run_dir: Path, content: Any) -> None:
    """Save `content` as the checkpoint of a copy of the stopped run: resuming must refuse it
    in one line, exit 2. On a copy, so that a checkpoint wrongly taken fails its own example
    and leaves the run stopped for the next."""
    trial = run_dir.with_name("trial")
    shutil.rmtree(trial, ignore_errors=True)
    shutil.copytree(run_dir, trial)
    torch.save(content, trial / runs.CHECKPOINT)
    result = CliRunner().invoke(app, ["render", "--resume", str(trial), "--quiet"])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{trial / runs.CHECKPOINT}: "), lines[0]
    assert "weights_only" not in lines[0]


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@pytest.mark.parametrize("lr", [None, [0.05], "0.05", 1])
def test_a_learning_rate_missing_or_not_a_float_is_refused(
    resumable: tuple[Path, dict], lr: object
) -> None:
    """The rate's value is not checked (the schedule sets it at each step), its presence and
    kind are; None stands for the entry deleted."""
    run_dir, original = resumable
    state = copy.deepcopy(original)
    group = state["adam"]["param_groups"][0]
    assert isinstance(group["lr"], float)
    if lr is None:
        del group["lr"]
    else:
        group["lr"] = lr
    _refused(run_dir, state)


@FUZZ
@given(content=hostile)
def test_random_structures_are_refused(resumable: tuple[Path, dict], content: Any) -> None:
    _refused(resumable[0], content)


def _places(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a dict, list or tuple entry of a checkpoint (tensors are leaves)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        found.append((*prefix, key))
        if isinstance(value, dict | list | tuple):
            found += _places(value, (*prefix, key))
    return found


def _get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def _set(node: Any, path: tuple, value: Any) -> Any:
    """`node` with the entry at `path` replaced (tuples rebuilt, since they cannot change)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, tuple):
        return tuple(_set(v, rest, value) if i == head else v for i, v in enumerate(node))
    node[head] = _set(node[head], rest, value)
    return node


def _differs(old: Any, new: Any) -> bool:
    """Whether `new` cannot stand in for `old` in a checkpoint: another kind of value (numbers
    are one kind: 3 for 3.0 may be fine), or a tensor of another shape."""
    if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
        return old.shape != new.shape
    if isinstance(old, NUMBERS) and isinstance(new, NUMBERS):
        return False
    return type(old) is not type(new)


@FUZZ
@given(data=st.data())
def test_mutated_checkpoints_are_refused(resumable: tuple[Path, dict], data: st.DataObject) -> None:
    run_dir, original = resumable
    state = copy.deepcopy(original)
    path = data.draw(st.sampled_from(_places(state)), label="path")
    parent, key = _get(state, path[:-1]), path[-1]
    action = data.draw(st.sampled_from(["delete", "add", "replace"]), label="action")
    if action == "delete":
        if isinstance(parent, tuple):
            state = _set(state, path[:-1], parent[:key] + parent[key + 1 :])
        else:
            del parent[key]
    elif action == "add":
        target = _get(state, path)
        if isinstance(target, dict):
            target[data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in target))] = 1
        elif isinstance(target, list):
            target.append(data.draw(hostile, label="added"))
        else:
            state = _set(state, path, [target])  # wrapped in a list
    else:
        old = _get(state, path)
        new = data.draw(hostile.filter(lambda v: _differs(old, v)), label="new")
        state = _set(state, path, new)
    _refused(run_dir, state)
