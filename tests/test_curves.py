"""curves.png: every render and sweep folder shows its objective over the steps; sweep.json
records each item's curve; matplotlib writes nowhere else, and costs nothing when switched off."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_runs import stopped_run

from conftest import tiny_config
from fvis import curves, runs

STILL = {"transforms": []}  # the trace and the snapshots then see the same images


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes: a truncated file fails here
        return image.size


def test_a_render_folder_holds_its_curves(cli, write_config, workdir: Path) -> None:
    """curves.png is listed in run.json; the trace it draws is each step's objective before
    that step's update: without transforms, step s+1's value is the snapshot of step s."""
    config = tiny_config(
        param={"size": 24, "batch": 2}, optim={"steps": 6, "thresholds": [2, 4]}, **STILL
    )
    result = cli("render", write_config(config), "--quiet", "--out", "run")
    assert result.exit_code == 0, result.output
    run = json.loads((workdir / "run/run.json").read_text())
    assert "curves.png" in run["files"]
    assert _png_size(workdir / "run/curves.png") == (640, 360)
    history = run["history"]
    assert history["steps"] == [1, 2, 3, 4, 5, 6]
    traced = dict(zip(history["steps"], history["per_item"]["objective"], strict=True))
    for snapshot in run["snapshots"][:-1]:
        assert traced[snapshot["step"] + 1] == pytest.approx(snapshot["objective"], rel=1e-4)
    assert history["per_item"]["objective"][-1] != pytest.approx(run["final"]["objective"])


def test_an_interrupted_run_draws_the_steps_it_made(write_config, workdir, monkeypatch) -> None:
    path = write_config(tiny_config(optim={"steps": 12, "thresholds": [4, 8]}))
    stopped_run(path, workdir / "run", 6, monkeypatch)
    run = json.loads((workdir / "run/run.json").read_text())
    assert run["status"] == "interrupted" and run["history"]["steps"] == list(range(1, 7))
    assert "curves.png" in run["files"] and (workdir / "run/curves.png").is_file()


def test_a_failed_run_keeps_its_curves(cli, write_config, workdir, monkeypatch) -> None:
    """A checkpoint that cannot be written fails the run after its first snapshot: the files
    it still writes include the curves of the steps it made."""

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.torch, "save", full)
    path = write_config(tiny_config(optim={"steps": 8, "thresholds": [3]}))
    assert cli("render", path, "--quiet", "--out", "run").exit_code == 1
    run = json.loads((workdir / "run/run.json").read_text())
    assert run["status"] == "failed" and run["history"]["steps"] == [1, 2, 3]
    assert "curves.png" in run["files"] and (workdir / "run/curves.png").is_file()


def test_a_run_that_failed_before_its_first_step_draws_nothing(cli, write_config, workdir):
    # channel 5 of the tiny net's second ReLU is dead on every image: 1 / 0 is infinite
    config = tiny_config(
        hooks={"relu2": "3"}, objective="channel(relu2, 8) + 1e-3 * channel(relu2, 5) ^ -1"
    )
    assert cli("render", write_config(config), "--quiet", "--out", "run").exit_code == 1
    run = json.loads((workdir / "run/run.json").read_text())
    assert run["status"] == "failed" and run["history"]["steps"] == []
    assert "curves.png" not in run["files"] and not (workdir / "run/curves.png").exists()


def test_output_curves_false_writes_none(cli, write_config, workdir: Path) -> None:
    """(That it imports no matplotlib either is test_startup's, in a fresh process.)"""
    path = write_config(tiny_config(optim={"steps": 2}))
    off = ("--set", "output.curves=false", "--quiet")
    assert cli("render", path, "--out", "run", *off).exit_code == 0
    assert "curves.png" not in json.loads((workdir / "run/run.json").read_text())["files"]
    assert cli("sweep", path, "--over", "objective.channel=0:2", "--out", "sw", *off).exit_code == 0
    assert not (workdir / "run/curves.png").exists() and not (workdir / "sw/curves.png").exists()
    assert (workdir / "sw/sheet.png").is_file()


def test_a_sweep_item_s_curve_is_its_render_s_history(cli, write_config, workdir: Path) -> None:
    """sweep.json's curve of objective.channel=1 is the history of `fvis render --set
    objective.channel=1` (optimized alone, the same numbers, rounded), its terms named alike;
    the item's "objective" is the final image's, as the render's final one."""
    path = write_config(tiny_config(optim={"steps": 6}))
    render = cli("render", path, "--set", "objective.channel=1", "--out", "r", "--quiet")
    assert render.exit_code == 0, render.output
    over = ["--over", "objective.channel=0:3", "--batch", "1"]
    assert cli("sweep", path, *over, "--out", "sw", "--quiet").exit_code == 0
    history = json.loads((workdir / "r/run.json").read_text())["history"]
    final = json.loads((workdir / "r/run.json").read_text())["final"]
    item = json.loads((workdir / "sw/sweep.json").read_text())["items"]["objective.channel=1"]
    curve = item["curve"]
    assert sorted(curve) == ["objective", "steps", "terms"]
    assert curve["steps"] == history["steps"] == list(range(1, 7))
    own = [row[0] for row in history["per_item"]["objective"]]
    assert curve["objective"] == pytest.approx(own, rel=1e-5)
    names = [name for name in history["per_item"] if name != "objective"]
    assert list(curve["terms"]) == names and len(names) == 1
    assert curve["terms"][names[0]] == pytest.approx(own, rel=1e-5)
    assert item["objective"] == pytest.approx(final["objective"][0], abs=1e-6)
    assert _png_size(workdir / "sw/curves.png") == (640, 360)


def test_a_batched_sweep_records_each_item_s_own_terms(cli, write_config, workdir) -> None:
    """In one batch the trace holds every item's terms, and items of one objective share a
    name there (with #2): each item records its own, named as its own render names them."""
    path = write_config(tiny_config(optim={"steps": 3}))
    over = ["--over", "objective.channel=0,1", "--over", "seed=0,1", "--batch", "4"]
    assert cli("sweep", path, *over, "--out", "sw", "--quiet").exit_code == 0
    items = json.loads((workdir / "sw/sweep.json").read_text())["items"]
    names = {key: list(item["curve"]["terms"]) for key, item in items.items()}
    for key, item in items.items():
        channel = key.split(",")[0].split("=")[1]
        assert len(names[key]) == 1 and names[key][0].endswith(f", {channel})"), names
        assert item["curve"]["terms"][names[key][0]] == item["curve"]["objective"]


def test_a_resumed_sweep_keeps_old_curves_and_skips_missing_ones(cli, write_config, workdir):
    """Items indexed by an older fvis have no curve: they are left out of curves.png; a
    rerun with nothing to render rewrites neither picture."""
    path = write_config(tiny_config(optim={"steps": 4}))
    args = ("sweep", path, "--out", "sw", "--quiet", "--over")
    assert cli(*args, "objective.channel=0:2").exit_code == 0
    index_path = workdir / "sw/sweep.json"
    before = json.loads(index_path.read_text())
    del before["items"]["objective.channel=0"]["curve"]  # as an older fvis wrote it
    index_path.write_text(json.dumps(before))
    assert cli(*args, "objective.channel=0:3").exit_code == 0
    after = json.loads(index_path.read_text())["items"]
    assert "curve" not in after["objective.channel=0"]
    assert after["objective.channel=1"] == before["items"]["objective.channel=1"]
    assert after["objective.channel=2"]["curve"]["steps"] == [1, 2, 3, 4]
    assert _png_size(workdir / "sw/curves.png") == (640, 360)
    # a rerun that renders nothing leaves both pictures as they were (same bytes, same times)
    times = {p.name: p.stat().st_mtime_ns for p in (workdir / "sw").glob("*.png")}
    assert cli(*args, "objective.channel=0:3").exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (workdir / "sw").glob("*.png")} == times


def test_the_same_curves_are_the_same_bytes() -> None:
    steps = list(range(1, 9))
    lines = {"objective (mean)": (steps, [0.5 * s for s in steps])}
    thin = {f"#{b}": (steps, [0.5 * s + b for s in steps]) for b in range(3)}
    terms = {
        "channel": (steps, [1.0 * s for s in steps]),
        "tv": (steps, [100.0 * s for s in steps]),
    }
    first = curves.png("run: channel - tv", lines, thin, terms)
    assert first == curves.png("run: channel - tv", lines, thin, terms)
    assert first != curves.png("run: channel", lines, thin)
    assert b"Software" not in first and b"matplotlib" not in first.lower()


def test_non_finite_values_and_many_items_are_drawn(tmp_path: Path) -> None:
    """A run that failed on an infinity still gets its picture (a gap there); a sweep of more
    items than a legend holds gets one without their names."""
    steps = [1, 2, 3]
    broken = {"objective": (steps, [1.0, float("nan"), float("inf")])}
    many = {str(n): (steps, [float(n)] * 3) for n in range(curves.MAX_LEGEND + 5)}
    for data in (curves.png("x", broken), curves.png("x", {"mean": (steps, [1.0] * 3)}, many)):
        (tmp_path / "c.png").write_bytes(data)
        assert _png_size(tmp_path / "c.png") == (640, 360)


# A process of its own (matplotlib may be imported already in this one, by captum): draws and
# writes curves.png, then prints MPLCONFIGDIR as it left it.
DRAW = """
import os, sys
from pathlib import Path
from fvis import curves
from fvis.io import write_atomic

assert "matplotlib" not in sys.modules
steps = [1, 2, 3]
data = curves.png("t", {"objective": (steps, [1.0, 2.0, 3.0])}, terms={"tv": (steps, [9.0] * 3)})
write_atomic(Path(sys.argv[1]) / curves.FILE, data)
assert "matplotlib" in sys.modules
print(os.environ.get("MPLCONFIGDIR"))
"""


@pytest.mark.parametrize("preset", [False, True], ids=["no-MPLCONFIGDIR", "MPLCONFIGDIR"])
def test_matplotlib_writes_nowhere_but_the_output_folder(tmp_path: Path, preset: bool) -> None:
    """Matplotlib's first import creates its config folder and writes its font list (under
    HOME, XDG_CONFIG_HOME or XDG_CACHE_HOME): fvis points it at a temporary folder, removed
    afterwards (TMPDIR left empty), and restores MPLCONFIGDIR; a folder the user chose with
    MPLCONFIGDIR is used as they asked."""
    folders = {
        name: tmp_path / name.lower()
        for name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "TMPDIR", "MPLCONFIGDIR")
    }
    if not preset:
        del folders["MPLCONFIGDIR"]
    out = tmp_path / "out"
    for folder in [*folders.values(), out]:
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "MATPLOTLIBRC")}
    env |= {name: str(folder) for name, folder in folders.items()}
    done = subprocess.run(
        [sys.executable, "-c", DRAW, str(out)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folders.get("MPLCONFIGDIR"))  # restored, or still unset
    assert sorted(p.name for p in out.iterdir()) == ["curves.png"]
    chosen = folders.pop("MPLCONFIGDIR", None)
    for name, folder in folders.items():
        assert list(folder.rglob("*")) == [], f"written under {name}"
    if chosen is not None:
        assert list(chosen.glob("fontlist-*.json")), "the user's MPLCONFIGDIR is used"
