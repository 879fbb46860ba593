"""Redirected ReLU gradients: a warm-up that lets gradients reach units that are switched off.

With a plain ReLU, a unit that is negative for every pixel passes no gradient, and an objective
that reads it stays stuck at a grey image. lucid's redirected ReLU passes the gradient through an
inactive unit when it would push the unit up, for batch items whose ordinary ReLU gradient is
zero everywhere. It is used only for the first steps; then ReLUs are plain again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class _RedirectedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        inactive = x < 0
        relu_grad = grad.masked_fill(inactive, 0.0)
        # grad is d(loss)/dx for a loss to minimize: grad < 0 means "push x up".
        redirected = grad.masked_fill(inactive & (grad > 0), 0.0)
        alive = relu_grad.flatten(1).norm(dim=1) > 0
        return torch.where(alive.view(-1, *([1] * (x.dim() - 1))), relu_grad, redirected)


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU in the forward pass, redirected gradient in the backward pass."""
    return _RedirectedReLU.apply(x)


@contextmanager
def redirect_relus(model: nn.Module) -> Iterator[int]:
    """Within the block, every nn.ReLU of the model uses the redirected gradient.

    The hooks run before any other forward hook, so captured ReLU outputs are redirected too.
    Yields how many ReLU modules were redirected (functional relu calls are not reachable).
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [
        m.register_forward_hook(lambda mod, inputs, out: redirected_relu(inputs[0]), prepend=True)
        for m in relus
    ]
    try:
        yield len(relus)
    finally:
        for handle in handles:
            handle.remove()
