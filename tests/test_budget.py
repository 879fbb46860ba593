"""Renders too large for the machine are refused before anything big is allocated; the estimate
covers what a render holds without refusing the ordinary ones; cross-batch objectives at batch 1
are flagged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fvis import budget, build
from fvis.build import build_plan, memory_need
from fvis.config import load_config
from fvis.render import Renderer
from fvis.writers import grid

CPU = torch.device("cpu")
CONFIGS = Path(__file__).parent.parent / "configs"


def _line(path: Path, key: str) -> int:
    """The line of the first `key:` in a config file."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip().startswith(f"{key}:"))


def _total(need: budget.Need | None) -> int:
    assert need is not None
    ((_, total, _),) = budget.pools(need, CPU)
    return total


@pytest.mark.parametrize(
    ("size", "batch", "columns", "cell"),
    [((24, 24), 1, 4, 128), ((24, 40), 3, 2, 16), ((200, 100), 2, 5, 128), ((64, 64), 1, 1, 64)],
)
def test_grid_size_is_the_writers(size, batch, columns, cell) -> None:
    rows = [[torch.zeros(3, *size)] * columns] * batch
    sheet = grid(rows, ["c"] * columns, ["r"] * batch, cell)
    assert budget.grid_size(size, batch, columns, cell) == sheet.size


@pytest.mark.parametrize(
    "param",
    [
        {"kind": "pixel"},
        {"kind": "fft"},
        {"kind": "laplacian"},
        {"kind": "lowres"},
        {"kind": "cppn", "width": 32},
        {"kind": "maco"},
        {"kind": "fft", "alpha": True},
    ],
    ids=lambda p: p["kind"] + ("-alpha" if p.get("alpha") else ""),
)
@pytest.mark.parametrize(
    "transforms",
    [[{"kind": "standard"}], [{"kind": "bilateral", "sigma_space": 3}, {"kind": "blur"}]],
    ids=["standard", "filters"],
)
def test_the_estimate_covers_a_step_without_overshooting(write_config, param, transforms):
    """What one step of the real render saves (step_bytes), with its parameters, gradients
    and Adam's moments, is within the estimate, and the estimate is not far above it."""
    path = write_config(tiny_config(param={**param, "size": 40, "batch": 3}, transforms=transforms))
    config = load_config(path).config
    need = memory_need(config, path.parent)
    assert need is not None
    plan = build_plan(config, path.parent)
    saved = Renderer(plan).step_bytes()
    params = sum(p.numel() * p.element_size() for p in plan.param.parameters())
    held = budget.GRAD_COPIES * saved + budget.ADAM_COPIES * params
    assert held <= need.step + need.state <= 2 * held


@pytest.mark.parametrize("kind", ["fft", "cppn", "laplacian"])
def test_a_large_image_is_measured_small_and_scaled(write_config, kind) -> None:
    """Above MEASURE_PIXELS the item is measured at two smaller sizes and scaled: close to a
    measurement at the full size, never much below it."""
    size = (420, 360)
    assert size[0] * size[1] > budget.MEASURE_PIXELS
    path = write_config(tiny_config(param={"kind": kind}, transforms=[{"kind": "standard"}]))
    config = load_config(path).config
    start = build._start(config, path.parent, ())
    layers = [spec for specs in start.specs for spec in specs.values()]
    args = (start.network, layers, config.param, config.transforms, size, 3, CPU, torch.float32)
    scaled = budget.measure(*args)
    exact = budget._measure_at(*args, False, False)
    assert scaled is not None
    assert exact.saved <= scaled.saved <= 1.25 * exact.saved
    assert exact.params <= scaled.params <= 1.1 * exact.params + 1024


def test_a_render_over_the_available_memory_is_refused_before_allocating(
    cli, write_config, workdir: Path, monkeypatch
) -> None:
    path = write_config(tiny_config(param={"size": 32, "batch": 4}))
    need = _total(memory_need(load_config(path).config, path.parent))
    monkeypatch.setattr(budget, "free_memory", lambda device: need)
    assert cli("render", path, "--out", "fits", "--quiet").exit_code == 0  # at the boundary

    def no_allocation(*args, **kwargs):
        raise AssertionError("the image parameters were allocated")

    monkeypatch.setattr(budget, "free_memory", lambda device: need - 1)
    monkeypatch.setattr(build, "build_param", no_allocation)
    result = cli("render", path, "--out", "over", "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"{path}:{_line(path, 'size')}: param.size: 32x32 images in a batch of 4 need about "
        f"{budget.human(need)} of memory; {budget.human(need - 1)} are available: lower "
        "param.size or param.batch"
    ]
    assert not (workdir / "over").exists()


def test_the_issue_case_is_refused_at_once(cli, write_config, workdir: Path, monkeypatch) -> None:
    """param.size=4096 with param.batch=64 (an allocator traceback after 30-40 s and 5 GB):
    refused from a measurement of one small item, before the dry forward at 4096 px."""
    path = write_config(tiny_config())
    monkeypatch.setattr(budget, "free_memory", lambda device: 20 * 10**9)
    probes = []
    monkeypatch.setattr(build, "_probe", lambda *args: probes.append(args))
    start = time.perf_counter()
    result = cli("render", path, "--set", "param.size=4096", "--set", "param.batch=64")
    assert time.perf_counter() - start < 20
    assert result.exit_code == 2 and not probes
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"{path}: --set param.size=4096: param.size: 4096x4096 images in a batch of 64 need about "
    )
    assert line.endswith(" GB of memory; 20 GB are available: lower param.size or param.batch")
    assert not (workdir / "outputs").exists()


def test_a_grid_too_large_to_read_back_is_refused(cli, write_config, workdir: Path) -> None:
    """output.cell=2048 with 8 snapshots and a batch of 8 (a MemoryError in the grid writer,
    run.json left at 'running')."""
    path = write_config(
        tiny_config(output={"cell": 2048}, param={"size": 24, "batch": 8}, optim={"steps": 8})
    )
    result = cli("render", path, "--set", "optim.thresholds=[1,2,3,4,5,6,7,8]")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"{path}:{_line(path, 'cell')}: output.cell: grid.png would be 16568x16544 pixels "
        "(274 megapixels), over the limit of 89 megapixels (image readers take larger images for "
        "decompression bombs): lower output.cell (2048), param.batch (8) or the number of "
        "snapshots (8 columns: optim.thresholds)"
    ]
    assert not (workdir / "outputs").exists()
    # the largest image at batch 1 still passes
    w, h = budget.grid_size((4096, 4096), 1, 4, 128)
    assert w * h <= budget.MAX_GRID_PIXELS


@pytest.mark.parametrize(
    "path",
    sorted(
        [*CONFIGS.glob("*.yaml"), *CONFIGS.glob("objectives/*.yaml"), *CONFIGS.glob("data/*.yaml")]
    ),
    ids=lambda p: p.name,
)
def test_the_example_configs_need_little(path: Path) -> None:
    """Every example fits in 512 MB: the estimate refuses none on an ordinary machine."""
    assert _total(memory_need(load_config(path).config, path.parent)) < 512 * 10**6


def test_free_memory_reads_the_host(monkeypatch) -> None:
    free = budget.free_memory(CPU)
    assert free is None or free > 0
    monkeypatch.setattr(budget, "host_memory", lambda: None)
    assert budget.shortfall(budget.Need(10**18, 0, 0, 0), CPU) is None  # unknown: not refused
    monkeypatch.setattr(budget, "free_memory", lambda device: 10**9)
    assert budget.shortfall(budget.Need(2 * 10**9, 0, 0, 0), CPU) == (
        "about 2.0 GB of memory; 1.0 GB are available"
    )


# ----------------------------------------------------------------------------- batch of one


@pytest.mark.parametrize(
    ("objective", "warning"),
    [
        (
            "channel(conv2, 1) + diversity(conv2)",
            "diversity compares batch items: at param.batch=1 it scores 0 (set param.batch to 2 "
            "or more)",
        ),
        (
            {"kind": "interpolate", "start": "channel(conv2, 1)", "end": "channel(conv2, 2)"},
            "interpolate compares batch items: at param.batch=1 it renders its start only (set "
            "param.batch to 2 or more)",
        ),
    ],
    ids=["diversity", "interpolate"],
)
def test_a_cross_batch_objective_at_batch_one_is_a_warning(cli, write_config, objective, warning):
    path = write_config(tiny_config(objective=objective, param={"size": 24, "batch": 1}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"{path}:" in result.stderr and f": warning: {warning}" in result.stderr
    at_two = cli("render", path, "--set", "param.batch=2", "--quiet", "--force")
    assert at_two.exit_code == 0 and "warning" not in at_two.stderr


def test_an_objective_of_nothing_but_cross_batch_terms_is_refused_at_batch_one(
    cli, write_config, workdir: Path
) -> None:
    path = write_config(tiny_config(objective="diversity(conv2) + alignment(conv2)"))
    result = cli("render", path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"{path}:{_line(path, 'objective')}: objective: alignment and diversity compare batch "
        "items and score 0 at param.batch=1, so the objective leaves nothing to maximize: set "
        "param.batch to 2 or more"
    ]
    assert not (workdir / "outputs").exists()
    assert cli("render", path, "--set", "param.batch=2", "--quiet").exit_code == 0
