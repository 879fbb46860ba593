"""`fvis atlas`: the command over the built-in model and a tiny unlabelled one, and its errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny_config
from fvis import atlas

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
FAST = ["--set", "optim.steps=8", "--workers", "0", "--quiet"]


def test_atlas_of_the_built_in_model(tmp_path: Path, cli: Callable[..., object]) -> None:
    out = tmp_path / "atlas"
    args = ["atlas", QUICKSTART, "--data", "zoo:shapes:200", "--layer", "conv4", "--grid", "4"]
    result = cli(*args, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "atlas.png"), str(out / "atlas.json")]
    index = json.loads((out / "atlas.json").read_text())
    assert index["parameters"]["layer"] == "conv4" and index["vectors"] == 200
    assert index["data"]["count"] == 200 and index["model"]["name"] == "shapes"
    assert index["render"]["render_row_0"].startswith("fvis render ")
    assert index["measures"]["render_class"]["share"] >= 0
    tensors = load_file(str(out / "atlas.safetensors"))
    assert tensors["directions"].shape == (len(index["cells"]), 64)
    assert Image.open(out / "atlas.png").size == (256, 256)
    assert not (out / atlas.CHECKPOINT).exists()
    again = cli(*args, "--out", out, *FAST)  # the folder exists: refused without --force
    assert again.exit_code == 2 and "pass --force" in again.stderr
    done = cli(*args, "--out", out, "--resume", *FAST)  # a finished atlas has no checkpoint
    assert done.exit_code == 2 and "no checkpoint to resume from" in done.stderr


def test_a_class_atlas_keeps_only_positions_that_drive_the_class(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    out = tmp_path / "red"
    result = cli(
        "atlas", QUICKSTART, "--data", "zoo:shapes:100", "--layer", "conv4", "--grid", "3",
        "--class", "red", "--per-image", "4", "--out", out, "--set", "optim.steps=8",
        "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cells of conv4 for class red from" in result.stderr  # the summary
    index = json.loads((out / "atlas.json").read_text())
    assert index["parameters"]["class"] == 7 and index["parameters"]["class_name"] == "red"
    tensors = load_file(str(out / "atlas.safetensors"))
    assert (tensors["attributions"] > 0).all()
    assert 10 <= len(tensors["vectors"]) <= 400


def test_an_unlabelled_atlas_of_a_tiny_model(
    workdir: Path, write_config: Callable[..., Path], cli: Callable[..., object]
) -> None:
    rng = np.random.default_rng(0)
    photos = workdir / "photos"
    photos.mkdir()
    for i in range(12):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    config = write_config(tiny_config())
    args = ["atlas", config, "--data", photos, "--layer", "conv2", "--grid", "2", "--out", "a"]
    result = cli(*args, "--class", "1", "--per-image", "8", "--min-count", "1", *FAST)
    assert result.exit_code == 0, result.output
    index = json.loads((workdir / "a" / "atlas.json").read_text())
    assert index["classes"] == [] and {c["class"] for c in index["cells"]} == {-1}
    assert index["measures"] == {"render_class": None, "distances": None}
    named = cli(*args, "--class", "cat", "--force", *FAST)
    assert named.exit_code == 2
    lines = named.stderr.strip().splitlines()  # the note that the config runs your code, then
    assert lines[1].startswith("--class 'cat': the data is unlabelled and the model names no")
    assert len(lines) == 2 and "note: runs your code" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "conv9"], "unknown layer 'conv9'"),
        (["--grid", "1"], "--grid 1: expected 2 to 64 cells a side"),
        (["--grid", "65"], "--grid 65: expected 2 to 64 cells a side"),
        (["--class", "12"], "--class 12: the model has 10 classes (0 to 9)"),
        (["--class", "reed"], "--class 'reed': no class of that name; did you mean 'red'"),
        (["--logits", "conv9"], "--logits conv9: unknown layer"),
        (["--class", "1", "--logits", "conv3"], "--logits conv3: an output of shape"),
        (["--resume", "--force"], "--resume goes on from a checkpoint, --force starts again"),
    ],
)
def test_atlas_errors_are_one_line(
    tmp_path: Path, cli: Callable[..., object], args: list[str], message: str
) -> None:
    if "--layer" not in args:
        args = [*args, "--layer", "conv4"]
    result = cli("atlas", QUICKSTART, "--data", "zoo:shapes:8", *args, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
