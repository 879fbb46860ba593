"""`fvis probe train`: a linear probe on pooled activations, its accuracy, its weights checked
by hand, and configs whose objectives read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_config
from fvis import probe
from fvis.cli import app
from fvis.config import ZooModelSpec, load_config
from fvis.models import build_network
from fvis.zoo import data

COUNT = 320


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`fvis probe train` on conv2 and conv4 of the built-in model over COUNT zoo images."""
    folder = tmp_path_factory.mktemp("probe")
    config = folder / "cfg.yaml"
    config.write_text("model: {source: zoo, name: shapes}\nseed: 3\n")
    out = folder / "probe.safetensors"
    args = ["probe", "train", config, "--data", f"zoo:shapes:{COUNT}", "--layers", "conv2,conv4"]
    result = CliRunner().invoke(app, [*map(str, args), "-o", str(out), "-q", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return {"folder": folder, "config": config, "out": out, "result": result}


def _pooled(layer: str, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoo images' activations at `layer` averaged over positions [N, C] (float64), from a
    plain forward hook, and their labels."""
    network = build_network(ZooModelSpec(name="shapes"), Path("."))
    images = torch.stack([data.image(1, int(i)) for i in indices])
    labels = torch.tensor([data.label(1, int(i)) for i in indices])
    captured = []
    handle = network.model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out)
    )
    with torch.no_grad():
        network(images)
    handle.remove()
    return captured[0].double().mean((2, 3)), labels


def test_heldout_accuracy_and_the_weights_by_hand(trained: dict) -> None:
    """The held-out accuracy on conv4 is at least 95 %, and the written weights applied by hand
    to the held-out images' pooled activations give the accuracy the file and the table
    report."""
    with safe_open(str(trained["out"]), "pt") as handle:
        meta = handle.metadata()
    tensors = load_file(trained["out"])
    assert set(tensors) == {"conv2.weight", "conv2.bias", "conv4.weight", "conv4.bias"}
    assert tensors["conv4.weight"].shape == (10, 64) and tensors["conv4.bias"].shape == (10,)
    assert meta["format"] == "fvis-probe-1" and len(json.loads(meta["classes"])) == 10
    assert (meta["train_images"], meta["heldout_images"]) == ("256", "64")
    accuracy = json.loads(meta["accuracy"])
    assert accuracy["conv4"]["heldout"] >= 0.95
    _, held_at = probe.split(COUNT, 0.2, seed=3)
    x, labels = _pooled("conv4", held_at)
    logits = x @ tensors["conv4.weight"].double().T + tensors["conv4.bias"].double()
    hits = logits.argmax(1) == labels
    assert float(hits.double().mean()) == pytest.approx(accuracy["conv4"]["heldout"])
    row = next(line for line in trained["result"].stdout.splitlines() if line.startswith("conv4"))
    assert row.split("\t")[:4] == [
        "conv4",
        "64",
        f"{100 * accuracy['conv4']['train']:.1f} %",
        f"{100 * accuracy['conv4']['heldout']:.1f} %",
    ]


def test_the_fit_folds_standardization_into_the_weights() -> None:
    """Logits on raw features equal the standardized model's; deterministic; a class without
    training images is never predicted."""
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = torch.arange(90) % 3 * 2  # classes 0, 2 and 4 of 5
    x = 100 + 10 * (centres[y // 2] + torch.randn(90, 6, generator=g, dtype=torch.float64))
    x[:, 5] = 7.0  # a constant channel
    a, b = probe.fit(x, y, 5), probe.fit(x, y, 5)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.gradient < 1e-6
    assert a.weight[[1, 3]].abs().max() == 0 and (a.bias[[1, 3]] == probe.ABSENT_BIAS).all()
    assert (a.predict(x) == y).all()
    assert a.weight[:, 5].abs().max() < 1e-12


def test_probe_weights_drive_activation_weights_and_facet(trained: dict) -> None:
    folder = trained["folder"]
    weights = {"file": "probe.safetensors", "key": "conv4.weight", "index": 3}
    facet = {"file": "probe.safetensors", "key": "conv2.weight", "index": 3}
    configs = {
        "weights": {"kind": "activation_weights", "layer": "conv4", "weights": weights},
        "facet": {
            "kind": "facet",
            "ultimate": "conv4",
            "layer": "conv2",
            "vector": weights,
            "weights": facet,
        },
    }
    for name, objective in configs.items():
        config = folder / f"{name}.yaml"
        config.write_text(
            json.dumps(
                {
                    "model": {"source": "zoo", "name": "shapes"},
                    "objective": objective,
                    "param": {"size": 64},
                    "optim": {"steps": 16, "lr": 0.05},
                }
            )
        )
        assert load_config(config).config.objective is not None
        out = folder / name
        result = CliRunner().invoke(app, ["render", str(config), "-o", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        run = json.loads((out / "run.json").read_text())
        assert run["final"]["objective"][0] > run["initial"]["objective"][0] + 0.1, name


def test_unlabelled_data_and_existing_files_are_refused(cli, write_config, workdir) -> None:
    loose = workdir / "loose"
    loose.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(loose / f"{i}.png")
    model = {"source": "factory", "factory": "tinynets:convnet", "input": {"size": 24}}
    config = write_config(tiny_config(model=model))
    result = cli("probe", "train", config, "--data", loose, "--layers", "conv2", "-q")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "the images are unlabelled: a probe needs images of at least 2 classes (class = "
        "sub-folder: FOLDER/CLASS/IMAGE, imagefolder:ROOT, or zoo:NAME)"
    )
    assert not (workdir / "outputs").exists()  # a refused command leaves no folder behind
    (workdir / "outputs").mkdir()
    (workdir / "outputs/cfg-probe.safetensors").write_bytes(b"")
    result = cli("probe", "train", config, "--data", "zoo:shapes:8", "--layers", "conv2", "-q")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"{Path('outputs/cfg-probe.safetensors')}: exists; pass --force to replace it, or "
        "--out FILE"
    )


def test_every_option_has_help(cli) -> None:
    result = cli("probe", "train", "--help")
    assert result.exit_code == 0
    group = typer.main.get_command(app).commands["probe"]  # type: ignore[attr-defined]
    for param in group.commands["train"].params:
        if param.param_type_name == "option":
            assert param.help and param.opts[0] in result.stdout, param.opts
