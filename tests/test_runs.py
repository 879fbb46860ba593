"""Run folders: one owner at a time, replaced whole, no leftovers, the truth in run.json, and
checkpoints checked before a resume uses them."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import fvis.render
from conftest import tiny_config
from fvis import atlas, groups, io, runs, writers
from fvis.build import build_plan
from fvis.config import load_config
from fvis.errors import UserError
from fvis.render import Renderer


def stopped_run(path: Path, run_dir: Path, at: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Render `path` into `run_dir` as `fvis render` does, stopped (as by Ctrl-C) after step
    `at`: progress is reported at every step, and asks the renderer to stop there."""
    monkeypatch.setattr(fvis.render, "REPORT_SECONDS", 0.0)
    loaded = load_config(path)
    plan = build_plan(loaded.config, path.parent)
    renderer = Renderer(plan)

    def progress(step: int, score: float) -> None:
        if step == at:
            renderer.request_stop(signal.SIGINT)

    with runs.locked(run_dir):
        runs.claim(run_dir, force=False)
        result = runs.render_run(run_dir, loaded.config, plan, renderer, progress)
    assert result.status == "interrupted" and result.steps_done == at


def _one_line(result: Any) -> str:
    """The one line a refused command printed on stderr (and no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    return lines[0]


def _full_disk(monkeypatch: pytest.MonkeyPatch, when: Callable[[str], bool]) -> None:
    """Every rename into place of a file for which `when(name)` holds fails as on a full disk."""
    replace = os.replace

    def full(src: str, dst: str) -> None:
        if when(Path(dst).name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(src, dst)

    monkeypatch.setattr(io.os, "replace", full)


# ----------------------------------------------------------------------------- the lock


def test_a_locked_folder_is_refused_at_once_naming_its_holder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with runs.locked(folder):
        holder = json.loads((folder / runs.LOCK).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(UserError) as refused, runs.locked(folder):
            pass
        assert str(refused.value).startswith(
            f"{folder}: in use by another fvis command (pid {os.getpid()} on "
        )
        assert str(refused.value).endswith("; wait for it to end, or use another folder")
    assert not folder.exists()  # created by the lock, left empty: removed again
    with runs.locked(folder):  # released
        (folder / "kept").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["kept"]  # no lock file left behind


def test_a_render_into_a_folder_another_holds_is_refused_and_touches_nothing(
    cli, write_config, workdir: Path
) -> None:
    path = write_config(tiny_config(optim={"steps": 2}))
    folder = workdir / "held"
    with runs.locked(folder):
        result = cli("render", path, "--out", folder, "--quiet")
        assert result.exit_code == 2
        assert "in use by another fvis command (pid" in _one_line(result)
        assert sorted(p.name for p in folder.iterdir()) == [runs.LOCK]
        assert cli("render", "--resume", folder, "--quiet").exit_code == 2


def test_a_folder_where_the_lock_cannot_be_written_is_refused_and_left_as_it_was(
    cli, write_config, workdir: Path, monkeypatch
) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.os, "write", full)
    result = cli("render", write_config(tiny_config(optim={"steps": 2})), "--quiet")
    assert result.exit_code == 2  # refused before the run started
    assert _one_line(result) == (
        "outputs/cfg: cannot write in the run folder (No space left on device)"
    )
    assert not (workdir / "outputs").exists()


def test_a_file_system_without_locks_is_refused(cli, write_config, workdir, monkeypatch) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runs.fcntl, "flock", no_locks)
    result = cli("render", write_config(tiny_config(optim={"steps": 2})), "--quiet")
    assert result.exit_code == 2
    assert _one_line(result) == (
        "outputs/cfg: cannot lock the run folder (No locks available): its file system has no "
        "locks; use a folder on a local disk"
    )
    assert not (workdir / "outputs").exists()


HOLD = """
import sys, time
from pathlib import Path
from fvis import runs
with runs.locked(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid} on"), runs.locked(folder):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup in the holder
        holder.wait()
    assert (folder / runs.LOCK).exists()  # its lock file is left, but no longer locked
    with runs.locked(folder):
        pass


def test_two_renders_started_together_into_one_folder_one_refused(
    write_config, workdir: Path
) -> None:
    # the first snapshot (and write) is late: both have checked the folder before either writes
    path = write_config(tiny_config(optim={"steps": 100, "thresholds": [100]}))
    command = [sys.executable, "-m", "fvis", "render", str(path), "--quiet", "--out", "same"]
    procs = [subprocess.Popen(command, cwd=workdir, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(command, cwd=workdir, stderr=subprocess.PIPE, text=True))
    outcomes = sorted((p.wait(timeout=120), p.stderr.read()) for p in procs)  # type: ignore[union-attr]
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    refused = outcomes[1][1].strip()
    assert "in use by another fvis command" in refused or "run folder exists" in refused
    assert json.loads((workdir / "same/run.json").read_text())["status"] == "complete"


# ----------------------------------------------------------------------------- --force


def test_force_replaces_a_run_folder_as_a_whole(cli, write_config, workdir: Path) -> None:
    three = write_config(tiny_config(param={"size": 24, "batch": 3}, optim={"steps": 2}))
    assert cli("render", three, "--quiet", "--out", "run").exit_code == 0
    (workdir / "run/notes.txt").write_text("mine")
    one = write_config(tiny_config(optim={"steps": 2}), "one.yaml")
    assert cli("render", one, "--quiet", "--out", "run", "--force").exit_code == 0
    files = sorted(p.name for p in (workdir / "run").iterdir())
    assert files == [
        "config.yaml",
        "curves.png",
        "grid.png",
        "image_0.png",
        "notes.txt",
        "run.json",
    ]


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_is_not_a_run_folder_is_never_cleared(
    cli, write_config, workdir: Path, force: bool
) -> None:
    path = write_config(tiny_config(optim={"steps": 2}))
    home = workdir / "home"
    home.mkdir()
    (home / "config.yaml").write_text("mine")
    (home / "image_0.png").write_text("mine too")
    result = cli("render", path, "--quiet", "--out", home, *(["--force"] if force else []))
    assert result.exit_code == 2
    assert _one_line(result) == (
        f"{home}: not empty and not a run folder (no run.json); choose a new or empty folder "
        "with --out DIR"
    )
    assert sorted(p.name for p in home.iterdir()) == ["config.yaml", "image_0.png"]


# ----------------------------------------------------------------------------- leftovers


def test_stale_temporaries_are_removed_when_a_command_takes_the_folder(
    cli, write_config, workdir: Path, monkeypatch
) -> None:
    path = write_config(tiny_config(optim={"steps": 8, "thresholds": [2]}))
    run_dir = workdir / "run"
    stopped_run(path, run_dir, 3, monkeypatch)
    stale = [".checkpoint.pt.ab_12xyz.tmp", ".image_1.png.0q9w8e7r.tmp"]
    for name in stale:
        (run_dir / name).write_bytes(b"left by a killed run")
    (run_dir / ".notes.txt").write_text("not a temporary of fvis")
    assert cli("render", "--resume", run_dir, "--quiet").exit_code == 0
    assert sorted(p.name for p in run_dir.glob(".*")) == [".notes.txt"]

    for name in stale:  # a render with --force takes the folder too
        (run_dir / name).write_bytes(b"left by a killed run")
    assert cli("render", path, "--quiet", "--out", run_dir, "--force").exit_code == 0
    assert sorted(p.name for p in run_dir.glob(".*")) == [".notes.txt"]


# ----------------------------------------------------------------------------- write failures


def test_a_full_disk_at_the_first_checkpoint_fails_the_run_and_resume_says_so(
    cli, write_config, workdir: Path
) -> None:
    path = write_config(tiny_config(optim={"steps": 4}))
    with pytest.MonkeyPatch.context() as full:
        _full_disk(full, lambda name: name == runs.CHECKPOINT)
        result = cli("render", path, "--quiet")
    run_dir = Path("outputs/cfg")
    error = f"{run_dir / runs.CHECKPOINT}: cannot write (No space left on device) at step 1"
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"cfg: {error}; no checkpoint was written: render it again with --force"
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed" and run["error"] == error
    assert not list(run_dir.glob(".*"))

    resumed = cli("render", "--resume", run_dir, "--quiet")  # space freed: still the truth
    assert resumed.exit_code == 2
    assert _one_line(resumed) == (
        f"{run_dir}: nothing to resume (the run failed before writing a checkpoint: {error}); "
        "render it again with --force"
    )


def test_a_full_disk_later_keeps_the_last_checkpoint_to_resume_from(
    cli, write_config, workdir: Path
) -> None:
    config = tiny_config(optim={"steps": 6, "thresholds": [2, 4]}, param={"size": 24, "batch": 2})
    path = write_config(config)
    assert cli("render", path, "--quiet", "--out", "straight").exit_code == 0
    calls = {"checkpoint": 0}

    def second_checkpoint(name: str) -> bool:
        calls["checkpoint"] += name == runs.CHECKPOINT
        return name == runs.CHECKPOINT and calls["checkpoint"] >= 2

    with pytest.MonkeyPatch.context() as full:
        _full_disk(full, second_checkpoint)
        result = cli("render", path, "--quiet")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "cfg: outputs/cfg/checkpoint.pt: cannot write (No space left on device) at step 4; "
        "resume from the last checkpoint with: fvis render --resume outputs/cfg"
    )
    assert json.loads(Path("outputs/cfg/run.json").read_text())["status"] == "failed"

    assert cli("render", "--resume", "outputs/cfg", "--quiet").exit_code == 0
    for name in ("grid.png", "image_0.png", "image_1.png"):
        resumed, straight = workdir / "outputs/cfg" / name, workdir / "straight" / name
        assert resumed.read_bytes() == straight.read_bytes()


def test_a_full_disk_from_the_start_leaves_nothing(cli, write_config, workdir: Path) -> None:
    path = write_config(tiny_config(optim={"steps": 2}))
    with pytest.MonkeyPatch.context() as full:
        _full_disk(full, lambda name: name != "grid.png")  # only the grid fits
        result = cli("render", path, "--quiet")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "cfg: outputs/cfg/image_0.png: cannot write (No space left on device) at step 1; "
        "nothing was kept"
    )
    assert result.stdout == ""  # no grid.png to show
    assert not (workdir / "outputs").exists()


def test_a_grid_too_large_for_memory_fails_the_run_and_a_smaller_cell_resumes(
    cli, write_config, workdir: Path
) -> None:
    path = write_config(tiny_config(optim={"steps": 4, "thresholds": [2]}))
    grid, calls = writers.grid, []

    def second_grid_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) >= 2:
            raise MemoryError
        return grid(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writers, "grid", second_grid_fails)
        result = cli("render", path, "--quiet")
    assert result.exit_code == 1
    error = (
        "outputs/cfg/grid.png: out of memory making a grid of 332x162 pixels (try a smaller "
        "output.cell than 128) at step 4"
    )
    assert result.stderr.strip().splitlines()[-1] == (
        f"cfg: {error}; resume from the last checkpoint with: fvis render --resume outputs/cfg"
    )
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    assert run["status"] == "failed" and run["error"] == error
    resumed = cli("render", "--resume", "outputs/cfg", "--quiet", "--set", "output.cell=64")
    assert resumed.exit_code == 0, resumed.stderr
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    assert run["status"] == "complete" and "error" not in run


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture
def stopped(write_config, workdir: Path, monkeypatch) -> Path:
    """A run folder of a run stopped at step 3, its checkpoint holding snapshots 0 and 2."""
    path = write_config(tiny_config(optim={"steps": 8, "thresholds": [2, 4]}))
    run_dir = workdir / "run"
    stopped_run(path, run_dir, 3, monkeypatch)
    return run_dir


def _checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / runs.CHECKPOINT, weights_only=True)


def test_a_checkpoint_of_another_objective_and_seed_is_refused_saying_what_differs(
    cli, write_config, workdir: Path, stopped: Path
) -> None:
    other = tiny_config(
        seed=7,
        objective={"kind": "channel", "layer": "conv2", "channel": 5},
        optim={"steps": 8, "thresholds": [2, 4]},
    )
    result = cli("render", "--resume", stopped, write_config(other, "other.yaml"), "--quiet")
    assert result.exit_code == 2
    assert _one_line(result) == (
        f"{stopped / runs.CHECKPOINT}: does not fit this config: seed is 7 here, 0 in the "
        "checkpoint; objective.channel is [5] here, [3] in the checkpoint (resume with the config "
        "the run was made with, or render it again with --force)"
    )


def test_a_checkpoint_copied_from_another_run_is_refused(
    cli, write_config, workdir: Path, stopped: Path, monkeypatch
) -> None:
    other = write_config(tiny_config(seed=3, optim={"steps": 8, "thresholds": [2, 4]}), "o.yaml")
    stopped_run(other, workdir / "other", 3, monkeypatch)
    (stopped / runs.CHECKPOINT).write_bytes((workdir / "other" / runs.CHECKPOINT).read_bytes())
    result = cli("render", "--resume", stopped, "--quiet")
    assert result.exit_code == 2
    assert "does not fit this config: seed is 0 here, 3 in the checkpoint" in _one_line(result)


def _snapshot_key(state: dict) -> None:
    state["snapshots"][1]["extra"] = 1


def _image_shape(state: dict) -> None:
    state["snapshots"][1]["images"] = torch.zeros(1, 3, 8, 8)


def _adam_moment(state: dict) -> None:
    state["adam"]["state"][0]["exp_avg"] = state["adam"]["state"][0]["exp_avg"].double()


def _step_type(state: dict) -> None:
    state["step"] = "3"


def _terms(state: dict) -> None:
    state["snapshots"][0]["terms"] = {"other": [0.0]}


def _stream(state: dict) -> None:
    state["streams"][0] = torch.zeros(5056, dtype=torch.uint8)  # not a valid generator state


def _snapshot_dropped(state: dict) -> None:
    del state["snapshots"][1]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda s: [1, 2, 3], "it holds a list, not a checkpoint's entries"),
        (lambda s: {k: v for k, v in s.items() if k != "trace"}, "no trace"),
        (lambda s: {**s, "extra": 1}, "unknown entries: extra"),
        (lambda s: {**s, "format": 9}, "format 9, not 1"),
        (_snapshot_key, "snapshots[1] is not a snapshot (step, images, objective, terms)"),
        (_image_shape, "snapshots[1].images is float32 [1, 3, 8, 8], this run's is float32 "),
        (_adam_moment, "adam.state[0].exp_avg is float64 [1, 3, 24, 13, 2], this run's is "),
        (_step_type, 'step "3", not a step of this run (0 to 8)'),
        (_terms, "snapshots[0].terms are not this objective's terms"),
        (_stream, "Invalid mt19937 state"),
        (_snapshot_dropped, "snapshots has 1 entries, this run's 2"),
    ],
)
def test_a_checkpoint_of_the_wrong_structure_is_refused_in_one_line(
    cli, stopped: Path, mutate: Callable[[dict], Any], problem: str
) -> None:
    state = _checkpoint(stopped)
    changed = mutate(state)
    torch.save(state if changed is None else changed, stopped / runs.CHECKPOINT)
    result = cli("render", "--resume", stopped, "--quiet")
    assert result.exit_code == 2
    line = _one_line(result)
    assert line.startswith(f"{stopped / runs.CHECKPOINT}: not a checkpoint of this run (")
    assert problem in line


class Hostile:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            lambda p: p.write_bytes(b"garbage" * 10),
            "not a readable checkpoint (Unsupported operand 103)",
        ),
        (
            lambda p: torch.save({"x": Hostile()}, p),
            "not a checkpoint of this run (it holds a Python object, posix.system, which is "
            "never loaded: it could run code)",
        ),
        (
            lambda p: p.write_bytes(pickle.dumps({"x": 1}, protocol=4)),
            "not a readable checkpoint (Unsupported operand 149)",
        ),
        (
            lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40),
            "not a readable checkpoint (PytorchStreamReader failed reading zip archive: failed "
            "finding central directory)",
        ),
    ],
)
def test_an_unreadable_or_pickled_checkpoint_is_one_line_of_our_own(
    cli, stopped: Path, write: Callable[[Path], Any], message: str
) -> None:
    write(stopped / runs.CHECKPOINT)
    result = cli("render", "--resume", stopped, "--quiet")
    assert result.exit_code == 2
    assert _one_line(result) == f"{stopped / runs.CHECKPOINT}: {message}"


def test_an_interrupted_run_resumes_only_once_and_then_is_complete(cli, stopped: Path) -> None:
    assert cli("render", "--resume", stopped, "--quiet").exit_code == 0
    again = cli("render", "--resume", stopped, "--quiet")
    assert again.exit_code == 2
    assert _one_line(again) == f"{stopped}: nothing to resume (the run is complete)"


@pytest.mark.parametrize(
    ("kind", "what"),
    [(runs.EXAMPLES, "examples"), (groups.KIND, "groups"), (atlas.KIND, "atlas")],
)
def test_an_interrupted_pass_is_kept_for_resume_unless_forced(
    tmp_path: Path, kind: runs.Kind, what: str
) -> None:
    folder = tmp_path / "pass"
    folder.mkdir()
    (folder / kind.checkpoint).write_bytes(b"partial")
    with pytest.raises(UserError, match=f"holds an interrupted {what} pass; pass --resume"):
        runs.claim_pass(folder, False, False, kind)
    runs.claim_pass(folder, False, True, kind)  # --resume: as it is
    assert (folder / kind.checkpoint).is_file()
    with pytest.raises(UserError, match="--resume goes on from a checkpoint, --force starts"):
        runs.claim_pass(folder, True, True, kind)
    runs.claim_pass(folder, True, False, kind)  # --force: cleared of what fvis wrote
    assert list(folder.iterdir()) == []
