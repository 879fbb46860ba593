"""Activation statistics of a data source, gathered in one pass (`fvis stats`): per layer the
channels' mean, standard deviation, covariance and whitening matrix and each class's mean
activation vector, and the data's colour decorrelation matrix, in one safetensors file that
configs reference by key (`transform: {file: stats.safetensors, key: conv3.whiten}`).

Every position of every image is one sample of a layer's C-vector of activations: a [C, H, W]
layer gives H * W samples per image, a [C] layer (logits) one, a [T, C] layer T. Sums are kept
in float64 as per-batch mean-centred moments merged with Chan et al.'s parallel formula, so
millions of samples lose no precision to cancellation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fvis.config.param import COLOR_KEY
from fvis.data import Batch
from fvis.errors import UserError
from fvis.io import tensors_bytes, write_atomic
from fvis.params import check_color_root
from fvis.scan import Outcome, Progress, Scan
from fvis.zoo.stats import covariance_root

FORMAT = "fvis-stats-1"
TOLERANCE = 1e-6
"""Eigenvalues of a covariance below TOLERANCE x its largest are taken as zero by the whitening
matrix (a pseudo-inverse square root): dead channels, such as post-ReLU units that never fire,
have no variance to whiten."""
PIXEL = "color"  # the checkpoint's prefix for the pixel moments


class Moments:
    """Running count, mean [D] and centred sum of outer products M2 [D, D] of rows [N, D], in
    float64 on the CPU. A batch's own moments (computed on its device, mean-centred) are merged
    with Chan, Golub and LeVeque's parallel update:

        n = na + nb,  d = mean_b - mean_a,  mean = mean_a + d nb / n,
        M2 = M2_a + M2_b + d d^T na nb / n,

    which never subtracts two large sums (the naive sum x x^T - n mean mean^T loses the digits
    of a small variance around a large mean)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, rows: Tensor) -> None:
        """Merge the rows [N, D] (any device and float dtype) into the moments."""
        if not len(rows):
            return
        if rows.device.type not in ("cpu", "cuda"):  # MPS has no float64
            rows = rows.cpu()
        rows = rows.double()
        mean_b = rows.mean(0)
        centred = rows - mean_b
        self.join(rows.shape[0], mean_b.cpu(), (centred.T @ centred).cpu())

    def join(self, nb: int, mean_b: Tensor, m2_b: Tensor) -> None:
        """Merge the moments of other rows: their count, mean and M2 (float64, on the CPU)."""
        if not nb:
            return
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean += delta * (nb / n)
        self.m2 += m2_b + torch.outer(delta, delta) * (self.n * nb / n)
        self.n = n

    def covariance(self, ddof: int = 0) -> Tensor:
        """M2 / (n - ddof): the population covariance by default (divided by n)."""
        return self.m2 / (self.n - ddof)

    def state(self, prefix: str) -> dict[str, Tensor]:
        return {
            f"{prefix}.n": torch.tensor([self.n], dtype=torch.int64),
            f"{prefix}.mean": self.mean,
            f"{prefix}.m2": self.m2,
        }

    def extend(self, state: dict[str, Tensor], prefix: str) -> None:
        """Merge the moments another `Moments` saved as `state`."""
        n = int(state[f"{prefix}.n"].item())
        self.join(n, state[f"{prefix}.mean"].double(), state[f"{prefix}.m2"].double())

    def load(self, state: dict[str, Tensor], prefix: str) -> None:
        mean, m2 = state[f"{prefix}.mean"], state[f"{prefix}.m2"]
        if mean.shape != self.mean.shape or m2.shape != self.m2.shape:
            raise ValueError(f"{prefix}: {list(m2.shape)} moments, expected {list(self.m2.shape)}")
        self.n = int(state[f"{prefix}.n"].item())
        self.mean, self.m2 = mean.double().clone(), m2.double().clone()


@dataclass
class LayerStats:
    """One layer's statistics over `samples` = images x `positions` activation vectors."""

    mean: Tensor  # [C]
    std: Tensor  # [C], population
    covariance: Tensor  # [C, C], population (divided by the number of samples)
    whiten: Tensor  # [C, C], symmetric: the pseudo-inverse square root of the covariance
    rank: int  # eigenvalues of the covariance kept by the whitening
    positions: int
    samples: int
    class_means: Tensor | None  # [K, C]; zeros for a class without images
    class_counts: Tensor | None  # [K] int64: images per class


@dataclass
class Stats:
    """What `fvis stats` writes: per layer its statistics, the colour root (None for 1-channel
    images), the images read, the classes, and notes for the user."""

    layers: dict[str, LayerStats]
    color: Tensor | None
    images: int
    classes: tuple[str, ...]
    notes: list[str] = field(default_factory=list)

    def tensors(self) -> dict[str, Tensor]:
        """The file's tensors by key: `LAYER.mean` ... and `color_correlation` (float32,
        counts int64)."""
        out: dict[str, Tensor] = {}
        for name, layer in self.layers.items():
            out[f"{name}.mean"] = layer.mean
            out[f"{name}.std"] = layer.std
            out[f"{name}.covariance"] = layer.covariance
            out[f"{name}.whiten"] = layer.whiten
            if layer.class_means is not None and layer.class_counts is not None:
                out[f"{name}.class_means"] = layer.class_means
                out[f"{name}.class_counts"] = layer.class_counts
        if self.color is not None:
            out[COLOR_KEY] = self.color
        return {
            key: (t if t.dtype == torch.int64 else t.float()).contiguous() for key, t in out.items()
        }

    def metadata(self, **described: Any) -> dict[str, str]:
        """The file's metadata: the format, the images read, the classes, per layer its rank,
        positions and channels, and what `described` adds (data source, model, layers), all
        as strings (JSON where not a plain number)."""
        meta = {
            "format": FORMAT,
            "images": str(self.images),
            "classes": json.dumps(list(self.classes)),
            "ranks": json.dumps({name: s.rank for name, s in self.layers.items()}),
            "positions": json.dumps({name: s.positions for name, s in self.layers.items()}),
            "channels": json.dumps({name: len(s.mean) for name, s in self.layers.items()}),
            "covariance": "population: divided by the number of samples (images x positions)",
            "tolerance": f"{TOLERANCE:g}",
        }
        meta.update({key: json.dumps(value) for key, value in described.items()})
        return meta


class StatsAccumulator:
    """What a `Scan` feeds: per layer the activation moments and per-class sums of the
    images' mean activation vectors; the pixel moments of the images in [0, 1]."""

    def __init__(self, shapes: dict[str, tuple[int, int]], classes: int, channels: int) -> None:
        self.shapes = shapes
        self.classes = classes
        self.moments = {name: Moments(c) for name, (c, _) in shapes.items()}
        self.class_sums = {
            name: torch.zeros(classes, c, dtype=torch.float64) for name, (c, _) in shapes.items()
        }
        self.class_counts = torch.zeros(classes, dtype=torch.int64)
        self.pixels = Moments(3) if channels == 3 else None
        self.images = 0
        self.unlabelled = 0

    def update(self, batch: Batch, acts: dict[str, Tensor]) -> None:
        labels = batch.labels.cpu()
        labelled = labels >= 0
        for name, x in acts.items():  # [B, C, P]
            self.moments[name].add(x.transpose(1, 2).reshape(-1, x.shape[1]))
            if self.classes and labelled.any():
                pooled = x.mean(2).cpu().double()
                self.class_sums[name].index_add_(0, labels[labelled], pooled[labelled])
        if self.classes:
            self.class_counts += torch.bincount(labels[labelled], minlength=self.classes)
        self.unlabelled += int((~labelled).sum())
        if self.pixels is not None:
            self.pixels.add(batch.images.permute(0, 2, 3, 1).reshape(-1, 3))
        self.images += len(batch.ids)

    def state(self) -> dict[str, Tensor]:
        state = {
            "images": torch.tensor([self.images, self.unlabelled], dtype=torch.int64),
            "class_counts": self.class_counts,
        }
        for name, moments in self.moments.items():
            state.update(moments.state(f"layer.{name}"))
            state[f"layer.{name}.class_sums"] = self.class_sums[name]
        if self.pixels is not None:
            state.update(self.pixels.state(PIXEL))
        return state

    def extend(self, state: dict[str, Tensor]) -> None:
        for name, moments in self.moments.items():
            moments.extend(state, f"layer.{name}")
            self.class_sums[name] += state[f"layer.{name}.class_sums"].double()
        self.class_counts += state["class_counts"]
        if self.pixels is not None:
            self.pixels.extend(state, PIXEL)
        images, unlabelled = (int(v) for v in state["images"].tolist())
        self.images += images
        self.unlabelled += unlabelled

    def load(self, state: dict[str, Tensor]) -> None:
        for name, moments in self.moments.items():
            moments.load(state, f"layer.{name}")
            sums = state[f"layer.{name}.class_sums"]
            if sums.shape != self.class_sums[name].shape:
                raise ValueError(f"{name}: class sums of {list(sums.shape)}")
            self.class_sums[name] = sums.double().clone()
        if state["class_counts"].shape != self.class_counts.shape:
            raise ValueError(f"counts of {state['class_counts'].numel()} classes")
        self.class_counts = state["class_counts"].clone()
        if self.pixels is not None:
            self.pixels.load(state, PIXEL)
        self.images, self.unlabelled = (int(v) for v in state["images"].tolist())

    def result(self, classes: Sequence[str]) -> Stats:
        """The statistics of what the pass read (at least one image)."""
        labelled = bool(self.classes) and self.unlabelled < self.images
        layers = {
            name: self._layer(name, positions, labelled)
            for name, (_, positions) in self.shapes.items()
        }
        color, notes = self._color()
        return Stats(layers, color, self.images, tuple(classes), self._notes(classes) + notes)

    def _layer(self, name: str, positions: int, labelled: bool) -> LayerStats:
        moments = self.moments[name]
        cov = moments.covariance()
        if not torch.isfinite(cov).all():
            raise UserError(f"{name}: its activations hold NaN or infinite values: no statistics")
        whiten, rank = whitening(cov)
        means = counts = None
        if labelled:
            counts = self.class_counts.clone()
            means = self.class_sums[name] / counts.clamp_min(1)[:, None].double()
        return LayerStats(
            moments.mean.clone(),
            cov.diagonal().clamp_min(0).sqrt(),
            cov,
            whiten,
            rank,
            positions,
            moments.n,
            means,
            counts,
        )

    def _color(self) -> tuple[Tensor | None, list[str]]:
        """The colour root of the pixels, or None and why there is none; a note where
        `param.decorrelate` would refuse it."""
        if self.pixels is None:
            return None, ["note: 1-channel images: no color_correlation written"]
        cov = self.pixels.covariance(ddof=1) if self.pixels.n > 1 else None
        if cov is None or not cov.diagonal().max() > 0:
            return None, ["note: the pixels do not vary: no color_correlation written"]
        color = covariance_root(cov)
        try:
            check_color_root(color.float())
        except ValueError as exc:
            return color, [f"note: color_correlation: {exc}; param.decorrelate refuses it"]
        return color, []

    def _notes(self, classes: Sequence[str]) -> list[str]:
        notes = []
        if not self.classes or self.unlabelled == self.images:
            notes.append("note: the images are unlabelled: no class_means written")
        else:
            if self.unlabelled:
                notes.append(
                    f"note: {self.unlabelled} unlabelled images (not in a class folder) are "
                    "left out of class_means"
                )
            empty = [classes[k] for k in range(self.classes) if self.class_counts[k] == 0]
            if empty:
                notes.append(
                    f"note: no images of class {', '.join(empty)}: their class_means rows are "
                    "zeros (class_counts 0)"
                )
        return notes


def whitening(cov: Tensor, tolerance: float = TOLERANCE) -> tuple[Tensor, int]:
    """The symmetric pseudo-inverse square root W = V diag(w^-1/2) V^T of a covariance
    (eigh in float64), and its rank: eigenvalues below `tolerance` x the largest count as zero
    (their w^-1/2 is 0), so W Cov W^T is the projection onto the rank-r subspace the data spans
    (the identity on it), and W maps dead channels to 0."""
    values, vectors = torch.linalg.eigh(cov.double())
    top = values.max().item() if values.numel() else 0.0
    keep = values > tolerance * top if top > 0 else torch.zeros_like(values, dtype=torch.bool)
    scale = torch.where(keep, values.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    w = (vectors * scale) @ vectors.T
    return (w + w.T) / 2, int(keep.sum())


def gather(
    scan: Scan,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> tuple[Stats, Outcome]:
    """One pass of `scan` computing the statistics of its layers (see the module docstring),
    checkpointed to `checkpoint` and resumed from it with `resume`."""
    images = scan.images
    accumulator = StatsAccumulator(scan.shapes(), len(images.classes), images.channels)
    outcome = scan.run(accumulator, checkpoint, resume, progress)
    if not accumulator.images:
        raise UserError(unread(outcome))
    return accumulator.result(images.classes), outcome


def unread(outcome: Outcome) -> str:
    """The error of a pass that could read none of its images."""
    first = f" (the first: {outcome.skipped[0]})" if outcome.skipped else ""
    return f"none of the {outcome.seen} images could be read{first}"


def checkpoint_for(path: Path) -> Path:
    """Where the pass writing `path` keeps its checkpoint: a hidden file beside it."""
    return path.with_name(f".{path.name}.partial.safetensors")


def write(path: Path, stats: Stats, **described: Any) -> None:
    """Write the statistics to `path` (atomically), with `described` in the metadata."""
    write_atomic(path, tensors_bytes(stats.tensors(), stats.metadata(**described)))
