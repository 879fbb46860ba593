"""Linear probes (`fvis probe train`): multinomial logistic regression from a layer's pooled
activations to the data's classes, whose weights a config's `activation_weights` and `facet`
objectives read (`weights: {file: probe.safetensors, key: conv4.weight, index: 3}`).

The recipe, deterministic on the CPU:
1. one pass over the data gathers each image's activations averaged over positions, [N, C] per
   layer (kept in memory: N x C float32, 5 MB for 20,000 images of 64 channels);
2. unlabelled images are dropped; the rest are split by a permutation seeded with the config's
   seed into a training set and a held-out set (`holdout`, a fraction);
3. the features are standardized with the training set's mean and std (a channel whose std is
   below 1e-6 of the largest is left unscaled: it carries nothing);
4. W [K, C], b [K] minimize, over the whole training set at once (full batch), the mean cross
   entropy of softmax(z W^T + b) plus l2 / 2 |W|^2, by L-BFGS (strong Wolfe line search) from
   zeros: a convex problem, so the optimum does not depend on where it starts;
5. the standardization is folded into the written weights, so that `weight` [K, C] and `bias`
   [K] apply to raw pooled activations: weight = W / std, bias = b - weight @ mean.
A class without training images gets a zero row and a bias of ABSENT_BIAS (never predicted).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fvis.data import Batch
from fvis.errors import UserError
from fvis.io import tensors_bytes, write_atomic
from fvis.scan import Outcome, Progress, Scan

FORMAT = "fvis-probe-1"
ABSENT_BIAS = -1e4
"""The bias of a class no training image belongs to: its logit never wins."""
FLAT = 1e-6
"""A channel whose training std is below FLAT x the largest is not scaled by standardization."""
TOLERANCE = 1e-7
"""L-BFGS stops when no gradient entry of the loss exceeds this."""


class PooledFeatures:
    """What a `Scan` feeds: per layer each image's activations averaged over positions [N, C],
    with the images' labels and ids, in the order they were read."""

    def __init__(self, names: Sequence[str]) -> None:
        self.features: dict[str, list[Tensor]] = {name: [] for name in names}
        self.labels: list[Tensor] = []
        self.ids: list[Tensor] = []

    def update(self, batch: Batch, acts: dict[str, Tensor]) -> None:
        for name, x in acts.items():
            self.features[name].append(x.mean(2).cpu())
        self.labels.append(batch.labels.cpu())
        self.ids.append(batch.ids.cpu())

    def state(self) -> dict[str, Tensor]:
        state = {f"features.{name}": self.pooled(name) for name in self.features}
        return {**state, "labels": _cat(self.labels), "ids": _cat(self.ids)}

    def load(self, state: dict[str, Tensor]) -> None:
        self.features = {name: [state[f"features.{name}"]] for name in self.features}
        self.labels, self.ids = [state["labels"]], [state["ids"]]

    def extend(self, state: dict[str, Tensor]) -> None:
        if not len(state["ids"]):
            return
        for name, parts in self.features.items():
            parts.append(state[f"features.{name}"])
        self.labels.append(state["labels"])
        self.ids.append(state["ids"])

    def pooled(self, name: str) -> Tensor:
        """The layer's pooled features [N, C] of every image read."""
        return torch.cat(self.features[name]) if self.features[name] else torch.empty(0, 0)


def _cat(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


@dataclass
class Fit:
    """A trained probe on raw pooled activations: logits = x @ weight.T + bias."""

    weight: Tensor  # [K, C], float64
    bias: Tensor  # [K], float64
    iterations: int
    gradient: float  # the largest gradient entry at the end (converged: below TOLERANCE)

    def predict(self, x: Tensor) -> Tensor:
        return (x.double() @ self.weight.T + self.bias).argmax(1)


@dataclass
class LayerProbe:
    """One layer's probe and its accuracy on the training and held-out images."""

    fit: Fit
    train: float
    heldout: float | None


@dataclass
class Probes:
    """What `fvis probe train` writes: a probe per layer, with the split's sizes and notes."""

    layers: dict[str, LayerProbe]
    classes: tuple[str, ...]
    train_images: int
    heldout_images: int
    notes: list[str]

    def tensors(self) -> dict[str, Tensor]:
        out = {}
        for name, probe in self.layers.items():
            out[f"{name}.weight"] = probe.fit.weight.float().contiguous()
            out[f"{name}.bias"] = probe.fit.bias.float().contiguous()
        return out

    def metadata(self, **described: Any) -> dict[str, str]:
        accuracy = {
            name: {"train": p.train, "heldout": p.heldout} for name, p in self.layers.items()
        }
        meta = {
            "format": FORMAT,
            "classes": json.dumps(list(self.classes)),
            "accuracy": json.dumps(accuracy),
            "iterations": json.dumps({n: p.fit.iterations for n, p in self.layers.items()}),
            "train_images": str(self.train_images),
            "heldout_images": str(self.heldout_images),
        }
        meta.update({key: json.dumps(value) for key, value in described.items()})
        return meta


def split(count: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """(training, held-out) indices into `count` examples, each sorted: the first
    round(holdout x count) of a permutation seeded with `seed` are held out."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = round(holdout * count)
    return order[held:].sort().values, order[:held].sort().values


def fit(x: Tensor, y: Tensor, classes: int, l2: float = 1e-3, iterations: int = 500) -> Fit:
    """A multinomial logistic regression of labels `y` [N] (in 0..classes-1) on features `x`
    [N, C], trained as the module docstring says (steps 3 to 5)."""
    x = x.double()
    mean = x.mean(0)
    std = x.std(0, correction=0)
    std = torch.where(std > FLAT * std.max(), std, torch.ones_like(std))
    z = (x - mean) / std
    present = torch.unique(y)  # sorted; a class without images is left out of the fit
    target = torch.searchsorted(present, y)
    w = torch.zeros(len(present), x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(present), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=iterations,
        max_eval=iterations * 2,
        tolerance_grad=TOLERANCE,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def loss() -> Tensor:
        return F.cross_entropy(z @ w.T + b, target) + 0.5 * l2 * (w * w).sum()

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    gradient = max(float(g.abs().max()) for g in torch.autograd.grad(loss(), [w, b]))
    steps = int(optimizer.state_dict()["state"][0]["n_iter"])
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64)
    bias = torch.full((classes,), ABSENT_BIAS, dtype=torch.float64)
    with torch.no_grad():
        weight[present] = w / std
        bias[present] = b - weight[present] @ mean
    return Fit(weight, bias, steps, gradient)


def train(
    pooled: PooledFeatures,
    classes: Sequence[str],
    holdout: float = 0.2,
    seed: int = 0,
    l2: float = 1e-3,
    iterations: int = 500,
) -> Probes:
    """A probe per layer of `pooled` on its labelled images, split by `split`. A UserError
    when the training images are of fewer than 2 classes."""
    labels = _cat(pooled.labels)
    keep = labels >= 0
    notes = []
    if int((~keep).sum()):
        notes.append(f"note: {int((~keep).sum())} unlabelled images left out")
    labels = labels[keep]
    if not len(labels):
        raise UserError("no labelled image could be read: nothing to train a probe on")
    train_at, held_at = split(len(labels), holdout, seed)
    present = torch.unique(labels[train_at])
    if not len(present):
        raise UserError(
            f"no training image: --holdout {holdout:g} holds out all {len(labels)} labelled images"
        )
    if len(present) == 1:
        raise UserError(
            f"the {len(train_at)} training images are all of class {classes[int(present[0])]}: "
            "a probe needs 2 classes or more (give it images of other classes)"
        )
    absent = [classes[k] for k in range(len(classes)) if k not in set(present.tolist())]
    if absent:
        notes.append(
            f"note: no training images of class {', '.join(absent)}: their rows are zeros and "
            f"their bias {ABSENT_BIAS:g}"
        )
    layers = {}
    for name in pooled.features:
        x = pooled.pooled(name)[keep]
        if not torch.isfinite(x).all():
            raise UserError(f"{name}: its activations hold NaN or infinite values: no probe")
        probe = fit(x[train_at], labels[train_at], len(classes), l2, iterations)
        if probe.gradient > TOLERANCE and probe.iterations >= iterations:
            notes.append(
                f"note: {name}: L-BFGS stopped after {probe.iterations} iterations before "
                f"converging (largest gradient {probe.gradient:.2g}); raise --epochs"
            )
        layers[name] = LayerProbe(
            probe,
            _accuracy(probe, x[train_at], labels[train_at]),
            _accuracy(probe, x[held_at], labels[held_at]) if len(held_at) else None,
        )
    return Probes(layers, tuple(classes), len(train_at), len(held_at), notes)


def _accuracy(probe: Fit, x: Tensor, y: Tensor) -> float:
    return float((probe.predict(x) == y).double().mean())


def gather(scan: Scan, progress: Progress | None = None) -> tuple[PooledFeatures, Outcome]:
    """One pass of `scan` gathering its layers' pooled features (no checkpoint: the state is
    the features themselves, as large as the data's labels allow)."""
    if len(scan.images.classes) < 2:
        what = "unlabelled" if not scan.images.classes else "of one class"
        raise UserError(
            f"the images are {what}: a probe needs images of at least 2 classes (class = "
            "sub-folder: FOLDER/CLASS/IMAGE, imagefolder:ROOT, or zoo:NAME)"
        )
    pooled = PooledFeatures(list(scan.layers))
    outcome = scan.run(pooled, progress=progress)
    if not pooled.labels or not sum(map(len, pooled.labels)):
        first = f" (the first: {outcome.skipped[0]})" if outcome.skipped else ""
        raise UserError(f"none of the {outcome.seen} images could be read{first}")
    return pooled, outcome


def write(path: Path, probes: Probes, **described: Any) -> None:
    """Write the probes to `path` (atomically), with `described` in the metadata."""
    write_atomic(path, tensors_bytes(probes.tensors(), probes.metadata(**described)))
