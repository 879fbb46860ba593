"""`fvis sweep --backend ray`: the same files as a local sweep, a task whose worker is killed run
again, Ctrl-C keeping what arrived, and the errors; on a local Ray cluster of 2 CPUs started in
the test process."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray

from fvis import cluster
from fvis.errors import UserError
from fvis.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = ROOT / "configs" / "objectives" / "channel.yaml"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
OVER = ["objective.channel=0:6"]


@pytest.fixture(scope="module")
def backend() -> Iterator[cluster.RayBackend]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield cluster.RayBackend()  # joins the cluster started above
    ray.shutdown()


def sweep(folder: Path, backend: object = None, steps: int = 12, **options: object) -> dict:
    sets = [f"optim.steps={steps}"]
    _, index = run_sweep(CHANNEL, sets, OVER, folder, 2, backend=backend, **options)  # type: ignore[arg-type]
    return index


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def values(index: dict) -> dict:
    """sweep.json's items without their timings, in key order (Ray's arrive in any order)."""
    return {k: {n: v for n, v in e.items() if n != "seconds_per_step"} for k, e in index.items()}


def test_a_ray_sweep_writes_the_bytes_and_values_of_a_local_one(
    tmp_path: Path, backend: cluster.RayBackend
) -> None:
    local = sweep(tmp_path / "local")
    remote = sweep(tmp_path / "ray", backend)
    assert values(remote) == values(local)
    assert files(tmp_path / "ray") == files(tmp_path / "local")  # renders, sheet, curves
    assert len(files(tmp_path / "ray")) == 6 + 2


def worker_pids() -> list[int]:
    """Processes of Ray workers running a sweep's task now."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ray::_render_task" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_a_task_whose_worker_dies_is_run_again(tmp_path: Path, backend: cluster.RayBackend) -> None:
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in worker_pids()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    index = sweep(tmp_path / "ray", backend, steps=96)
    killer.join()
    assert killed, "no worker was seen running a task"
    assert sorted(index) == [f"objective.channel={c}" for c in range(6)]
    assert values(index) == values(sweep(tmp_path / "local", steps=96))


def test_ctrl_c_keeps_what_arrived_and_a_rerun_renders_the_rest(
    tmp_path: Path, backend: cluster.RayBackend
) -> None:
    lines: list[str] = []

    def interrupt(line: str) -> None:
        lines.append(line)
        if line.startswith("2/6 items"):
            raise KeyboardInterrupt

    folder = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        sweep(folder, backend, progress=interrupt)
    kept = json.loads((folder / "sweep.json").read_text())["items"]
    assert len(kept) == 2 and all((folder / e["file"]).is_file() for e in kept.values())
    lines.clear()
    sweep(folder, backend, progress=lines.append)
    assert lines[0] == "4 items to render, up to 2 per optimization"
    assert len(json.loads((folder / "sweep.json").read_text())["items"]) == 6


def test_a_microscope_on_ray_renders_what_a_local_one_does(
    tmp_path: Path, backend: cluster.RayBackend, cli: Callable[..., object]
) -> None:
    args = ["--layers", "logits", "--set", "optim.steps=6", "--quiet"]
    for name, where in (("local", []), ("ray", ["--backend", "ray"])):
        result = cli("microscope", QUICKSTART, "--out", tmp_path / name, *args, *where)
        assert result.exit_code == 0, result.output
    renders = [tmp_path / name / "logits" / "renders" for name in ("local", "ray")]
    assert files(renders[1]) == files(renders[0]) and len(files(renders[0])) == 10 + 2


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    with pytest.raises(UserError, match=r"^--backend ray needs Ray, an optional extra: pip"):
        cluster.RayBackend()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "spark"], "--backend spark: expected local or ray"),
        (
            ["--address", "10.0.0.1:6379"],
            "--address names a Ray cluster: pass --backend ray as well",
        ),
    ],
)
def test_backend_errors_are_one_line(
    cli: Callable[..., object], tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli("sweep", CHANNEL, "--over", OVER[0], "--out", tmp_path / "s", *args)
    assert result.exit_code == 2
    assert result.stderr.strip() == message
