"""Neuron groups: a layer's activations factored into a few groups of channels that fire
together, each shown where it is active and rendered ("The Building Blocks of
Interpretability", Olah et al. 2018).

A layer's activations A [P, C] (the P positions of one image, or positions sampled over a
dataset) are factored by non-negative matrix factorization, A ~ W H, with W [P, K] >= 0 (where
each group is active) and H [K, C] >= 0 (how much each channel belongs to it). NMF rather than
PCA or ICA because non-negative factors read as parts, "these channels, here", where signed
components cancel each other. scikit-learn's NMF (coordinate descent from an NNDSVDa start) is
the reference implementation, deterministic for a seed. Each group's channel weights are
rendered as a direction (`fvis.vectors`); the groups are numbered by their share of the total
activation, largest first.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from fvis import runs, vectors
from fvis.data import UNLABELLED, Batch, FileImages
from fvis.errors import UserError
from fvis.hooks import Capture, select
from fvis.io import png_bytes, read_image, tensors_bytes, to_json, to_pil, write_atomic
from fvis.models import Network
from fvis.scan import Outcome, Progress, Scan
from fvis.sweep import Backend
from fvis.writers import versions

INDEX = "groups.json"
TENSORS = "groups.safetensors"
PICTURE = "groups.png"
CHECKPOINT = ".groups.partial.safetensors"
KIND = runs.Kind(
    "groups folder",
    (INDEX, TENSORS, CHECKPOINT),
    re.compile(
        r"groups\.json|groups\.safetensors|groups\.png|\.groups\.partial\.safetensors"
        r"|renders-[0-9a-f]+/[^/]+"
    ),
    CHECKPOINT,
)
"""`fvis groups`' folder: its index, tensors, picture, scan checkpoint and renders."""
MAX_GROUPS = 12
CELL = 128
# One colour per group, distinct on screen and in print (matplotlib's tab10, then two more).
PALETTE = (
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.50, 0.50, 0.50),
    (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81),
    (0.00, 0.00, 0.50),
    (0.50, 1.00, 0.50),
)


@dataclass(frozen=True)
class Settings:
    """What groups are made of: the layer (its name as given), the number of groups, positions
    sampled per image of the data, the seed of the sample and of NMF, the data source as given
    (recorded in groups.json), and the config at `config` with its `overrides` that renders
    each group."""

    layer: str
    count: int
    config: Path
    overrides: tuple[str, ...] = ()
    per_image: int = 4
    seed: int = 0
    data: str | None = None


@dataclass(frozen=True)
class Factors:
    """K groups: their channel weights H [K, C], their maps W on the image [K, h, w] (None
    without an image), and the relative error ||A - W H|| / ||A|| of the factored activations."""

    channels: Tensor
    maps: Tensor | None
    error: float


# ----------------------------------------------------------------------------- activations


def image_activations(network: Network, spec: str, path: Path) -> tuple[Tensor, Tensor]:
    """The image at `path` fitted to the model's input [3, H, W], and the layer's activations
    on it [C, h, w] (a layer without positions is refused: groups need places)."""
    prep = network.prep
    images = FileImages([path], [UNLABELLED], (), path.parent, prep.size, prep.channels)
    image = images.read(0)
    with (
        torch.inference_mode(),
        Capture(network.model, [spec], network) as capture,
    ):
        out = select(capture.run(image[None]), spec)
    if not isinstance(out, Tensor) or out.dim() != 4:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(f"--layer: groups need a [B, C, H, W] layer; this one gives {shape}")
    return image, out[0].float().cpu()


class Positions:
    """A `fvis.scan` accumulator: `per_image` positions of each image, drawn from (seed, the
    image's index in the source), so a sample does not depend on batches or on resuming."""

    def __init__(self, layer: str, per_image: int, seed: int) -> None:
        self.layer, self.per_image, self.seed = layer, per_image, seed
        self.rows: list[Tensor] = []

    def update(self, batch: Batch, acts: dict[str, Tensor]) -> None:
        x = acts[self.layer]  # [B, C, P]
        for b, index in enumerate(batch.ids.tolist()):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            chosen = torch.randperm(x.shape[2], generator=g)[: self.per_image]
            self.rows.append(x[b, :, chosen].T.cpu())

    def state(self) -> dict[str, Tensor]:
        return {"vectors": self.vectors()}

    def load(self, state: dict[str, Tensor]) -> None:
        self.rows = [state["vectors"]]

    def extend(self, state: dict[str, Tensor]) -> None:
        if len(state["vectors"]):
            self.rows.append(state["vectors"])

    def vectors(self) -> Tensor:
        """The sampled activation vectors [N, C]."""
        return torch.cat(self.rows) if self.rows else torch.zeros(0, 0)


# ----------------------------------------------------------------------------- factoring


def check_groups(k: int, vectors_: Tensor) -> None:
    """Refuse a number of groups the activations cannot hold."""
    n, c = vectors_.shape
    if not 1 <= k <= min(MAX_GROUPS, n, c):
        most = min(MAX_GROUPS, n, c)
        raise UserError(
            f"--groups {k}: expected 1 to {most} (the layer has {c} channels, the activations "
            f"{n} positions, and a picture holds at most {MAX_GROUPS} groups)"
        )


def factor(acts: Tensor, k: int, seed: int, image: Tensor | None = None) -> Factors:
    """NMF of `acts` [N, C] (negative values set to 0) into `k` groups, largest first; with
    `image` activations [C, h, w], the groups' maps on it (the fitted H held fixed)."""
    from sklearn.decomposition import NMF  # lazy: start-up time

    data = acts.clamp(min=0).double().numpy()
    if not data.any():
        raise UserError("the activations are all zero or negative: nothing to factor")
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=2000, tol=1e-6)
    w = model.fit_transform(data)
    h = model.components_
    order = np.argsort(-(w.sum(0) * h.sum(1)), kind="stable")  # each group's share of W H
    error = float(np.linalg.norm(data - w @ h) / np.linalg.norm(data))
    maps = None
    if image is not None:
        c, height, width = image.shape
        flat = image.clamp(min=0).double().reshape(c, -1).T.numpy()
        on_image = w if image_is(acts, image) else model.transform(flat)
        maps = torch.from_numpy(on_image[:, order].T.copy()).float().reshape(k, height, width)
    return Factors(torch.from_numpy(h[order].copy()).float(), maps, error)


def image_is(acts: Tensor, image: Tensor) -> bool:
    """Whether `acts` [P, C] are the positions of `image` [C, h, w] themselves."""
    return acts.shape[0] == image.shape[1] * image.shape[2] and torch.equal(
        acts, image.reshape(image.shape[0], -1).T
    )


def region_share(group_map: Tensor, region: Tensor) -> float:
    """The share of a group's map (its total weight) that lies inside `region` (a boolean
    mask of the same [h, w])."""
    total = float(group_map.sum())
    return float(group_map[region].sum()) / total if total > 0 else 0.0


def digest(tensor: Tensor) -> str:
    """Eight hex digits of a tensor's values: renders are kept only for the same directions."""
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:8]


# ----------------------------------------------------------------------------- the picture


def overlay(image: Tensor, maps: Tensor) -> Tensor:
    """The image [3, H, W] with each group's map [K, h, w] (scaled to its maximum) painted in
    its palette colour where that group is the strongest, in proportion to its strength."""
    size = image.shape[-2:]
    up = F.interpolate(maps[None], size, mode="bilinear", align_corners=False)[0].clamp(min=0)
    up = up / up.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    strength, strongest = up.max(0)
    colours = torch.tensor(PALETTE[: len(maps)]).T[:, strongest]  # [3, H, W]
    alpha = 0.7 * strength
    return image * (1 - alpha) + colours * alpha


def tinted(group_map: Tensor, colour: tuple[float, float, float], size: int) -> Tensor:
    """One group's map [h, w] as a picture [3, size, size]: its colour in proportion to the
    map (scaled to its maximum), black where it is 0."""
    up = F.interpolate(group_map[None, None], (size, size), mode="nearest")[0, 0].clamp(min=0)
    up = up / up.max().clamp(min=1e-12)
    return torch.tensor(colour)[:, None, None] * up


def picture(renders: list[Tensor], image: Tensor | None, maps: Tensor | None) -> Image.Image:
    """groups.png: a column per group (its number and colour, its map on the image if any,
    its render), after a column with the image and the overlay of every group."""
    k, rows = len(renders), 2 if maps is not None else 1
    first = 1 if image is not None else 0
    header = 16
    sheet = Image.new("RGB", ((first + k) * (CELL + 4), header + rows * (CELL + 4)), "white")
    draw = ImageDraw.Draw(sheet)

    def paste(tile: Tensor, column: int, row: int) -> None:
        small = F.interpolate(tile[None].clamp(0, 1), (CELL, CELL), mode="bilinear")[0]
        sheet.paste(to_pil(small), (column * (CELL + 4) + 2, header + row * (CELL + 4) + 2))

    if image is not None:
        draw.text((4, 2), "image", fill="black")
        paste(image, 0, 0)
        if maps is not None:
            paste(overlay(image, maps), 0, 1)
    for g in range(k):
        x = (first + g) * (CELL + 4)
        colour = tuple(round(255 * v) for v in PALETTE[g])
        draw.rectangle((x + 2, 0, x + CELL + 1, header - 3), fill=colour)
        draw.text((x + 6, 2), f"group {g}", fill="white")
        if maps is not None:
            paste(tinted(maps[g], PALETTE[g], CELL), first + g, 0)
        paste(renders[g], first + g, rows - 1)
    return sheet


# ----------------------------------------------------------------------------- the command


def save_tensors(folder: Path, factors: Factors, sampled: Tensor | None) -> Path:
    """groups.safetensors: `channels` [K, C] (the directions rendered), `maps` [K, h, w] on the
    image, `vectors` [N, C] the activations sampled from the data."""
    tensors = {"channels": factors.channels}
    if factors.maps is not None:
        tensors["maps"] = factors.maps
    if sampled is not None:
        tensors["vectors"] = sampled
    write_atomic(folder / TENSORS, tensors_bytes(tensors))
    return folder / TENSORS


def finish(
    folder: Path,
    factors: Factors,
    rows: vectors.Rows,
    renders: list[Path],
    image: Tensor | None,
    info: dict[str, Any],
) -> Path:
    """groups.png, then groups.json (last: it marks the folder done)."""
    pictures = [read_image(path) for path in renders]
    write_atomic(folder / PICTURE, png_bytes(picture(pictures, image, factors.maps)))
    weight = factors.maps.flatten(1).sum(1) if factors.maps is not None else None
    index = {
        **info,
        "versions": versions(),
        "error": round(factors.error, 6),
        "picture": PICTURE,
        "tensors": TENSORS,
        "render": rows.metadata(),
        "groups": [
            {
                "group": g,
                "colour": PALETTE[g],
                "render": path.relative_to(folder).as_posix(),
                "top_channels": factors.channels[g].argsort(descending=True)[:8].tolist(),
                **({"map_weight": round(float(weight[g]), 6)} if weight is not None else {}),
            }
            for g, path in enumerate(renders)
        ],
    }
    write_atomic(folder / INDEX, to_json(index))
    return folder / INDEX


@dataclass(frozen=True)
class Written:
    """What `run` wrote and found: groups.json, the factors, the positions factored and what
    the pass over the data read (None without data)."""

    index: Path
    factors: Factors
    positions: int
    outcome: Outcome | None


def run(
    network: Network,
    spec: str,
    settings: Settings,
    folder: Path,
    scan: Scan | None = None,
    image: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    backend: Backend | None = None,
) -> Written:
    """The groups of a layer in `folder` (held and claimed): its activations on positions
    sampled over the scan's images and/or on `image`, factored, each group rendered with the
    settings' config (on `backend`: None, here); the checkpoint of the pass is removed once
    groups.json is written."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    sampled = fitted = shown = acts = None
    outcome = None
    if scan is not None:
        positions = Positions(settings.layer, settings.per_image, settings.seed)
        outcome = scan.run(positions, folder / CHECKPOINT, resume, progress)
        sampled = fitted = positions.vectors()
    if image is not None:
        shown, acts = image_activations(network, spec, image)
        fitted = acts.flatten(1).T if fitted is None else fitted
    if fitted is None:
        raise ValueError("groups.run needs a scan, an image or both")
    start = timed(seconds, "activations", start)
    check_groups(settings.count, fitted)
    factors = factor(fitted, settings.count, settings.seed, acts)
    start = timed(seconds, "factoring", start)
    tensors = save_tensors(folder, factors, sampled)
    rows = vectors.Rows(settings.config, settings.overrides, settings.layer, tensors, "channels")
    renders = folder / f"renders-{digest(factors.channels)}"
    paths = vectors.render_rows(rows, settings.count, renders, None, log, backend)
    timed(seconds, "renders", start)
    info = {
        "layer": settings.layer,
        "spec": spec,
        "count": settings.count,
        "image": None if image is None else str(image),
        "data": None if scan is None else settings.data,
        "per_image": settings.per_image if scan is not None else None,
        "positions": int(fitted.shape[0]),
        "seed": settings.seed,
        "seconds": seconds,
    }
    index = finish(folder, factors, rows, paths, shown, info)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    return Written(index, factors, int(fitted.shape[0]), outcome)


def timed(seconds: dict[str, float], name: str, start: float) -> float:
    """Record the seconds since `start` under `name`; returns now."""
    now = time.perf_counter()
    seconds[name] = round(now - start, 3)
    return now
