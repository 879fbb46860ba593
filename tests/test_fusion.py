"""Folding BatchNorm into convolutions: same activations and gradients, only where it is safe."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fvis.build import build_plan
from fvis.config import Config
from fvis.fusion import fold_batchnorms
from fvis.hooks import Capture


def _with_random_statistics(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so a fold shows."""
    g = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            if module.track_running_stats:
                module.running_mean.copy_(torch.randn(n, generator=g))
                module.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if module.affine:
                module.weight.data.copy_(torch.randn(n, generator=g))
                module.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval().requires_grad_(False)


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _outputs_and_grad(model: nn.Module, layers: set[str], x: torch.Tensor) -> tuple:
    x = x.clone().requires_grad_(True)
    with Capture(model, layers) as capture:
        acts = capture.run(x)
    total = sum(acts[layer].square().mean() for layer in sorted(layers))
    (grad,) = torch.autograd.grad(total, x)
    return {k: v.detach() for k, v in acts.items()}, grad


def test_folding_a_resnet_keeps_its_activations_and_input_gradients() -> None:
    torch.manual_seed(0)
    model = _with_random_statistics(torchvision.models.resnet18(weights=None))
    folded = copy.deepcopy(model)
    names = fold_batchnorms(folded)
    assert len(names) == _batchnorms(model) == 20 and _batchnorms(folded) == 0
    layers = {"layer1.0.bn1", "layer2", "layer4.1.bn2"}
    x = torch.rand(2, 3, 64, 64)
    (acts, grad), (acts_f, grad_f) = (_outputs_and_grad(m, layers, x) for m in (model, folded))
    for layer in layers:
        scale = acts[layer].abs().max()
        assert (acts_f[layer] - acts[layer]).abs().max() <= 1e-4 * scale, layer
        assert not torch.equal(acts_f[layer], torch.zeros_like(acts_f[layer]))
    assert torch.allclose(grad_f, grad, rtol=1e-3, atol=1e-4 * grad.abs().max())


def test_a_hooked_convolution_keeps_its_pre_batchnorm_output() -> None:
    torch.manual_seed(0)
    model = _with_random_statistics(torchvision.models.resnet18(weights=None))
    folded = copy.deepcopy(model)
    names = fold_batchnorms(folded, keep={"layer1.0.conv1"})
    assert "layer1.0.bn1" not in names and len(names) == 19
    x = torch.rand(1, 3, 64, 64)
    (acts, _), (acts_f, _) = (_outputs_and_grad(m, {"layer1.0.conv1"}, x) for m in (model, folded))
    kept = folded.get_submodule("layer1.0.conv1")
    assert kept.bias is None and torch.equal(kept.weight, model.layer1[0].conv1.weight)
    # The stem before it is folded: the same values up to float rounding.
    assert torch.allclose(acts["layer1.0.conv1"], acts_f["layer1.0.conv1"], atol=1e-4)


class _ConvBN(nn.Module):
    """A convolution and a BatchNorm; subclasses wire them in ways folding must not touch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)


class _Shared(_ConvBN):
    """The convolution's output goes to its BatchNorm and to a skip connection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _Twice(_ConvBN):
    """Both modules run twice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.bn(self.conv(x))))


class _Dynamic(_ConvBN):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def _batch_statistics() -> nn.Module:
    """BatchNorm without running statistics: it normalizes by the batch, even in eval mode."""
    return nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3, track_running_stats=False))


@pytest.mark.parametrize("make", [_Shared, _Twice, _Dynamic, _batch_statistics])
def test_unsafe_pairs_are_left_alone(make) -> None:
    torch.manual_seed(0)
    model = _with_random_statistics(make())
    before = copy.deepcopy(model)
    assert fold_batchnorms(model) == []
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), before(x))


def test_a_model_in_training_mode_is_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)).train()
    assert fold_batchnorms(model) == []


def _zoo_plan(fold: bool, layer: str) -> object:
    config = Config.model_validate(
        {
            "objective": {"kind": "channel", "layer": layer, "channel": 1},
            "param": {"size": 32},
            "optim": {"steps": 4, "fold_batchnorm": fold},
        }
    )
    return build_plan(config, Path.cwd())


def test_renders_fold_the_built_in_model_by_default_and_can_opt_out() -> None:
    folded, plain = _zoo_plan(True, "conv3"), _zoo_plan(False, "conv3")
    assert _batchnorms(folded.network.model) == 0 < _batchnorms(plain.network.model)
    x = torch.rand(1, 3, 32, 32)
    a = Capture(folded.network.model, {"conv3"}, folded.network)
    b = Capture(plain.network.model, {"conv3"}, plain.network)
    with a, b, torch.no_grad():
        assert torch.allclose(a.run(x)["conv3"], b.run(x)["conv3"], atol=1e-4)


def test_a_render_hooking_a_pre_batchnorm_convolution_keeps_it() -> None:
    plan = _zoo_plan(True, "conv3.conv")
    assert isinstance(plan.network.model.get_submodule("conv3.bn"), nn.BatchNorm2d)
    assert isinstance(plan.network.model.get_submodule("conv2.bn"), nn.Identity)
