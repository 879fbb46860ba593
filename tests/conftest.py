"""Tiny models for the tests, built in temporary folders: nothing is ever downloaded."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fvis.cli import app

TINY_NETS = textwrap.dedent(
    '''
    import torch
    from torch import nn


    def convnet(classes: int = 5, channels: int = 3) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
        )


    class Branchy(nn.Module):
        """A forward that is not a plain sequence: two branches and a residual sum."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.left = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.right = nn.Conv2d(8, 8, 1)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = self.left(x) + self.right(x)
            return self.head(x.mean((2, 3)))


    def branchy() -> nn.Module:
        return Branchy()


    class Tokens(nn.Module):
        """A transformer-like net: patches -> tokens [B, T, C] -> a block returning a tuple."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.patch = nn.Conv2d(3, 6, 4, stride=4)
            self.block = TupleBlock()
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            tokens = self.patch(x).flatten(2).transpose(1, 2)  # [B, T, C]
            tokens, _ = self.block(tokens)
            return self.head(tokens.mean(1))


    class TupleBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Linear(6, 6)

        def forward(self, x):
            y = torch.relu(self.mlp(x))
            return y, {"attn": y.mean(-1)}


    def tokens() -> nn.Module:
        return Tokens()


    def fixed() -> nn.Module:
        """A model of one input size, 24 px: a linear layer reads every position."""
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 24 * 24, 3)
        )


    def with_softmax() -> nn.Module:
        return nn.Sequential(convnet(), nn.Softmax(dim=1))


    def not_a_module():
        return 42
    '''
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working folder holding `tinynets.py`, importable as a factory module."""
    (tmp_path / "tinynets.py").write_text(TINY_NETS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY_MODEL = {"source": "factory", "factory": "tinynets:convnet"}


@pytest.fixture
def write_config(workdir: Path) -> Callable[..., Path]:
    """Write a config (a dict, or raw YAML text) into the working folder; returns its path."""

    def write(content: dict | str, name: str = "cfg.yaml") -> Path:
        path = workdir / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return path

    return write


def tiny_config(**overrides: object) -> dict:
    """A fast config on the tiny conv net: 24 px, a few steps."""
    config: dict = {
        "model": dict(TINY_MODEL),
        "hooks": {"conv2": "2"},
        "objective": {"kind": "channel", "layer": "conv2", "channel": 3},
        "param": {"size": 24},
        "optim": {"steps": 8},
    }
    config.update(overrides)
    return config


@pytest.fixture
def cli() -> Callable[..., object]:
    """Invoke the CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str) -> object:
        return runner.invoke(app, [str(a) for a in args])

    return invoke
