"""Sweeps: batched items equal items rendered alone; folders resume; values parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_config
from fvis import budget, sweep
from fvis.build import build_plan, memory_need
from fvis.errors import UserError
from fvis.io import write_atomic
from fvis.render import Renderer
from fvis.runs import locked
from fvis.sweep import MAX_ITEMS, SweepFailed, expand, groups, parse_over, run_sweep
from fvis.writers import contact_sheet


def test_parse_over() -> None:
    assert parse_over("objective.channel=0:4") == ("objective.channel", range(4))
    assert list(parse_over("a.b=10:0:-5")[1]) == [10, 5]
    assert parse_over("param.decay=0.5,1,1.5") == ("param.decay", [0.5, 1, 1.5])
    assert parse_over("param.kind=fft") == ("param.kind", ["fft"])
    with pytest.raises(UserError, match="expected path=values"):
        parse_over("objective.channel")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("objective.channel=0:4:0", "objective.channel=0:4:0: STEP must not be 0"),
        (
            "x=3:3",
            "x=3:3: the range is empty: STOP must be above START with a STEP of 1 (e.g. 3:7:1)",
        ),
        (
            "x=0:4:-1",
            "x=0:4:-1: the range is empty: STOP must be below START with a STEP of -1 "
            "(e.g. 0:-4:-1)",
        ),
        ("x=0:" + "9" * 5000, "x: START:STOP:STEP must be integers of at most 18 digits"),
        ("x=" + "9" * 5000, "x=" + "9" * 55 + "...: values must be YAML"),
        ("x=" + "[" * 20000, "x=" + "[" * 55 + "...: values must be YAML"),
    ],
    ids=["step-0", "empty", "empty-descending", "digits", "yaml-digits", "yaml-depth"],
)
def test_bad_ranges_are_refused_in_one_line(spec: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_over(spec)
    assert str(caught.value) == f"--over {message}"


def test_ranges_stay_lazy_and_absurd_sizes_are_refused(write_config) -> None:
    path = write_config(tiny_config())
    assert len(parse_over("objective.channel=0:100000000")[1]) == 100_000_000  # not built
    with pytest.raises(UserError) as caught:
        expand(path, [], ["objective.channel=0:100000000"])
    assert str(caught.value) == (
        f"--over objective.channel=0:100000000: 100000000 items, more than the {MAX_ITEMS} a "
        "sweep holds: sweep fewer values, or split them into several sweeps"
    )
    with pytest.raises(UserError, match=r"0:100 --over seed=0:1000: 100 x 1000 = 100000 items"):
        expand(path, [], ["objective.channel=0:100", "seed=0:1000"])
    assert len(expand(path, [], ["objective.channel=0:2", "seed=0:3"])) == 6


def test_the_sheet_of_the_largest_sweep_can_be_read_back(workdir: Path) -> None:
    """MAX_ITEMS is set by sheet.png: 8 items a row, within budget.MAX_GRID_PIXELS."""
    files = []
    for n in range(16):
        files.append(workdir / f"{n}.png")
        Image.new("RGB", (24, 24)).save(files[-1])
    width, two_rows = contact_sheet(files, ["x"] * 16).size
    assert width * two_rows // 2 * -(-MAX_ITEMS // 8) <= budget.MAX_GRID_PIXELS


def test_a_bad_item_is_reported_against_its_own_override(cli, write_config) -> None:
    path = write_config(tiny_config())
    result = cli("sweep", path, "--over", "objective.channel=14:18", "--batch", "4", "--quiet")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}: --set objective.channel=16: objective.channel: ")
    assert "channel 16 is out of range" in line


def test_items_group_by_everything_but_objective_and_seed(write_config) -> None:
    path = write_config(tiny_config())
    items = expand(path, [], ["objective.channel=0:3", "param.decay=1,2"])
    assert [i.key for i in items][:2] == [
        "objective.channel=0,param.decay=1",
        "objective.channel=0,param.decay=2",
    ]
    chunks = list(groups(items, batch=2))
    assert [len(c) for c in chunks] == [2, 1, 2, 1]
    assert {c[0].config.param.decay for c in chunks} == {1.0, 2.0}
    assert all(len({i.config.param.decay for i in c}) == 1 for c in chunks)


def test_a_batched_item_equals_the_item_rendered_alone(write_config) -> None:
    path = write_config(tiny_config(optim={"steps": 24}, param={"size": 24}))
    items = expand(path, [], ["objective.channel=0:6"])

    def images(part: list) -> torch.Tensor:
        return Renderer(build_plan(part[0].config, path.parent, part)).run().final.images

    batched = images(items)
    for k in (0, 4):
        alone = images([items[k]])[0]
        assert torch.allclose(batched[k], alone, atol=1e-4), (batched[k] - alone).abs().max()
    # and the position in the batch does not matter either
    assert torch.allclose(images(items[::-1])[1], batched[4], atol=1e-4)


def test_sweep_writes_items_sheet_index_and_resumes(cli, write_config, workdir: Path) -> None:
    path = write_config(tiny_config(optim={"steps": 4}))
    first = cli("sweep", path, "--over", "objective.channel=0:2", "--out", "sw", "--quiet")
    assert first.exit_code == 0, first.output
    folder = workdir / "sw"
    stamp = (folder / "objective.channel=0.png").stat().st_mtime_ns
    second = cli("sweep", path, "--over", "objective.channel=0:4", "--out", "sw", "--batch", "3")
    assert second.exit_code == 0, second.output
    assert second.stderr.startswith("2 items to render, up to 3 per optimization")
    assert " 2/2 100% " in second.stderr  # the bar counts the items this run renders
    assert (folder / "objective.channel=0.png").stat().st_mtime_ns == stamp
    index = json.loads((folder / "sweep.json").read_text())["items"]
    assert sorted(index) == [f"objective.channel={c}" for c in range(4)]
    assert (folder / "sheet.png").stat().st_size > 0
    assert second.stdout.strip() == str(Path("sw/sheet.png"))


def test_a_sweep_folder_another_command_holds_is_refused_and_left_alone(
    cli, write_config, workdir: Path
) -> None:
    path = write_config(tiny_config(optim={"steps": 2}))
    folder = workdir / "sw"
    with locked(folder):
        result = cli("sweep", path, "--over", "objective.channel=0:2", "--out", "sw")
        assert result.exit_code == 2
        assert result.stderr.startswith("sw: in use by another fvis command (pid ")
        assert sorted(p.name for p in folder.iterdir()) == [".fvis.lock"]


def test_a_sweep_names_the_user_code_it_runs(cli, write_config) -> None:
    path = write_config(tiny_config(optim={"steps": 2}))
    result = cli("sweep", path, "--over", "objective.channel=0:1", "--out", "sw", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"{path}:4: model.factory: note: runs your code (tinynets:convnet); use only code you trust"
    ]


def test_cross_batch_objectives_are_refused(cli, write_config) -> None:
    path = write_config(tiny_config(objective="channel(conv2, 1) + diversity(conv2)"))
    result = cli("sweep", path, "--over", "seed=0:2")
    assert result.exit_code == 2
    assert "uses diversity, which compares batch items" in result.stderr


def test_shared_parameters_are_refused(cli, write_config) -> None:
    path = write_config(tiny_config(param={"size": 24, "shared": 0.5}))
    result = cli("sweep", path, "--over", "objective.channel=0:2")
    assert result.exit_code == 2
    assert "param.shared ties the batch items together" in result.stderr


def test_one_step_needs_memory_in_proportion_to_the_batch(write_config) -> None:
    path = write_config(tiny_config(param={"size": 32}))
    items = expand(path, [], ["objective.channel=0:4"])

    def step_bytes(part: list) -> int:
        return Renderer(build_plan(part[0].config, path.parent, part)).step_bytes()

    one, four = step_bytes(items[:1]), step_bytes(items)
    image = 3 * 32 * 32 * 4  # the network's input alone, in float32
    assert one > 4 * image  # the input, the activations of both convolutions...
    assert 3.5 < four / one < 4.5  # ...all per item: the weights are not counted


def test_the_default_batch_fills_half_the_free_memory(write_config, monkeypatch) -> None:
    path = write_config(tiny_config(param={"size": 32}))
    (item,) = expand(path, [], ["objective.channel=1"])
    need = memory_need(item.config, path.parent, [item])
    assert need is not None
    ((_, one, _),) = budget.pools(need, torch.device("cpu"))
    cap = sweep.MAX_BATCH["cpu"]
    for free, batch in [(3 * one / sweep.MEMORY_SHARE, 3), (0, 1), (10**15, cap), (None, cap)]:
        monkeypatch.setattr(budget, "free_memory", lambda device, free=free: free)
        assert sweep.default_batch(item, path.parent) == batch


def test_a_sweep_batch_over_the_available_memory_is_refused(cli, write_config, monkeypatch):
    path = write_config(tiny_config(param={"size": 32}))
    (item,) = expand(path, [], ["objective.channel=1"])
    need = memory_need(item.config, path.parent, [item])
    assert need is not None
    ((_, one, _),) = budget.pools(need, torch.device("cpu"))
    # room for 3 items: --batch 3 renders, --batch 4 is refused before anything is allocated
    monkeypatch.setattr(budget, "free_memory", lambda device: 3 * one)
    over = ["--over", "objective.channel=0:4", "--quiet"]
    assert cli("sweep", path, *over, "--batch", "3", "--out", "ok").exit_code == 0
    result = cli("sweep", path, *over, "--batch", "4", "--out", "big")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith(f"{path}:")
        and "param.size: a sweep batch of 4 items at 32x32 needs about" in line
    )
    assert line.endswith("are available: lower --batch or param.size")
    assert not list((Path("big")).glob("*.png"))


def test_out_of_memory_halves_the_batch_until_it_fits(write_config, workdir, monkeypatch):
    """An out-of-memory error in the loop (here injected above 2 items) splits the batch."""
    step = Renderer._step
    batches = []

    def step_or_oom(self, *args, **kwargs):
        batches.append(self.batch)
        if self.batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Renderer, "_step", step_or_oom)
    path = write_config(tiny_config(optim={"steps": 2}))
    folder, index = run_sweep(path, [], ["objective.channel=0:5"], workdir / "sw", 5)
    assert sorted(index) == [f"objective.channel={c}" for c in range(5)]
    assert all((folder / item["file"]).is_file() for item in index.values())
    assert sorted(set(batches)) == [1, 2, 3, 5]  # 5 -> 2 + 3 -> 2 + 1 + 2


def test_out_of_memory_with_one_item_fails_the_sweep(write_config, workdir, monkeypatch):
    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(Renderer, "_step", oom)
    path = write_config(tiny_config(optim={"steps": 2}))
    with pytest.raises(SweepFailed) as caught:
        run_sweep(path, [], ["objective.channel=0:2"], workdir / "sw", 2)
    assert caught.value.exit_code == 1  # the run started: exit 1, as a failed render
    assert str(caught.value) == (
        f"{path}: objective.channel=0: out of CPU memory with one item per optimization: lower "
        "param.size"
    )


def test_a_sweep_item_is_the_render_of_its_override(cli, write_config, workdir: Path) -> None:
    """`fvis render --set objective.channel=1` and the sweep's item objective.channel=1 make
    the same image (a sweep item's random stream is the render's image 0's): byte for byte
    when the item is optimized alone (in a batch, up to float rounding: see the test above)."""
    path = write_config(tiny_config(optim={"steps": 6}))
    render = cli("render", path, "--set", "objective.channel=1", "--out", "r", "--quiet")
    assert render.exit_code == 0, render.output
    over = ["--over", "objective.channel=0:3", "--batch", "1"]
    sweep_run = cli("sweep", path, *over, "--out", "sw", "--quiet")
    assert sweep_run.exit_code == 0, sweep_run.output
    image = (workdir / "r/image_0.png").read_bytes()
    assert (workdir / "sw/objective.channel=1.png").read_bytes() == image
    run = json.loads((workdir / "r/run.json").read_text())
    index = json.loads((workdir / "sw/sweep.json").read_text())["items"]
    assert index["objective.channel=1"]["objective"] == pytest.approx(
        run["final"]["objective"][0], abs=1e-6
    )


def test_a_full_disk_fails_the_sweep_and_keeps_what_is_indexed(
    cli, write_config, workdir, monkeypatch
):
    """The third write (the second batch's PNG) finds the disk full: exit 1, the first batch
    stays indexed, and a rerun renders only the rest."""
    writes = []

    def write_or_full(path: Path, data: bytes) -> None:
        writes.append(path.name)
        if len(writes) == 3:
            raise UserError(f"{path}: cannot write (No space left on device)")
        write_atomic(path, data)

    monkeypatch.setattr(sweep, "write_atomic", write_or_full)
    path = write_config(tiny_config(optim={"steps": 2}))
    args = ("sweep", path, "--over", "objective.channel=0:2", "--out", "sw", "--batch", "1", "-q")
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "sw/objective.channel=1.png: cannot write (No space left on device); rerun the sweep to "
        "render the rest"
    )
    assert list(sweep.read_index(workdir / "sw")) == ["objective.channel=0"]
    monkeypatch.setattr(sweep, "write_atomic", write_atomic)
    assert cli(*args).exit_code == 0
    assert sorted(sweep.read_index(workdir / "sw")) == [
        "objective.channel=0",
        "objective.channel=1",
    ]


def test_a_sweep_counts_its_items_on_a_progress_bar(cli, write_config) -> None:
    """One bar for the whole sweep (fed as optimizations arrive, from any worker), not a line
    per optimization; a rerun with nothing to render shows no bar."""
    path = write_config(tiny_config(optim={"steps": 4}))
    result = cli("sweep", path, "--over", "objective.channel=0:5", "--batch", "2")
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "5 items to render, up to 2 per optimization"
    assert re.search(r"^sweep \S+ .* 5/5 100% [\d.]+ items/s", lines[-1])
    assert not any("items (" in line for line in lines)
    again = cli("sweep", path, "--over", "objective.channel=0:5", "--batch", "2")
    assert again.exit_code == 0 and again.stderr.strip() == ""
