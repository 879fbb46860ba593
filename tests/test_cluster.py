"""`--backend ray`: sweeps and passes over data (examples, stats, probe, groups, atlas) write the
same files as locally, a task whose worker is killed is run again, Ctrl-C keeps what arrived,
each worker builds the model once, and the errors; on a local Ray cluster of 2 CPUs started in
the test process."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray
import torch
import yaml
from safetensors.torch import load_file

from fvis import cluster
from fvis import examples as dataset_examples
from fvis.cli.common import data_scan
from fvis.errors import Interrupted, UserError
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


def worker_pids(task: str) -> list[int]:
    """Processes of Ray workers running a `task` now."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"ray::{task}".encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@contextmanager
def killing_a_worker(task: str) -> Iterator[list[int]]:
    """SIGKILL the first worker seen running a `task` while the block runs; the pids killed."""
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in worker_pids(task)[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        yield killed
    finally:
        killer.join()
    assert killed, f"no worker was seen running {task}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_a_task_whose_worker_dies_is_run_again(tmp_path: Path, backend: cluster.RayBackend) -> None:
    with killing_a_worker("_render_task"):
        index = sweep(tmp_path / "ray", backend, steps=96)
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
    """Its renders (a sweep per layer) and its examples pass both go to the cluster."""
    args = ["microscope", QUICKSTART, "--layers", "logits", "--set", "optim.steps=6"]
    local, remote = both(cli, tmp_path, *args, "--data", "zoo:shapes:96")
    renders = [folder / "logits" / "renders" for folder in (local, remote)]
    assert files(renders[1]) == files(renders[0]) and len(files(renders[0])) == 10 + 2
    examples = [folder / "examples" for folder in (local, remote)]
    assert tree(examples[1]) == tree(examples[0]) and len(tree(examples[0])) == 2 + 10


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


# ----------------------------------------------------------------------------- passes over data

DATA = ["--data", "zoo:shapes:160", "--batch", "16"]


def tree(folder: Path) -> dict[str, object]:
    """Every file under `folder` (but hidden ones: the lock) by its relative path: its bytes,
    or for JSON its content without the timings, the folder's path in it written FOLDER."""
    return {
        str(p.relative_to(folder)): untimed(
            json.loads(p.read_text().replace(str(folder), "FOLDER"))
        )
        if p.suffix == ".json"
        else p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def untimed(node: object) -> object:
    """A JSON value without its "seconds" and "seconds_per_step" entries."""
    if isinstance(node, dict):
        return {k: untimed(v) for k, v in node.items() if not k.startswith("seconds")}
    if isinstance(node, list):
        return [untimed(v) for v in node]
    return node


def both(cli: Callable[..., object], tmp_path: Path, *args: object) -> tuple[Path, Path]:
    """`args` run locally into tmp_path/local and on Ray into tmp_path/ray (each --out)."""
    for name, where in (("local", []), ("ray", ["--backend", "ray"])):
        result = cli(*args, "--out", tmp_path / name, "--quiet", *where)
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return tmp_path / "local", tmp_path / "ray"


def test_examples_on_ray_are_the_bytes_of_local_ones(
    tmp_path: Path, backend: cluster.RayBackend, cli: Callable[..., object]
) -> None:
    """160 images in 10 batches, cut into 5 shards of 2 batches for 2 CPUs: the shards' top-K
    merged in image order are a local pass's, ties and all; sheets and JSON follow."""
    args = ["examples", QUICKSTART, *DATA, "--layers", "conv2,logits", "--top", "5"]
    local, remote = both(cli, tmp_path, *args)
    assert tree(remote) == tree(local)
    assert len(tree(local)) == 2 + 32 + 10  # index, tensors, a sheet per unit


def test_stats_and_a_probe_on_ray_match_local_ones(
    tmp_path: Path, backend: cluster.RayBackend, cli: Callable[..., object]
) -> None:
    """Moments merged shard by shard (Chan et al.) equal a batch-by-batch pass to float64's
    rounding; a probe's pooled features are the same rows in the same order."""
    for command, name in (("stats", "stats.safetensors"), ("probe", "probe.safetensors")):
        words = [command, *(["train"] if command == "probe" else []), QUICKSTART, *DATA]
        for where, extra in (("local", []), ("ray", ["--backend", "ray"])):
            out = tmp_path / where / name
            result = cli(*words, "--layers", "conv3,logits", "-o", out, "-q", *extra)
            assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        local, remote = (load_file(tmp_path / w / name) for w in ("local", "ray"))
        assert local.keys() == remote.keys()
        for key in local:
            assert torch.allclose(remote[key].double(), local[key].double(), rtol=1e-6, atol=1e-9)


def test_groups_and_an_atlas_on_ray_are_the_bytes_of_local_ones(
    tmp_path: Path, backend: cluster.RayBackend, cli: Callable[..., object]
) -> None:
    """Their passes over the data and their renders (sweeps) both go to the cluster."""
    sets = ["--set", "optim.steps=4"]
    local, remote = both(cli, tmp_path / "groups", "groups", QUICKSTART, *DATA, "--layer",
                         "conv3", "--groups", "3", *sets)  # fmt: skip
    assert tree(remote) == tree(local)
    local, remote = both(cli, tmp_path / "atlas", "atlas", QUICKSTART, *DATA, "--layer", "conv3",
                         "--grid", "3", "--per-image", "4", *sets)  # fmt: skip
    assert tree(remote) == tree(local)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_a_shard_whose_worker_dies_is_read_again(
    tmp_path: Path, backend: cluster.RayBackend, cli: Callable[..., object]
) -> None:
    args = ["examples", QUICKSTART, "--data", "zoo:shapes:1200", "--batch", "8", "--top", "3",
            "--layers", "conv4"]  # fmt: skip
    with killing_a_worker("_scan_task"):
        result = cli(*args, "--out", tmp_path / "ray", "-q", "--backend", "ray")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert cli(*args, "--out", tmp_path / "local", "-q").exit_code == 0  # type: ignore[attr-defined]
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")


def test_an_interrupted_ray_pass_resumes_to_the_local_result(
    tmp_path: Path, backend: cluster.RayBackend
) -> None:
    """Ctrl-C: the shards taken in (those before the first missing one) are checkpointed; the
    pass resumed, here or on the cluster, ends where an uninterrupted one does."""
    top = {"channels": None, "top": 4}

    def examples(folder: Path, runner: object, resume: bool = False, stop: int = 0) -> Path:
        _, scan = data_scan(QUICKSTART, [], "zoo:shapes:160", ["conv3"], 16, 0, runner, **top)  # type: ignore[arg-type]
        found = dataset_examples.layers(scan, None)
        calls: list[int] = []

        def progress(done: int, read: int) -> None:
            calls.append(done)
            if len(calls) == stop:
                raise KeyboardInterrupt

        folder.mkdir(parents=True, exist_ok=True)
        dataset_examples.run(scan, found, 4, folder, resume, progress)
        return folder / dataset_examples.TENSORS

    with pytest.raises(Interrupted, match=r"interrupted after \d+ of 160 images; kept in"):
        examples(tmp_path / "ray", backend, stop=2)
    checkpoint = load_file(tmp_path / "ray" / dataset_examples.CHECKPOINT)
    assert 0 < int(checkpoint["read"]) < 160
    resumed = examples(tmp_path / "ray", None, resume=True)
    assert resumed.read_bytes() == examples(tmp_path / "local", None).read_bytes()


COUNTED = textwrap.dedent(
    """
    import os
    from pathlib import Path

    import torch
    from torch import nn


    def net() -> nn.Module:
        with (Path(__file__).parent / "builds.txt").open("a") as log:
            log.write(f"{os.getpid()}\\n")
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    """
)


def test_each_worker_builds_the_model_once(tmp_path: Path, backend: cluster.RayBackend) -> None:
    """Six parts of a sweep on two CPUs: each worker's first task builds the network (runs
    the factory), the others copy it."""
    (tmp_path / "counted.py").write_text(COUNTED)
    config = tmp_path / "counted.yaml"
    model = {"source": "factory", "factory": "counted:net", "input": {"size": [24, 24]}}
    objective = {"kind": "channel", "layer": "2", "channel": 0}
    config.write_text(yaml.safe_dump({"model": model, "objective": objective}))
    sets = ["optim.steps=4", "param.size=24"]
    run_sweep(config, sets, ["objective.channel=0:6"], tmp_path / "sweep", 1, backend=backend)
    builds = (tmp_path / "builds.txt").read_text().split()
    assert len(builds) == len(set(builds)) < 6, builds
