"""Activation atlases: a layer's activations over a dataset laid out in 2-D, averaged on a grid,
and each cell rendered as a direction ("Activation Atlas", Carter et al. 2019).

One pass over the data keeps a few activation vectors per image (`Samples`): positions drawn at
random, or with a class filter the positions whose activation drives that class's logit most
(attribution a . d(logit)/da > 0, "The Building Blocks of Interpretability", Olah et al. 2018).
t-SNE lays the vectors out in 2-D; the layout is scaled to [0, 1] per axis, from its 1st to its
99th percentile, and cut into an N x N grid. Every cell holding at least `min_count` vectors
becomes their mean (the cell's direction, as in the paper), is rendered with `dot_cossim`
(`fvis.vectors`, batched and resumable) and takes its place in the atlas.

t-SNE (scikit-learn) rather than the paper's UMAP: it needs no numba JIT (UMAP compiles its
kernels on first use, tens of seconds, and numba pins the numpy and Python versions it runs
with), and scikit-learn already gives fvis its NMF (`fvis.groups`): one library for both. The
vectors are scaled to unit length first, so that Euclidean neighbours in the layout are
neighbours by angle (the cosine distance lucid's atlas code lays out by), and a weak activation
sits with the strong ones of its direction.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fvis import runs, vectors, zoo
from fvis.config import ModelSpec, ZooModelSpec
from fvis.data import UNLABELLED, Batch, Images
from fvis.errors import Interrupted, UserError
from fvis.hooks import Capture, select
from fvis.io import (
    MAX_IMAGE_PIXELS,
    png_bytes,
    read_image,
    tensors_bytes,
    to_json,
    to_pil,
    write_atomic,
)
from fvis.models import Network
from fvis.scan import Outcome, Progress, Scan, units
from fvis.sweep import Backend
from fvis.writers import versions
from fvis.zoo import data as zoo_data

FORMAT = "fvis-atlas-1"
INDEX = "atlas.json"
TENSORS = "atlas.safetensors"
PICTURE = "atlas.png"
LABELS = "atlas-labels.png"
CHECKPOINT = ".atlas.partial.safetensors"
KIND = runs.Kind(
    "atlas folder",
    (INDEX, CHECKPOINT),
    re.compile(
        r"atlas\.json|atlas\.safetensors|atlas\.png|atlas-labels\.png"
        r"|\.atlas\.partial\.safetensors|renders-[0-9a-f]+/[^/]+"
    ),
    CHECKPOINT,
)
"""`fvis atlas`' folder: its index, tensors, pictures, scan checkpoint and renders."""
GRIDS = (2, 64)
"""Cells a side: 64 x 64 = 4,096 renders at most, within a sweep's limit (`fvis.sweep`)."""
MIN_COUNT = 3
"""Vectors a cell needs to be rendered: the mean of one or two vectors is an outlier's
direction, not a region's."""
MIN_VECTORS = 10
"""Vectors a layout needs at least (t-SNE's perplexity must stay below their number)."""
SAMPLES = 10_000
"""Vectors laid out at most: t-SNE's time grows as N log N, about a minute for 10,000 on two
CPU cores."""
PERPLEXITY = 30.0
CELL = 64
STRIP = 24
"""Height of a cell's label strip in atlas-labels.png: two lines of Pillow's default font."""
MAJORITY = 0.5
"""A cell is "mostly one class" when that class holds at least this share of its labelled
vectors: those cells' renders are the ones the model is asked to classify."""
BACKGROUND = (255, 255, 255)
# One colour per class in the label strips (matplotlib's tab10, repeated beyond ten classes).
COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
STRIPES = tuple(i for i, name in enumerate(zoo_data.CLASSES) if name.startswith("stripes_"))
COLOUR_CLASSES = tuple(zoo_data.CLASSES.index(name) for name in ("red", "green", "blue"))
"""The zoo `shapes` data's four stripe classes and three colour classes: an atlas of that data
groups like with like when stripe cells lie nearer each other than the colour cells."""
PAIRS = {
    "stripe_to_stripe": (STRIPES, STRIPES),
    "stripe_to_colour": (STRIPES, COLOUR_CLASSES),
    "colour_to_colour": (COLOUR_CLASSES, COLOUR_CLASSES),
}
"""The mean distances atlas.json reports on the shapes classes: (first set, second set)."""
MAX_SHOWN = 40  # characters of a --class value an error repeats


@dataclass(frozen=True)
class Settings:
    """What an atlas is made of: `layer` (its name as given; the scan holds its spec), the grid
    (cells a side), vectors per image and in all, the class whose attribution filters the
    positions (None: random positions) at the layer spec `logits`, the vectors a cell needs,
    the pixels of a cell in the pictures, the seed of the positions and the layout, and the
    names of the model's classes by logit (`class_names`; empty: unnamed)."""

    layer: str
    grid: int = 20
    per_image: int = 1
    samples: int = SAMPLES
    target: int | None = None
    logits: str = "output"
    min_count: int = MIN_COUNT
    cell: int = CELL
    seed: int = 0
    classes: tuple[str, ...] = ()

    @property
    def target_name(self) -> str | None:
        """The filtering class's name, where the model names it."""
        target = self.target
        return self.classes[target] if target is not None and target < len(self.classes) else None


def check_options(grid: int, cell: int) -> None:
    """Refuse a grid out of GRIDS, or pictures larger than fvis writes."""
    low, high = GRIDS
    if not low <= grid <= high:
        raise UserError(f"--grid {grid}: expected {low} to {high} cells a side")
    width, height = grid * cell, grid * (cell + STRIP)
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(
            f"--grid {grid} --cell {cell}: {LABELS} would be {width}x{height} pixels, over "
            f"fvis's limit of {MAX_IMAGE_PIXELS:,}; lower --cell"
        )


def class_names(model: ModelSpec, images: Images) -> tuple[str, ...]:
    """The names of the model's classes, by logit: a zoo model's own, else the data's (a
    folder's class folders; none for unlabelled data)."""
    if isinstance(model, ZooModelSpec):
        return zoo.get(model.name).classes
    return tuple(images.classes)


def parse_class(text: str | None, names: Sequence[str]) -> int | None:
    """--class as a logit index: a number (checked against the logits by `check`), or a class
    name among `names`."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    shown = repr(text) if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]!r}..."
    if not names:
        raise UserError(
            f"--class {shown}: the data is unlabelled and the model names no classes; give the "
            "class's logit index (a number)"
        )
    if text in names:
        return list(names).index(text)
    close = difflib.get_close_matches(text[:MAX_SHOWN], list(names), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise UserError(f"--class {shown}: no class of that name{hint} (classes: {listed})")


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Attribution:
    """The class filter: how much the activation vector a_p at each position p of `layer` (a
    spec) drives the logit of class `target` at `logits` (a spec): a_p . d(logit)/d(a_p), the
    attribution of Olah et al. 2018 (Building Blocks), summed over the channels.

    A pass runs its network under inference mode, without gradients, so the filter runs a
    forward of its own, with them."""

    network: Network
    layer: str
    logits: str
    target: int
    device: torch.device

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The layer's activations [B, C, P] on `images` and each position's attribution
        [B, P]."""
        x = images.to(self.device).detach().requires_grad_(True)
        with (
            torch.enable_grad(),
            Capture(self.network.model, [self.layer, self.logits], self.network) as capture,
        ):
            outputs = capture.run(x)
            acts = _selected(outputs, self.layer, "--layer")
            logits = _selected(outputs, self.logits, "--logits")
            if logits.dim() != 2:
                raise UserError(
                    f"--logits {self.logits}: an output of shape {list(logits.shape)}; "
                    "expected [B, classes]"
                )
            count = logits.shape[1]
            if self.target >= count:
                raise UserError(
                    f"--class {self.target}: the model has {count} classes (0 to {count - 1})"
                )
            (grad,) = torch.autograd.grad(logits[:, self.target].sum(), acts, allow_unused=True)
        if grad is None:
            raise UserError(
                f"--logits {self.logits} does not depend on --layer {self.layer} (it runs before "
                "it): choose logits above the layer"
            )
        acts = acts.detach()
        return _units(acts, self.layer).float(), _units(acts * grad, self.layer).sum(1).float()


def _selected(outputs: dict[str, Any], spec: str, flag: str) -> Tensor:
    """A captured layer's tensor; a tuple or dict output without a selector is a UserError."""
    try:
        return select(outputs, spec)
    except TypeError as exc:
        raise UserError(f"{flag} {spec}: {exc}") from None


def _units(x: Tensor, name: str) -> Tensor:
    """`fvis.scan.units`, its refusal a UserError naming the layer."""
    try:
        return units(x)
    except ValueError as exc:
        raise UserError(f"--layer {name}: {exc}") from None


def filter_for(scan: Scan, settings: Settings) -> Attribution | None:
    """The class filter of `settings` on the scan's network (None: no class)."""
    if settings.target is None:
        return None
    spec = scan.layers[settings.layer]
    return Attribution(scan.network, spec, settings.logits, settings.target, scan.device)


def check(scan: Scan, settings: Settings) -> tuple[int, int]:
    """The layer's (channels, positions), from one forward of a grey image: a layer `units`
    cannot read is refused, and with a class, logits that are not [B, classes], a class beyond
    them or logits that do not depend on the layer."""
    scan.network.to(scan.device)
    probe = torch.full((1, scan.images.channels, *scan.images.size), 0.5)
    attribution = filter_for(scan, settings)
    if attribution is not None:
        acts = attribution(probe)[0]
    else:
        spec = scan.layers[settings.layer]
        with (
            torch.inference_mode(),
            Capture(scan.network.model, [spec], scan.network) as capture,
        ):
            acts = _units(_selected(capture.run(probe.to(scan.device)), spec, "--layer"), spec)
    return int(acts.shape[1]), int(acts.shape[2])


@dataclass(frozen=True)
class Sample:
    """Activation vectors [N, C] and, for each, its image's index in the source, its position
    (flat, in the layer's grid) and its image's label (UNLABELLED: none); with a class filter,
    its attribution to the class."""

    vectors: Tensor
    images: Tensor
    positions: Tensor
    labels: Tensor
    attributions: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        out = {
            "vectors": self.vectors,
            "images": self.images,
            "positions": self.positions,
            "labels": self.labels,
        }
        return out if self.attributions is None else {**out, "attributions": self.attributions}

    def subset(self, keep: Tensor) -> Sample:
        """The vectors at the indices `keep`."""
        return Sample(**{name: tensor[keep] for name, tensor in self.tensors().items()})


class Samples:
    """A `fvis.scan` accumulator: `per_image` activation vectors of `layer` from each image (all
    of them where it has fewer positions). Without a filter the positions are drawn from (seed,
    the image's index), so a sample depends neither on the batches nor on resuming; with one,
    they are the image's positions of largest attribution to the class, strongest first, those
    with a positive attribution only."""

    def __init__(
        self, layer: str, per_image: int, seed: int, attribution: Attribution | None = None
    ) -> None:
        self.layer, self.per_image, self.seed = layer, per_image, seed
        self.attribution = attribution
        self.parts: list[Sample] = []

    def update(self, batch: Batch, acts: dict[str, Tensor]) -> None:
        if self.attribution is None:
            x, scores = acts[self.layer], None
        else:
            x, scores = self.attribution(batch.images)
        picked, rows = [], []
        for b, index in enumerate(batch.ids.tolist()):
            chosen = self.positions(index, x.shape[2], None if scores is None else scores[b])
            picked.append(chosen)
            rows.append(torch.full_like(chosen, b))
        where, row = torch.cat(picked), torch.cat(rows)
        part = Sample(
            x[row.to(x.device), :, where.to(x.device)].cpu(),
            batch.ids[row].long(),
            where,
            batch.labels[row].long(),
            None
            if scores is None
            else scores[row.to(scores.device), where.to(scores.device)].cpu(),
        )
        self.parts.append(part)  # one operation: a Ctrl-C leaves the state whole

    def positions(self, index: int, count: int, scores: Tensor | None) -> Tensor:
        """The positions kept of image `index`, which has `count` positions (and these
        attributions)."""
        if scores is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            return torch.randperm(count, generator=g)[: self.per_image]
        order = torch.sort(scores.cpu(), descending=True, stable=True).indices[: self.per_image]
        return order[scores.cpu()[order] > 0]

    def sample(self) -> Sample:
        """Every vector kept, in the order of the images."""
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.long)
            filtered = self.attribution is not None
            return Sample(
                torch.zeros(0, 0), empty, empty, empty, torch.zeros(0) if filtered else None
            )
        first = self.parts[0].tensors()
        joined = {k: torch.cat([p.tensors()[k] for p in self.parts]) for k in first}
        return Sample(**joined)

    def state(self) -> dict[str, Tensor]:
        return self.sample().tensors()

    def load(self, state: dict[str, Tensor]) -> None:
        expected = set(self.state())
        if set(state) != expected:
            raise ValueError(f"its entries are not this pass's ({', '.join(sorted(expected))})")
        n = len(state["vectors"])
        if state["vectors"].dim() != 2 or state["vectors"].dtype != torch.float32:
            raise ValueError(f"vectors is {state['vectors'].dtype} {list(state['vectors'].shape)}")
        for name, tensor in state.items():
            kind = torch.float32 if name == "attributions" else torch.long
            if name != "vectors" and (tensor.shape != (n,) or tensor.dtype != kind):
                raise ValueError(f"{name} is {tensor.dtype} {list(tensor.shape)}, not {n} values")
        self.parts = [Sample(**state)]

    def extend(self, state: dict[str, Tensor]) -> None:
        if len(state["vectors"]):
            self.parts.append(Sample(**state))


def limit(sample: Sample, cap: int, seed: int) -> Sample:
    """At most `cap` vectors of a sample, in their order: with attributions the strongest, else
    a random subset drawn from `seed`."""
    n = len(sample.vectors)
    if n <= cap:
        return sample
    if sample.attributions is not None:
        keep = torch.sort(sample.attributions, descending=True, stable=True).indices[:cap]
    else:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cap]
    return sample.subset(keep.sort().values)


def check_sample(sample: Sample, outcome: Outcome, target: int | None) -> None:
    """Refuse a sample too small to lay out, saying why it is."""
    n = len(sample.vectors)
    if n >= MIN_VECTORS:
        return
    images = f"{outcome.seen} images"
    if target is not None and n == 0:
        raise UserError(f"no position of the {images} has a positive attribution to class {target}")
    raise UserError(
        f"only {n} activation vectors from {images}; an atlas needs at least {MIN_VECTORS}: use "
        "more images or --per-image"
    )


# ----------------------------------------------------------------------------- layout and cells


def layout(vectors_: Tensor, seed: int) -> Tensor:
    """t-SNE of the vectors [N, C] scaled to unit length (PCA start, `seed`): [N, 2]."""
    from sklearn.manifold import TSNE  # lazy: start-up time

    data = vectors_.double()
    unit = data / data.norm(dim=1, keepdim=True).clamp(min=1e-12)
    if not (unit - unit[0]).abs().amax() > 0:
        raise UserError("the sampled activation vectors all point one way (or are zero): no layout")
    perplexity = min(PERPLEXITY, (len(unit) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return torch.from_numpy(tsne.fit_transform(unit.numpy())).float()


def normalise(points: Tensor, low: float = 1.0, high: float = 99.0) -> Tensor:
    """Each axis of a layout [N, 2] mapped to [0, 1] from its `low` to its `high` percentile,
    what lies beyond clipped: a few outliers then sit in the border cells instead of squeezing
    every other point into a few cells."""
    data = points.double()
    lo = torch.quantile(data, low / 100, dim=0)
    hi = torch.quantile(data, high / 100, dim=0)
    return ((data - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1).float()


def bins(unit: Tensor, grid: int) -> Tensor:
    """The cell (row, column) [N, 2] of each point of a layout in [0, 1]^2 on a grid x grid
    grid: x picks the column, y the row (row 0 at the top), and 1 falls in the last cell."""
    return (unit * grid).floor().long().clamp(0, grid - 1).flip(1)


@dataclass(frozen=True)
class Cells:
    """The occupied cells of a grid, in row-major order: their (row, column) [M, 2], direction
    (the mean of their vectors) [M, C], count of vectors [M], majority class [M] (UNLABELLED
    where no vector is labelled; ties to the lower class) and its share of the labelled ones
    [M]; and each vector's cell [N] (-1: in a cell left empty)."""

    where: Tensor
    directions: Tensor
    counts: Tensor
    classes: Tensor
    shares: Tensor
    members: Tensor


def gather(vectors_: Tensor, labels: Tensor, where: Tensor, grid: int, min_count: int) -> Cells:
    """The cells of a grid holding at least `min_count` of the vectors [N, C] that `where`
    [N, 2] puts in them, with the vectors' `labels` [N]."""
    flat = where[:, 0] * grid + where[:, 1]
    counts = torch.bincount(flat, minlength=grid * grid)
    occupied = (counts >= min_count).nonzero()[:, 0]
    index = torch.full((grid * grid,), -1, dtype=torch.long)
    index[occupied] = torch.arange(len(occupied))
    members = index[flat]
    kept = members >= 0
    sums = torch.zeros(len(occupied), vectors_.shape[1], dtype=torch.float64)
    sums.index_add_(0, members[kept], vectors_[kept].double())
    directions = (sums / counts[occupied, None]).float()
    labelled = kept & (labels >= 0)
    classes = int(labels[labelled].max()) + 1 if labelled.any() else 1
    votes = torch.zeros(len(occupied), classes, dtype=torch.long)
    votes.index_put_((members[labelled], labels[labelled]), torch.ones(1, dtype=torch.long), True)
    total = votes.sum(1)
    top, majority = votes.max(1)
    return Cells(
        torch.stack([occupied // grid, occupied % grid], 1),
        directions,
        counts[occupied],
        torch.where(total > 0, majority, UNLABELLED),
        torch.where(total > 0, top / total.clamp(min=1), 0.0).float(),
        members,
    )


# ----------------------------------------------------------------------------- measures


def mean_distance(
    where: Tensor, classes: Tensor, first: Collection[int], second: Collection[int]
) -> float | None:
    """The mean distance, in cells, between two different cells, one whose majority class is in
    `first` and the other in `second`, over every such pair (`first` == `second`: the distance
    within one set of classes); None without such a pair."""
    a = torch.isin(classes, torch.tensor(list(first), dtype=torch.long)).nonzero()[:, 0]
    b = torch.isin(classes, torch.tensor(list(second), dtype=torch.long)).nonzero()[:, 0]
    distances = torch.cdist(where[a].double(), where[b].double())
    pairs = a[:, None] != b[None, :]
    return float(distances[pairs].mean()) if pairs.any() else None


def agreement(
    classes: Tensor, shares: Tensor, predicted: Tensor, threshold: float = MAJORITY
) -> dict[str, Any] | None:
    """Of the cells whose vectors are mostly one class (a share of at least `threshold`), how
    many renders the model classifies as that class (`predicted`: its class for each cell's
    render); None without such a cell."""
    chosen = (classes >= 0) & (shares >= threshold)
    cells = int(chosen.sum())
    if not cells:
        return None
    agree = int((predicted[chosen] == classes[chosen]).sum())
    return {
        "threshold": threshold,
        "cells": cells,
        "agree": agree,
        "share": round(agree / cells, 4),
    }


def classify(network: Network, logits: str, files: Sequence[Path], device: torch.device) -> Tensor:
    """The model's logits [M, K] at the spec `logits` on each image file, fitted to its input."""
    prep = network.prep
    mode: Literal["L", "RGB"] = "L" if prep.channels == 1 else "RGB"
    network.to(device)
    found = []
    for start in range(0, len(files), 64):
        chunk = [read_image(f, mode, prep.size, fit="crop") for f in files[start : start + 64]]
        with torch.inference_mode(), Capture(network.model, [logits], network) as capture:
            out = _selected(capture.run(torch.stack(chunk).to(device)), logits, "--logits")
        found.append(out.float().flatten(1).cpu())
    return torch.cat(found)


def measure(
    network: Network,
    settings: Settings,
    cells: Cells,
    files: Sequence[Path],
    names: Sequence[str],
    device: torch.device,
) -> dict[str, Any]:
    """The issue's two measures on labelled data: whether the renders of mostly-one-class cells
    are classified as that class (where the logits have one entry per class of the data), and,
    on the zoo shapes classes, whether stripe cells lie nearer each other than to colour cells.
    Also each cell's predicted class ("predicted", [M]; None where not measured)."""
    out: dict[str, Any] = {"render_class": None, "distances": None, "predicted": None}
    if not bool((cells.classes >= 0).any()):
        return out
    try:
        logits = classify(network, settings.logits, files, device)
    except UserError as exc:  # logits that are not one tensor: nothing to classify by
        out["render_class"] = {"skipped": str(exc)}
    else:
        if logits.shape[1] == len(names):
            predicted = logits.argmax(1)
            out["predicted"] = predicted.tolist()
            out["render_class"] = agreement(cells.classes, cells.shares, predicted)
    if tuple(names) == zoo_data.CLASSES:
        out["distances"] = {
            "stripes": [names[c] for c in STRIPES],
            "colours": [names[c] for c in COLOUR_CLASSES],
        }
        for key, (first, second) in PAIRS.items():
            found = mean_distance(cells.where, cells.classes, first, second)
            out["distances"][key] = None if found is None else round(found, 4)
    return out


# ----------------------------------------------------------------------------- pictures


def tile(path: Path, cell: int) -> Image.Image:
    """A render as a `cell`-pixel square: downscaled (Lanczos) or enlarged (nearest)."""
    image = to_pil(read_image(path, "RGB"))
    if image.size == (cell, cell):
        return image
    larger = cell > max(image.size)
    resample = Image.Resampling.NEAREST if larger else Image.Resampling.LANCZOS
    return image.resize((cell, cell), resample)


def mosaic(where: Tensor, tiles: Sequence[Image.Image], grid: int, cell: int) -> Image.Image:
    """atlas.png: each occupied cell's tile at its (row, column) of the grid, the empty cells
    BACKGROUND."""
    sheet = Image.new("RGB", (grid * cell, grid * cell), BACKGROUND)
    for (row, col), picture in zip(where.tolist(), tiles, strict=True):
        sheet.paste(picture, (col * cell, row * cell))
    return sheet


def labelled(
    cells: Cells, tiles: Sequence[Image.Image], names: Sequence[str], grid: int, cell: int
) -> Image.Image:
    """atlas-labels.png: the atlas with a strip under each cell: a bar in its majority class's
    colour, the class's name, its count of vectors and the class's share of them."""
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (grid * cell, grid * (cell + STRIP)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    rows = zip(
        cells.where.tolist(), tiles, cells.counts.tolist(), cells.classes.tolist(),
        cells.shares.tolist(), strict=True,
    )  # fmt: skip
    for (row, col), picture, count, klass, share in rows:
        x, y = col * cell, row * (cell + STRIP)
        sheet.paste(picture, (x, y))
        line = f"n={count}"
        if klass >= 0:
            draw.rectangle((x, y + cell, x + cell - 1, y + cell + 2), fill=COLOURS[klass % 10])
            name = names[klass] if klass < len(names) else f"class {klass}"
            draw.text((x + 1, y + cell + 3), _fitted(name, cell, font), fill="black", font=font)
            line += f" {share:.0%}"
        draw.text((x + 1, y + cell + 13), _fitted(line, cell, font), fill="black", font=font)
    return sheet


def _fitted(text: str, width: int, font: Any) -> str:
    """`text` cut to fit `width` pixels."""
    while text and font.getlength(text) > width - 2:
        text = text[:-1]
    return text


# ----------------------------------------------------------------------------- the command


class Clock:
    """Seconds per stage of a run, as atlas.json records them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._start, 3)
        self._start = now


def digest(tensor: Tensor) -> str:
    """Eight hex digits of a tensor's values: renders are kept only for the same directions."""
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:8]


@dataclass
class Written:
    """What `run` wrote and found: the files, the cells, the vectors laid out, the measures, the
    seconds per stage and what the pass read."""

    index: Path
    picture: Path
    labels: Path
    cells: Cells
    vectors: int
    measures: dict[str, Any]
    seconds: dict[str, float]
    outcome: Outcome

    def summary(self, settings: Settings) -> list[str]:
        """What the command tells: the atlas, then each measure taken."""
        grid = settings.grid
        target = settings.target_name or settings.target
        of = settings.layer if target is None else f"{settings.layer} for class {target}"
        lines = [
            f"{len(self.cells.counts)} of {grid}x{grid} cells of {of} from {self.vectors} vectors"
        ]
        found = self.measures.get("render_class")
        if found and "share" in found:
            lines.append(
                f"renders classified as their cell's majority class: {found['agree']} of "
                f"{found['cells']} ({found['share']:.0%})"
            )
        distances = self.measures.get("distances") or {}
        shown = [
            f"{key.replace('_', ' ')} {distances[key]:.2f}"
            for key in PAIRS
            if distances.get(key) is not None
        ]
        if shown:
            lines.append("mean distance in cells: " + ", ".join(shown))
        return lines


@dataclass(frozen=True)
class Pass:
    """What the pass over the data kept (limited to `Settings.samples`), what it read, and its
    seconds."""

    sample: Sample
    outcome: Outcome
    seconds: float


def collect(
    scan: Scan,
    settings: Settings,
    folder: Path,
    resume: bool = False,
    progress: Progress | None = None,
) -> Pass:
    """The pass of `settings` over the scan's images, its checkpoint in `folder` (held and
    claimed); with `resume`, from that checkpoint."""
    start = time.perf_counter()
    samples = Samples(settings.layer, settings.per_image, settings.seed, filter_for(scan, settings))
    outcome = scan.run(samples, folder / CHECKPOINT, resume, progress)
    sample = limit(samples.sample(), settings.samples, settings.seed)
    check_sample(sample, outcome, settings.target)
    return Pass(sample, outcome, round(time.perf_counter() - start, 3))


def lay_out(sample: Sample, settings: Settings) -> tuple[Tensor, Tensor, Cells]:
    """The sample's t-SNE layout [N, 2], its normalised form in [0, 1]^2 and the cells of
    the grid; an atlas without a cell is refused."""
    raw = layout(sample.vectors, settings.seed)
    unit = normalise(raw)
    where = bins(unit, settings.grid)
    cells = gather(sample.vectors, sample.labels, where, settings.grid, settings.min_count)
    if not len(cells.counts):
        raise UserError(
            f"no cell holds {settings.min_count} vectors (--min-count): lower it or --grid, or "
            "sample more"
        )
    return raw, unit, cells


def make(
    scan: Scan,
    settings: Settings,
    done: Pass,
    config: Path,
    overrides: Sequence[str],
    folder: Path,
    log: Callable[[str], None] | None = None,
    backend: Backend | None = None,
) -> Written:
    """The atlas of a pass, in `folder` (held and claimed): laid out, its cells rendered with
    the config at `config` and its `overrides`, measured and tiled; the checkpoint is removed
    once atlas.json is written."""
    clock = Clock()
    clock.seconds["pass"] = done.seconds
    if log:
        log(f"laying out {len(done.sample.vectors)} vectors (t-SNE)")
    raw, unit, cells = lay_out(done.sample, settings)
    clock.lap("layout")
    tensors = save_tensors(folder, done.sample, raw, unit, cells)
    rows = vectors.Rows(config, tuple(overrides), settings.layer, tensors, "directions")
    renders = folder / f"renders-{digest(cells.directions)}"
    files = render(rows, len(cells.counts), renders, log, backend)
    clock.lap("renders")
    names = tuple(scan.images.classes)
    measures = measure(scan.network, settings, cells, files, names, scan.device)
    clock.lap("measures")
    write_pictures(folder, cells, files, names, settings)
    clock.lap("pictures")
    info = {
        "images": {"seen": done.outcome.seen, "skipped": len(done.outcome.skipped)},
        "vectors": len(done.sample.vectors),
        "data": scan.identity.get("data"),
        "model": scan.identity.get("model"),
        "spec": scan.layers[settings.layer],
    }
    index = finish(folder, settings, cells, rows, files, names, measures, clock.seconds, info)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    return Written(
        index, folder / PICTURE, folder / LABELS, cells, len(done.sample.vectors), measures,
        clock.seconds, done.outcome,
    )  # fmt: skip


def run(
    scan: Scan,
    settings: Settings,
    config: Path,
    overrides: Sequence[str],
    folder: Path,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    backend: Backend | None = None,
) -> Written:
    """`collect`, then `make` (its renders on `backend`: None, here)."""
    done = collect(scan, settings, folder, resume, progress)
    return make(scan, settings, done, config, overrides, folder, log, backend)


def write_pictures(
    folder: Path, cells: Cells, files: Sequence[Path], names: Sequence[str], settings: Settings
) -> None:
    """atlas.png and atlas-labels.png, from the renders `files` of the cells."""
    grid, cell = settings.grid, settings.cell
    tiles = [tile(path, cell) for path in files]
    write_atomic(folder / PICTURE, png_bytes(mosaic(cells.where, tiles, grid, cell)))
    write_atomic(folder / LABELS, png_bytes(labelled(cells, tiles, names, grid, cell)))


def render(
    rows: vectors.Rows,
    count: int,
    folder: Path,
    log: Callable[[str], None] | None,
    backend: Backend | None = None,
) -> list[Path]:
    """Render rows 0..count-1 into the sweep folder `folder` (on `backend`: None, here);
    Ctrl-C keeps those done, for --resume."""
    try:
        return vectors.render_rows(rows, count, folder, None, log, backend)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while rendering the cells (those done are kept in {folder}); run the "
            "same command with --resume to go on"
        ) from None


def save_tensors(folder: Path, sample: Sample, raw: Tensor, unit: Tensor, cells: Cells) -> Path:
    """atlas.safetensors: the cells (`directions` [M, C], `cells` [M, 2] (row, column),
    `counts`, `classes`, `shares` [M]), the vectors sampled (`vectors` [N, C], `images`,
    `positions`, `labels` [N], `attributions` with a class), their t-SNE layout (`tsne`
    [N, 2]), its normalised form (`layout` [N, 2] in [0, 1]) and each vector's cell
    (`members` [N], -1: none)."""
    tensors = {
        "directions": cells.directions,
        "cells": cells.where,
        "counts": cells.counts,
        "classes": cells.classes,
        "shares": cells.shares,
        **sample.tensors(),
        "tsne": raw,
        "layout": unit,
        "members": cells.members,
    }
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    write_atomic(folder / TENSORS, tensors_bytes(contiguous, {"format": FORMAT}))
    return folder / TENSORS


def finish(
    folder: Path,
    settings: Settings,
    cells: Cells,
    rows: vectors.Rows,
    files: Sequence[Path],
    names: Sequence[str],
    measures: dict[str, Any],
    seconds: dict[str, float],
    info: dict[str, Any],
) -> Path:
    """atlas.json (last: it marks the folder done)."""
    predicted = measures.get("predicted")
    entries = []
    for k, path in enumerate(files):
        klass = int(cells.classes[k])
        entries.append(
            {
                "index": k,
                "row": int(cells.where[k, 0]),
                "col": int(cells.where[k, 1]),
                "count": int(cells.counts[k]),
                "class": klass,
                "class_name": names[klass] if 0 <= klass < len(names) else None,
                "share": round(float(cells.shares[k]), 4),
                "predicted": None if predicted is None else predicted[k],
                "file": path.relative_to(folder).as_posix(),
            }
        )
    index = {
        "format": FORMAT,
        "versions": versions(),
        "seed": settings.seed,
        "seconds": seconds,
        "parameters": {
            "layer": settings.layer,
            "grid": settings.grid,
            "per_image": settings.per_image,
            "samples": settings.samples,
            "class": settings.target,
            "class_name": settings.target_name,
            "logits": settings.logits,
            "min_count": settings.min_count,
            "cell": settings.cell,
            "layout": {
                "method": "t-SNE",
                "perplexity_max": PERPLEXITY,
                "clip_percentiles": [1, 99],
            },
        },
        **info,
        "classes": list(names),
        "measures": {k: v for k, v in measures.items() if k != "predicted"},
        "picture": PICTURE,
        "labels": LABELS,
        "tensors": TENSORS,
        "render": rows.metadata(),
        "cells": entries,
    }
    write_atomic(folder / INDEX, to_json(index))
    return folder / INDEX
