"""Tests of the zoo registry, the verified loader and the shipped shapes model."""

from __future__ import annotations

import dataclasses
import hashlib
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import fvis.zoo
from fvis.zoo import MODELS, ZooModel, load, load_from, sha256_file
from fvis.zoo.data import CLASSES, generate
from fvis.zoo.stats import channel_stats, color_correlation_sqrt
from fvis.zoo.train import evaluate, normalize

TEST_SEED = 424_242
"""Not a training seed (0) nor the held-out seed (0 + 1_000_000)."""


def _weights_path() -> Path:
    return Path(str(resources.files(fvis.zoo) / MODELS["shapes"].weights))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load("shapes")


def test_registry_entry_describes_the_model() -> None:
    entry = MODELS["shapes"]
    assert isinstance(entry, ZooModel)
    assert entry.classes == CLASSES
    assert entry.input_size == (64, 64)
    assert entry.value_range == (0.0, 1.0)
    assert entry.layer_names == ("conv1", "conv2", "conv3", "conv4", "logits")
    assert all(description for _, description in entry.layers)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.name = "other"  # type: ignore[misc]


def test_load_returns_frozen_eval_model(model: torch.nn.Module) -> None:
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_model_accepts_other_input_sizes(model: torch.nn.Module) -> None:
    assert model(torch.zeros(1, 3, 96, 80)).shape == (1, 10)


def test_registry_layers_are_modules_of_the_net(model: torch.nn.Module) -> None:
    names = dict(model.named_modules())
    for layer in MODELS["shapes"].layer_names:
        assert layer in names, layer


def test_conv_blocks_end_in_relu(model: torch.nn.Module) -> None:
    seen: dict[str, torch.Tensor] = {}
    handle = model.get_submodule("conv2").register_forward_hook(
        lambda _m, _i, out: seen.setdefault("out", out)
    )
    model(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert seen["out"].shape == (1, 32, 32, 32)
    assert float(seen["out"].min()) >= 0.0


def test_shipped_model_accuracy_on_fresh_heldout(model: torch.nn.Module) -> None:
    images, labels = generate(500, seed=TEST_SEED)
    accuracy, per_class = evaluate(model, images, labels)
    print(f"\nheld-out accuracy {accuracy:.2%}; per class {per_class}")
    assert accuracy >= 0.99


def test_normalize_uses_registry_stats() -> None:
    entry = MODELS["shapes"]
    out = normalize(torch.tensor(entry.mean).view(1, 3, 1, 1).expand(1, 3, 4, 4))
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-6)


def test_weights_file_is_small_and_matches_registry_sha() -> None:
    path = _weights_path()
    assert path.stat().st_size < 5 * 1024 * 1024
    assert sha256_file(path) == MODELS["shapes"].sha256


def test_weights_file_carries_training_metadata() -> None:
    with safe_open(str(_weights_path()), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["model"] == "shapes"
    assert float(metadata["heldout_accuracy"]) >= 0.99


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"fvis" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"fvis" * 1000).hexdigest()


def test_tampered_weights_are_rejected(tmp_path: Path) -> None:
    data = bytearray(_weights_path().read_bytes())
    data[-1] ^= 0xFF
    tampered = tmp_path / "shapes.safetensors"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_from(MODELS["shapes"], tampered)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="Did you mean 'shapes'"):
        load("shape")


def test_unknown_name_without_close_match_lists_models() -> None:
    with pytest.raises(ValueError, match="available: shapes"):
        load("resnet50")


def test_registry_colour_stats_match_generated_data() -> None:
    entry = MODELS["shapes"]
    images, _ = generate(1000, seed=TEST_SEED)
    mean, std = channel_stats(images)
    assert torch.allclose(mean.float(), torch.tensor(entry.mean), atol=0.01)
    assert torch.allclose(std.float(), torch.tensor(entry.std), atol=0.01)
    root = color_correlation_sqrt(images).float()
    stored = torch.tensor(entry.color_correlation)
    assert torch.allclose(root @ root.T, stored @ stored.T, atol=0.02)
    assert float(stored.norm(dim=0).max()) == pytest.approx(1.0, abs=1e-3)
