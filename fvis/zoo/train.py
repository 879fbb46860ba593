"""Deterministic CPU training of ShapesNet on freshly generated batches of the shapes dataset.

Every step draws a new class-balanced batch from one seeded generator, so there is no epoch and
no overfitting to a fixed set. Runs with 2 CPU threads and deterministic algorithms: the same
seed on the same machine and torch version gives the same weights byte for byte (other CPUs or
torch versions may differ in the last bits, with the same accuracy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvis.io import tensors_bytes, write_atomic
from fvis.zoo import MODELS
from fvis.zoo.data import CLASSES, generate, sample
from fvis.zoo.net import ShapesNet

THREADS = 2
"""CPU threads used for training: part of what makes the result reproducible."""
HELDOUT_OFFSET = 1_000_000
"""The held-out set is generated from ``seed + HELDOUT_OFFSET``, never seen in training."""
WARMUP = 50


class TrainMetrics(TypedDict):
    """What `train` returns: a plain, JSON-serializable dict."""

    heldout_accuracy: float
    per_class_accuracy: dict[str, float]
    final_loss: float
    steps: int
    batch: int
    seed: int
    seconds: float
    path: str | None


def normalize(images: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel, with the shapes model's dataset statistics."""
    spec = MODELS["shapes"]
    mean = torch.tensor(spec.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


@contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """Fix the thread count and turn on deterministic algorithms, restoring both afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _schedule(steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over `WARMUP` steps, then cosine decay to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < WARMUP:
            return (step + 1) / WARMUP
        progress = (step - WARMUP) / max(1, steps - WARMUP)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _init_model(seed: int) -> ShapesNet:
    """A freshly initialised ShapesNet, seeded without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ShapesNet()


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[float, dict[str, float]]:
    """Accuracy and per-class accuracy (name -> accuracy) of ``model`` on raw [0, 1] images."""
    model.eval()
    preds = torch.cat([model(normalize(chunk)).argmax(1) for chunk in images.split(500)])
    correct = preds == labels
    per_class = {name: correct[labels == i].float().mean().item() for i, name in enumerate(CLASSES)}
    return correct.float().mean().item(), per_class


def _fit(
    model: nn.Module,
    seed: int,
    steps: int,
    batch: int,
    lr: float,
    log: Callable[[str], None] | None,
) -> float:
    """Adam on cross-entropy over ``steps`` fresh batches; returns the last step's loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(steps))
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        images, labels = sample(batch, generator)
        loss = F.cross_entropy(model(normalize(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if log is not None and (step + 1) % 100 == 0:
            log(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    return loss.item()


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write ``model``'s state dict (in eval mode) as safetensors with string ``metadata``.

    The file is canonical: the same weights and metadata always give the same bytes.
    """
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, tensors_bytes(state, metadata))


def train(
    seed: int = 0,
    steps: int = 1000,
    batch: int = 64,
    lr: float = 3e-3,
    out: Path | None = None,
    heldout: int = 2000,
    log: Callable[[str], None] | None = None,
) -> TrainMetrics:
    """Train ShapesNet from ``seed``, evaluate on ``heldout`` images, optionally save to ``out``.

    Returns `TrainMetrics`: held-out accuracy on ``heldout`` images generated from
    ``seed + HELDOUT_OFFSET``, per-class accuracy (class name -> accuracy), the last loss, the
    settings, wall-clock seconds and the weights path (or None). ``log`` receives a progress line
    every 100 steps. The defaults reproduce the shipped ``shapes.safetensors``.
    """
    start = time.perf_counter()
    with _deterministic(THREADS):
        model = _init_model(seed)
        final_loss = _fit(model, seed, steps, batch, lr, log)
        accuracy, per_class = evaluate(model, *generate(heldout, seed + HELDOUT_OFFSET))
    if out is not None:
        metadata = {
            "model": "shapes",
            "seed": str(seed),
            "steps": str(steps),
            "batch": str(batch),
            "lr": str(lr),
            "heldout_accuracy": f"{accuracy:.4f}",
        }
        save_weights(model, Path(out), metadata)
    return {
        "heldout_accuracy": accuracy,
        "per_class_accuracy": per_class,
        "final_loss": final_loss,
        "steps": steps,
        "batch": batch,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "path": None if out is None else str(out),
    }
