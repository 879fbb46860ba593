"""End to end: `fvis render` on a tiny model writes what it promises, reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import tiny_config
from fvis.config import load_config


def _render(cli, write_config, config: dict, *args: str, name: str = "cfg.yaml"):
    path = write_config(config, name)
    return cli("render", path, "--quiet", *args)


def test_channel_objective_rises_on_a_random_net(cli, write_config, workdir) -> None:
    """A random net responds weakly; the trained zoo model's test asks for much more."""
    config = tiny_config(
        hooks={"relu2": "3"},
        objective={"kind": "channel", "layer": "relu2", "channel": 8},
        optim={"steps": 48, "lr": 0.3},
    )
    result = _render(cli, write_config, config)
    assert result.exit_code == 0, result.output
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    before = run["initial"]["terms"]["channel(3, 8)"][0]
    after = run["final"]["terms"]["channel(3, 8)"][0]
    assert after > 1.2 * before > 0, (before, after)
    assert run["status"] == "complete" and run["steps"] == 48
    history = run["history"]
    assert history["steps"] == list(range(1, 49))
    assert len(history["mean_objective"]) == 48
    assert len(history["per_item"]["channel(3, 8)"]) == 48  # steps x items
    assert len(history["per_item"]["channel(3, 8)"][0]) == 1


def test_outputs_and_metadata(cli, write_config, workdir) -> None:
    config = tiny_config(
        param={"size": [24, 32], "batch": 3}, optim={"steps": 6, "thresholds": [2, 4]}
    )
    result = _render(cli, write_config, config)
    assert result.exit_code == 0, result.output
    run_dir = workdir / "outputs/cfg"
    assert result.stdout.strip() == str(Path("outputs/cfg/grid.png"))
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml",
        "curves.png",
        "grid.png",
        "image_0.png",
        "image_1.png",
        "image_2.png",
        "run.json",
    ]
    assert Image.open(run_dir / "image_1.png").size == (32, 24)
    grid = Image.open(run_dir / "grid.png")
    # 3 rows of 4x-upscaled 24x32 images, 3 columns (steps 2, 4, 6), plus labels
    assert grid.size == (40 + 3 * (128 + 2), 16 + 3 * (96 + 2))
    run = json.loads((run_dir / "run.json").read_text())
    assert [s["step"] for s in run["snapshots"]] == [0, 2, 4, 6]
    assert set(run["versions"]) == {"fvis", "torch", "torchvision", "python"}
    assert run["device"] == "cpu" and run["seed"] == 0
    assert run["seconds_per_step"] > 0
    assert len(run["final"]["objective"]) == 3
    assert run["config"]["param"]["batch"] == 3
    # the resolved config is itself a valid config
    assert load_config(run_dir / "config.yaml").config.param.size == (24, 32)


def test_same_seed_same_bytes_other_seed_other_image(cli, write_config, workdir) -> None:
    config = tiny_config(optim={"steps": 10}, param={"size": 24, "batch": 2})
    for out in ("a", "b"):
        assert _render(cli, write_config, config, "--out", out).exit_code == 0
    assert _render(cli, write_config, {**config, "seed": 7}, "--out", "c").exit_code == 0
    for name in ("grid.png", "image_0.png", "image_1.png"):
        assert (workdir / "a" / name).read_bytes() == (workdir / "b" / name).read_bytes()
    assert (workdir / "a/image_0.png").read_bytes() != (workdir / "c/image_0.png").read_bytes()


def test_existing_run_folder_needs_force(cli, write_config, workdir) -> None:
    config = tiny_config(optim={"steps": 2})
    assert _render(cli, write_config, config).exit_code == 0
    again = _render(cli, write_config, config)
    assert again.exit_code == 2
    assert again.stderr == (
        "outputs/cfg: run folder exists; pass --force to overwrite it or --out DIR\n"
    )
    assert _render(cli, write_config, config, "--force").exit_code == 0


def test_grayscale_model(cli, write_config, workdir) -> None:
    config = tiny_config(
        model={
            "source": "factory",
            "factory": "tinynets:convnet",
            "kwargs": {"channels": 1},
            "input": {"channels": 1},
        },
        param={"size": 24, "decorrelate": False},
        optim={"steps": 3},
    )
    result = _render(cli, write_config, config)
    assert result.exit_code == 0, result.output
    assert Image.open(workdir / "outputs/cfg/image_0.png").mode == "L"


def test_regularizers_are_subtracted(cli, write_config, workdir) -> None:
    config = tiny_config(
        regularizers=[{"kind": "total_variation", "weight": 0.01}], optim={"steps": 3}
    )
    assert _render(cli, write_config, config).exit_code == 0
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    assert run["objective"] == "channel(2, 3) - 0.01 * total_variation(image)"
    terms = run["final"]["terms"]
    total = terms["channel(2, 3)"][0] - 0.01 * terms["total_variation(image)"][0]
    assert abs(run["final"]["objective"][0] - total) < 1e-5


def test_branching_model_and_batch_selection(cli, write_config, workdir) -> None:
    config = tiny_config(
        model={"source": "factory", "factory": "tinynets:branchy"},
        hooks={},
        objective={
            "kind": "sum",
            "terms": [
                {"kind": "channel", "layer": "left", "channel": 1, "batch": 0},
                {"kind": "neuron", "layer": "right", "channel": 2, "batch": [1], "weight": 2},
            ],
        },
        param={"size": 16, "batch": 2},
        optim={"steps": 4},
    )
    assert _render(cli, write_config, config).exit_code == 0
    final = json.loads((workdir / "outputs/cfg/run.json").read_text())["final"]
    assert final["terms"]["channel(left, 1)"][1] != 0  # terms are reported unmasked...
    channel, neuron = final["terms"]["channel(left, 1)"], final["terms"]["neuron(right, 2)"]
    assert abs(final["objective"][0] - channel[0]) < 1e-5  # ...the objective is masked
    assert abs(final["objective"][1] - 2 * neuron[1]) < 1e-5


def test_a_full_disk_is_a_failed_run_with_nothing_half_written(
    cli, write_config, workdir, monkeypatch
) -> None:
    import errno
    import os

    from fvis import io

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "replace", full)
    result = _render(cli, write_config, tiny_config(optim={"steps": 2}))
    assert result.exit_code == 1  # the run started, and failed
    assert result.stderr.strip().splitlines()[-1] == (
        "cfg: outputs/cfg/grid.png: cannot write (No space left on device) at step 1; "
        "nothing was kept"
    )
    assert not (workdir / "outputs").exists()  # no temporary, no lock file, no empty folder


def test_precision_off_cuda_warns_and_channels_last_changes_nothing(
    cli, write_config, workdir
) -> None:
    config = tiny_config(optim={"steps": 6, "precision": "bf16", "channels_last": False})
    result = _render(cli, write_config, config, "--out", "a")
    assert result.exit_code == 0, result.output
    assert "warning: bf16 applies on CUDA only; cpu runs in fp32" in result.stderr
    config["optim"]["channels_last"] = True
    assert _render(cli, write_config, config, "--out", "b").exit_code == 0
    a = json.loads((workdir / "a/run.json").read_text())["final"]["objective"][0]
    b = json.loads((workdir / "b/run.json").read_text())["final"]["objective"][0]
    assert abs(a - b) < 1e-4


@pytest.mark.slow
def test_compiled_network_renders_the_same(cli, write_config, workdir) -> None:
    config = tiny_config(optim={"steps": 6})
    assert _render(cli, write_config, config, "--out", "a").exit_code == 0
    config["optim"]["compile"] = True
    assert _render(cli, write_config, config, "--out", "b").exit_code == 0
    a = json.loads((workdir / "a/run.json").read_text())["final"]["objective"][0]
    b = json.loads((workdir / "b/run.json").read_text())["final"]["objective"][0]
    assert abs(a - b) < 1e-3


def test_cudnn_benchmark_holds_during_the_run_only(workdir) -> None:
    import torch

    from fvis.build import build_plan
    from fvis.config import Config
    from fvis.render import Renderer

    seen = []
    config = Config.model_validate(tiny_config(optim={"steps": 3, "cudnn_benchmark": True}))
    plan = build_plan(config, workdir)
    before = torch.backends.cudnn.benchmark
    Renderer(plan).run(lambda step, value: seen.append(torch.backends.cudnn.benchmark))
    assert seen and all(seen)
    assert torch.backends.cudnn.benchmark is before


@pytest.mark.parametrize(("setting", "expected"), [("auto", True), (True, True), (False, False)])
def test_channels_last_is_on_by_default_on_the_cpu(workdir, setting, expected) -> None:
    import torch

    from fvis.build import build_plan
    from fvis.config import Config

    config = Config.model_validate(tiny_config(optim={"channels_last": setting}))
    weight = build_plan(config, workdir).network.model[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) is expected
    assert weight.is_contiguous() is not expected


def test_float64_renders_in_double_from_the_same_start(workdir) -> None:
    """optim.float64 moves the network, image parameters, objective tensors and Adam to double
    precision; the run starts from the float32 run's image and ends close to it."""
    import torch

    from fvis.build import build_plan
    from fvis.config import Config
    from fvis.render import Renderer

    vector = {"random": 3}
    objective = {"kind": "direction", "layer": "conv2", "vector": vector}
    results, plans = {}, {}
    for double in (False, True):
        config = Config.model_validate(
            tiny_config(objective=objective, optim={"steps": 4, "float64": double})
        )
        plans[double] = plan = build_plan(config, workdir)
        results[double] = Renderer(plan).run()
    plan = plans[True]
    assert {p.dtype for p in plan.param.parameters()} == {torch.float64}
    assert {p.dtype for p in plan.network.parameters()} == {torch.float64}
    (leaf,) = plan.objective.leaves()
    assert {v.dtype for v in vars(leaf).values() if isinstance(v, torch.Tensor)} == {torch.float64}
    assert {p.dtype for p in plans[False].param.parameters()} == {torch.float32}
    single, double = results[False], results[True]
    assert double.final.images.dtype == torch.float32  # snapshots are written as before
    assert torch.allclose(single.initial.images, double.initial.images, atol=1e-6)
    assert not torch.equal(single.final.images, double.final.images)
    assert abs(single.final.objective[0] - double.final.objective[0]) < 0.05 * abs(
        single.final.objective[0]
    )


def test_the_learning_rate_anneals_along_a_half_cosine(workdir) -> None:
    """optim.lr_end: Adam steps with lr at step 1, lr_end at the last, their mean halfway
    ((1 + cos(pi t)) / 2 of the way down at t = (step - 1) / (steps - 1)); unset, lr throughout."""
    from fvis.build import build_plan
    from fvis.config import Config
    from fvis.render import Renderer

    used = {}
    for lr_end in (None, 0.01):
        optim = {"steps": 5, "lr": 0.05, "lr_end": lr_end}
        renderer = Renderer(build_plan(Config.model_validate(tiny_config(optim=optim)), workdir))
        adam, rates = renderer.adam, used.setdefault(lr_end, [])

        def record(adam=adam, step=adam.step, rates=rates) -> None:
            rates.append(adam.param_groups[0]["lr"])
            step()

        adam.step = record
        renderer.run()
    assert used[None] == [0.05] * 5
    # step 2: t = 1/4, 0.01 + 0.04 * (1 + cos(pi/4)) / 2 = 0.044142
    assert used[0.01] == pytest.approx([0.05, 0.044142, 0.03, 0.015858, 0.01], abs=1e-6)


def test_an_annealed_learning_rate_changes_the_render(cli, write_config, workdir) -> None:
    config = tiny_config(optim={"steps": 12, "lr": 0.1})
    assert _render(cli, write_config, config, "--out", "constant").exit_code == 0
    config["optim"]["lr_end"] = 0.0
    assert _render(cli, write_config, config, "--out", "annealed").exit_code == 0
    constant, annealed = (
        (workdir / name / "image_0.png").read_bytes() for name in ("constant", "annealed")
    )
    assert constant != annealed
    run = json.loads((workdir / "annealed/run.json").read_text())
    assert run["config"]["optim"]["lr_end"] == 0.0
