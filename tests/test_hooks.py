"""Hooks: only the needed layers, always removed, and a forward pass that stops early."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fvis.errors import SpecError
from fvis.hooks import OUTPUT, Capture, layer_table, resolve_layer


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.right = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)
        self.after = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.left(x) + self.right(x)
        self.after += 1  # counts passes that got past the branches
        return self.head(x.mean((2, 3)))


def _grad(model: nn.Module, path: str, stop: bool) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(3), requires_grad=True)
    paths = {path} if stop else {path, OUTPUT}
    with Capture(model, paths) as capture:
        act = capture.run(image)[path]
    act.square().mean().backward()
    return act.detach(), image.grad


@pytest.mark.parametrize("path", ["stem", "left.0", "left", "right"])
def test_early_stop_gives_the_same_activations_and_gradients(path: str) -> None:
    model = Branchy()
    early_act, early_grad = _grad(model, path, stop=True)
    full_act, full_grad = _grad(model, path, stop=False)
    assert torch.equal(early_act, full_act)
    assert torch.equal(early_grad, full_grad)


def test_forward_stops_after_the_deepest_needed_layer() -> None:
    model = Branchy()
    with Capture(model, {"stem", "left"}) as capture:
        acts = capture.run(torch.rand(1, 3, 8, 8))
    assert set(acts) == {"stem", "left"}
    assert model.after == 0  # nothing after the branches ran
    with Capture(model, {"left", OUTPUT}) as capture:
        acts = capture.run(torch.rand(1, 3, 8, 8))
    assert model.after == 1 and acts[OUTPUT].shape == (1, 4)


def test_hooks_are_removed_even_on_error() -> None:
    model = Branchy()
    with pytest.raises(RuntimeError), Capture(model, {"left"}) as capture:
        assert len(model.left._forward_hooks) == 1
        capture.run(torch.rand(1, 5, 8, 8))  # wrong channel count
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_only_needed_layers_are_hooked() -> None:
    model = Branchy()
    with Capture(model, {"right", "image"}):
        hooked = [n for n, m in model.named_modules() if m._forward_hooks]
    assert hooked == ["right"]


def test_unknown_layer_suggests_close_names() -> None:
    with pytest.raises(SpecError, match=r"unknown layer 'lefft'; did you mean 'left'"):
        resolve_layer("lefft", {}, Branchy(), ("objective", "layer"))


def test_alias_resolves_and_bad_alias_points_at_hooks() -> None:
    model = Branchy()
    assert resolve_layer("l", {"l": "left.0"}, model, ("x",)) == "left.0"
    with pytest.raises(SpecError) as info:
        resolve_layer("l", {"l": "left.7"}, model, ("objective", "layer"))
    assert info.value.loc == ("hooks", "l")


def test_layer_table_lists_shapes() -> None:
    rows = {name: shape for name, _, shape in layer_table(Branchy(), torch.rand(1, 3, 8, 8))}
    assert rows["left.0"] == "[1, 8, 8, 8]"
    assert rows["head"] == "[1, 4]"


class SharedRelu(nn.Module):
    """ResNet's habit: one ReLU module applied after two different layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 2, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.b(self.relu(self.a(x))))


def test_layer_table_marks_a_module_called_twice_and_capture_reads_its_first_call() -> None:
    model, x = SharedRelu(), torch.rand(1, 3, 8, 8)
    rows = {name: shape for name, _, shape in layer_table(model, x)}
    assert rows["relu"] == "[1, 4, 6, 6] (call 1 of 2: the one read)"
    assert rows["a"] == "[1, 4, 6, 6]"
    with Capture(model, ["relu"]) as capture:
        acts = capture.run(x)
    assert torch.equal(acts["relu"], torch.relu(model.a(x)))


def test_an_unknown_layer_of_a_megabyte_is_named_by_its_start() -> None:
    with pytest.raises(SpecError) as info:
        resolve_layer("x" * 1_000_000, {}, Branchy(), ("objective", "layer"))
    assert info.value.message == (
        f"unknown layer {'x' * 80!r}... (1000000 characters) (`fvis layers CONFIG` lists them)"
    )
