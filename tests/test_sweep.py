"""Sweeps: batched items equal items rendered alone; folders resume; values parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fvis.build import build_plan
from fvis.errors import UserError
from fvis.render import Renderer
from fvis.sweep import expand, groups, parse_over


def test_parse_over() -> None:
    assert parse_over("objective.channel=0:4") == ("objective.channel", [0, 1, 2, 3])
    assert parse_over("a.b=10:0:-5") == ("a.b", [10, 5])
    assert parse_over("param.decay=0.5,1,1.5") == ("param.decay", [0.5, 1, 1.5])
    assert parse_over("param.kind=fft") == ("param.kind", ["fft"])
    with pytest.raises(UserError, match="expected path=values"):
        parse_over("objective.channel")
    with pytest.raises(UserError, match="no values"):
        parse_over("x=3:3")


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
    assert "4/4 items" in second.stderr and "2/4" not in second.stderr  # only 2 were rendered
    assert (folder / "objective.channel=0.png").stat().st_mtime_ns == stamp
    index = json.loads((folder / "sweep.json").read_text())["items"]
    assert sorted(index) == [f"objective.channel={c}" for c in range(4)]
    assert (folder / "sheet.png").stat().st_size > 0
    assert second.stdout.strip() == str(Path("sw/sheet.png"))


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
    from fvis import sweep

    path = write_config(tiny_config(param={"size": 32}))
    (item,) = expand(path, [], ["objective.channel=1"])
    need = 2 * Renderer(build_plan(item.config, path.parent, [item])).step_bytes()
    cap = sweep.MAX_BATCH["cpu"]
    for free, batch in [(3 * need / sweep.MEMORY_SHARE, 3), (0, 1), (10**15, cap), (None, cap)]:
        monkeypatch.setattr(sweep, "free_memory", lambda device, free=free: free)
        assert sweep.default_batch(item, path.parent) == batch
