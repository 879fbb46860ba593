"""Redirected ReLU: gradients reach dead units during the warm-up, and only then."""

from __future__ import annotations

import torch
from torch import nn

from fvis.relu import redirect_relus, redirected_relu


def test_forward_is_relu() -> None:
    x = torch.tensor([-1.0, 0.0, 2.0])
    assert torch.equal(redirected_relu(x), torch.relu(x))


def test_dead_unit_gets_an_upward_gradient() -> None:
    x = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    (-redirected_relu(x).sum()).backward()  # maximize: the loss gradient is -1 everywhere
    assert x.grad.tolist() == [[-1.0, -1.0]]  # passes, pushing x up
    x.grad = None
    redirected_relu(x).sum().backward()  # this would push x further down: blocked
    assert x.grad.tolist() == [[0.0, 0.0]]


def test_live_items_keep_the_plain_relu_gradient() -> None:
    x = torch.tensor([[-1.0, 2.0], [-1.0, -3.0]], requires_grad=True)
    (-redirected_relu(x).sum()).backward()
    assert x.grad.tolist() == [[0.0, -1.0], [-1.0, -1.0]]


def test_context_redirects_module_relus_and_cleans_up() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.fill_(-10.0)  # every unit dead
    x = torch.ones(1, 2, requires_grad=True)
    with redirect_relus(model) as count:
        (-model(x).sum()).backward()  # maximize the output
    assert count == 1
    assert x.grad.abs().sum() > 0
    x.grad = None
    (-model(x).sum()).backward()
    assert x.grad.abs().sum() == 0
    assert not model[1]._forward_hooks
