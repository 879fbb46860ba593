"""`fvis stats`: activation moments, whitening, class means and the colour matrix of a data
source, checked against the same numbers computed by hand on every activation held in memory."""

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

from conftest import tiny_config
from fvis import stats
from fvis.cli import app
from fvis.config import ZooModelSpec
from fvis.config.data import DATA
from fvis.data import Images, open_source
from fvis.errors import Interrupted
from fvis.models import build_network
from fvis.scan import Scan, layer_specs
from fvis.zoo.data import CLASSES
from fvis.zoo.stats import color_correlation_sqrt

LAYERS = ("conv3", "conv4", "logits")
COUNT = 256


class Held(Images):
    """Images held in memory (read once from a zoo source): passes over them cost only the
    network's forward."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__((images.shape[2], images.shape[3]), images.shape[1])
        self.images, self.labels, self.classes = images, labels, CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return f"held#{index}"

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def read(self, index: int) -> torch.Tensor:
        return self.images[index]


def _scan(images: Images, batch: int, layers: tuple[str, ...] = LAYERS) -> Scan:
    network = build_network(ZooModelSpec(name="shapes"), Path("."))
    specs = layer_specs(network, list(layers), {}, "--layers")
    return Scan(network, specs, images, batch, 0, identity={"batch": batch})


@pytest.fixture(scope="module")
def zoo() -> dict:
    """COUNT zoo images, their labels and every activation of LAYERS as [N, C, P] (float64),
    read with plain forward hooks; and the statistics of two passes at two batch sizes."""
    source = open_source(DATA.validate_python(f"zoo:shapes:{COUNT}"), Path("."), (64, 64), 3)
    images = torch.stack([source.read(i) for i in range(COUNT)])
    labels = torch.tensor([source.label(i) for i in range(COUNT)])
    held = Held(images, labels)
    scan = _scan(held, 64)
    captured: dict[str, torch.Tensor] = {}
    model = scan.network.model
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        )
        for name in LAYERS
    ]
    with torch.no_grad():
        scan.network(images)
    for handle in handles:
        handle.remove()
    acts = {name: x.double().reshape(*x.shape[:2], -1) for name, x in captured.items()}
    return {
        "images": images,
        "labels": labels,
        "held": held,
        "acts": acts,
        "stats": [stats.gather(scan)[0], stats.gather(_scan(held, 48))[0]],
    }


def _samples(x: torch.Tensor) -> torch.Tensor:
    """[N, C, P] -> [N * P, C]: every position of every image one sample."""
    return x.transpose(1, 2).reshape(-1, x.shape[1])


@pytest.mark.parametrize("which", [0, 1], ids=["batch64", "batch48"])
@pytest.mark.parametrize("layer", LAYERS)
def test_moments_equal_the_in_memory_computation(zoo: dict, which: int, layer: str) -> None:
    result = zoo["stats"][which].layers[layer]
    samples = _samples(zoo["acts"][layer])
    mean = samples.mean(0)
    cov = (samples - mean).T @ (samples - mean) / len(samples)
    assert result.samples == len(samples) and result.positions == zoo["acts"][layer].shape[2]
    torch.testing.assert_close(result.mean, mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(result.covariance, cov, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(result.std, samples.std(0, correction=0), rtol=1e-6, atol=1e-9)


def test_class_means_equal_hand_computed_means(zoo: dict) -> None:
    result = zoo["stats"][0]
    for layer in LAYERS:
        pooled = zoo["acts"][layer].mean(2)
        counts = torch.bincount(zoo["labels"], minlength=10)
        hand = torch.stack([pooled[zoo["labels"] == k].mean(0) for k in range(10)])
        assert torch.equal(result.layers[layer].class_counts, counts)
        torch.testing.assert_close(result.layers[layer].class_means, hand, rtol=1e-6, atol=1e-9)


def test_color_correlation_is_the_zoo_function_of_the_same_images(zoo: dict) -> None:
    expected = color_correlation_sqrt(zoo["images"])
    torch.testing.assert_close(zoo["stats"][0].color, expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(zoo["stats"][1].color, expected, rtol=0, atol=1e-8)


def test_whitened_covariance_is_the_identity_on_the_data_subspace(zoo: dict, tmp_path) -> None:
    """W Cov W^T, with W as written to the file (float32) and Cov computed by hand, is the
    projection onto the subspace of the covariance's kept eigenvectors: the identity there."""
    path = tmp_path / "s.safetensors"
    stats.write(path, zoo["stats"][0])
    whiten = load_file(path)["conv3.whiten"].double()
    samples = _samples(zoo["acts"]["conv3"])
    cov = torch.cov(samples.T, correction=0)
    assert torch.equal(whiten, whiten.T)
    values, vectors = torch.linalg.eigh(cov)
    rank = zoo["stats"][0].layers["conv3"].rank
    assert rank == int((values > stats.TOLERANCE * values.max()).sum())
    kept = vectors[:, -rank:]
    whitened = torch.cov((samples @ whiten.T).T, correction=0)
    assert (whitened - kept @ kept.T).abs().max() < 1e-3
    assert (kept.T @ whitened @ kept - torch.eye(rank, dtype=torch.float64)).abs().max() < 1e-3


def test_whitening_treats_dead_channels_as_zero() -> None:
    """A channel with no variance (a post-ReLU unit that never fires) is outside the rank and
    mapped to 0, where a plain inverse would be infinite."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=g, dtype=torch.float64) @ torch.randn(
        5, 5, generator=g, dtype=torch.float64
    )
    x[:, 2] = 0.0
    x[:, 4] = 1e-9 * torch.randn(500, generator=g, dtype=torch.float64)  # below the tolerance
    cov = torch.cov(x.T, correction=0)
    w, rank = stats.whitening(cov)
    assert rank == 3
    assert w[2].abs().max() < 1e-12 and w[:, 2].abs().max() < 1e-12 and torch.isfinite(w).all()
    kept = torch.tensor([0, 1, 3])
    torch.testing.assert_close(
        (w @ cov @ w.T)[kept][:, kept], torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0
    )


def test_a_resumed_pass_equals_an_uninterrupted_one(zoo: dict, tmp_path: Path) -> None:
    checkpoint = tmp_path / ".s.safetensors.partial.safetensors"
    held = Held(zoo["images"][:80], zoo["labels"][:80])
    whole, _ = stats.gather(_scan(held, 16, ("conv2", "logits")))
    batches = 0

    def interrupt(done: int, read: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="--resume"):
        stats.gather(_scan(held, 16, ("conv2", "logits")), checkpoint, progress=interrupt)
    with safe_open(str(checkpoint), "pt") as handle:
        assert handle.metadata()["seen"] == "48"
    reads: list[int] = []
    resumed, outcome = stats.gather(
        _scan(held, 16, ("conv2", "logits")),
        checkpoint,
        resume=True,
        progress=lambda done, read: reads.append(read),
    )
    assert reads == [16, 32] and outcome.seen == 80
    a, b = whole.tensors(), resumed.tensors()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- the command


def _folder(root: Path, classes: dict[str, int], channels: str = "RGB") -> Path:
    """PNG files of random colours under root/CLASS/ (CLASS '' for loose files)."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(channels).save(root / name / f"{i}.png")
    return root


def _tiny(write_config, **model: object) -> Path:
    spec = {"source": "factory", "factory": "tinynets:convnet", "input": {"size": 24}, **model}
    return write_config(tiny_config(model=spec))


def test_command_writes_the_keys_and_refuses_to_overwrite(cli, write_config, workdir) -> None:
    config = _tiny(write_config)
    data = _folder(workdir / "photos", {"a": 5, "b": 4, "c": 0})
    result = cli("stats", config, "--data", data, "--layers", "conv2,6", "-q", "--batch", "4")
    assert result.exit_code == 0, result.output
    path = workdir / "outputs/cfg-stats.safetensors"
    assert result.stdout.strip().splitlines()[-1] == str(Path("outputs/cfg-stats.safetensors"))
    assert "no images of class c" not in result.stderr  # an empty folder is no class
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        keys = set(handle.keys())
    layers = ("conv2", "6")
    parts = ("mean", "std", "covariance", "whiten", "class_means", "class_counts")
    assert keys == {f"{layer}.{part}" for layer in layers for part in parts} | {"color_correlation"}
    assert meta["format"] == "fvis-stats-1" and meta["images"] == "9"
    assert json.loads(meta["classes"]) == ["a", "b"]
    assert json.loads(meta["layers"]) == {"conv2": "2", "6": "6"}
    assert json.loads(meta["data"])["source"] == "folder"
    assert set(json.loads(meta["ranks"])) == {"conv2", "6"}
    assert load_file(path)["conv2.class_counts"].tolist() == [5, 4]
    again = cli("stats", config, "--data", data, "--layers", "conv2", "-q")
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"{Path('outputs/cfg-stats.safetensors')}: exists; pass --force to replace it, or "
        "--out FILE"
    )
    forced = cli("stats", config, "--data", data, "--layers", "conv2", "-q", "--force")
    assert forced.exit_code == 0, forced.output
    assert set(load_file(path)) == {f"conv2.{part}" for part in parts} | {"color_correlation"}


def test_unlabelled_and_grey_data_skip_what_they_cannot_give(cli, write_config, workdir) -> None:
    config = _tiny(write_config, kwargs={"channels": 1}, input={"size": 24, "channels": 1})
    data = _folder(workdir / "loose", {"": 6}, channels="L")
    out = workdir / "grey.safetensors"
    result = cli("stats", config, "--data", data, "--layers", "conv2", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert "note: the images are unlabelled: no class_means written" in result.stderr
    assert "note: 1-channel images: no color_correlation written" in result.stderr
    assert set(load_file(out)) == {"conv2.mean", "conv2.std", "conv2.covariance", "conv2.whiten"}


def test_output_must_be_a_safetensors_file(cli, write_config, workdir) -> None:
    config = _tiny(write_config)
    data = _folder(workdir / "photos", {"a": 2})
    result = cli("stats", config, "--data", data, "--layers", "conv2", "-o", "s.pt", "-q")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "s.pt: the file must end in .safetensors (configs read it by its suffix)"
    )


def test_configs_read_the_keys_and_render(cli, write_config, workdir, zoo: dict) -> None:
    """A whitened direction towards a class's mean activation vector, in the data's colours:
    every key a config names loads (keys hold dots), and the objective rises."""
    stats.write(workdir / "stats.safetensors", zoo["stats"][0])
    config = {
        "model": {"source": "zoo", "name": "shapes"},
        "objective": {
            "kind": "direction",
            "layer": "conv3",
            "vector": {"file": "stats.safetensors", "key": "conv3.class_means", "index": 3},
            "transform": {"file": "stats.safetensors", "key": "conv3.whiten"},
        },
        "param": {"size": 64, "decorrelate": "stats.safetensors"},
        "optim": {"steps": 16, "lr": 0.05},
    }
    result = cli("render", write_config(config), "--quiet")
    assert result.exit_code == 0, result.output
    run = json.loads((workdir / "outputs/cfg/run.json").read_text())
    assert run["final"]["objective"][0] > run["initial"]["objective"][0] + 1.0


def test_every_option_has_help(cli) -> None:
    result = cli("stats", "--help")
    assert result.exit_code == 0
    command = typer.main.get_command(app).commands["stats"]  # type: ignore[attr-defined]
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help and param.opts[0] in result.stdout, param.opts
