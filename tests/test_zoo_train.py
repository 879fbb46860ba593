"""Tests of ShapesNet training: a quick determinism check and a slow full reproduction."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from safetensors import safe_open

import fvis.zoo
from fvis.zoo import MODELS, load_from, sha256_file
from fvis.zoo.data import CLASSES, generate
from fvis.zoo.train import evaluate, train

SHIPPED_SEED = 0


def _shipped() -> Path:
    return Path(str(resources.files(fvis.zoo) / MODELS["shapes"].weights))


def test_short_runs_are_byte_identical(tmp_path: Path) -> None:
    first = train(seed=3, steps=4, batch=20, heldout=50, out=tmp_path / "a.safetensors")
    second = train(seed=3, steps=4, batch=20, heldout=50, out=tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert first["heldout_accuracy"] == second["heldout_accuracy"]
    assert set(first["per_class_accuracy"]) == set(CLASSES)
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as handle:
        assert handle.metadata()["seed"] == "3"


@pytest.mark.slow
def test_full_training_reproduces_shipped_weights(tmp_path: Path) -> None:
    out = tmp_path / "shapes.safetensors"
    metrics = train(seed=SHIPPED_SEED, out=out)
    print(f"\ntrained in {metrics['seconds']:.0f} s, held-out {metrics['heldout_accuracy']:.2%}")
    assert metrics["heldout_accuracy"] >= 0.99
    if sha256_file(out) == MODELS["shapes"].sha256:
        print("byte-identical to the shipped weights")
        return
    print("not byte-identical (other CPU or torch version?): comparing accuracy")
    shipped = load_from(MODELS["shapes"], _shipped())
    images, labels = generate(2000, seed=SHIPPED_SEED + 1_000_000)
    shipped_accuracy, _ = evaluate(shipped, images, labels)
    assert abs(metrics["heldout_accuracy"] - shipped_accuracy) <= 0.005
