"""Activation grids: a layer's activation vector at every place of an image, each rendered as a
direction and tiled where it lies ("The Building Blocks of Interpretability", Olah et al. 2018).

The layer's activations on the image, A [C, H, W], are averaged into an R x Q grid of cells
(adaptive average pooling: every position of the layer when it has at most 8 x 8, else 8 x 8
cells unless `--cells` says otherwise). Cell k's vector v_k becomes batch item k of one
optimization, which maximizes lucid's dot x cosine with it (`GridCells`: `dot_cossim` with each
item's own vector). Two things keep neighbouring cells' renders aligned, so the tiled grid reads
as one picture: a parameterization partly shared by the whole batch (`param.shared`, default
0.5) and a penalty on the difference of neighbouring cells' activations, left/right and up/down
on the grid (`GridAlignment`, the 2-D analogue of the `alignment` objective).

The render runs through fvis's normal path, as `fvis render` runs a config: the user's config
with its objective replaced (two `plugin` terms naming this module's factories, `cells` and
`alignment`) and `param.batch` set to the number of cells, into the run folder DIR/render.
DIR/grid.png tiles the renders in the layer's layout beside the image; DIR/grid.safetensors
holds the vectors and the layout; DIR/grid.json the parameters, timings, measures and the
command that renders one cell alone as a normal config.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from fvis import runs, vectors
from fvis.config import Config, TensorFile
from fvis.errors import UserError
from fvis.hooks import Capture, select
from fvis.io import png_bytes, read_image, tensors_bytes, to_json, to_pil, write_atomic
from fvis.models import Network
from fvis.objectives.activation import channel_count, positions
from fvis.objectives.algebra import Leaf, TermError, label, unless
from fvis.objectives.compile import read_tensor
from fvis.render import Plan, Result
from fvis.writers import versions

INDEX = "grid.json"
TENSORS = "grid.safetensors"
PICTURE = "grid.png"
RENDER = "render"
"""The run folder of the grid's render, inside the grid folder (grid.png is the grid's own)."""
KIND = runs.Kind(
    "grid folder",
    (INDEX, TENSORS),
    re.compile(rf"grid\.json|grid\.safetensors|grid\.png|{RENDER}/(?:{runs.OUTPUTS.pattern})"),
    runs.CHECKPOINT,
)
"""`fvis grid`'s folder: its index, tensors and picture, and the render's run folder."""
DEFAULT_SIDE = 8
"""Cells a side by default: every position of a layer of at most 8 x 8, else 8 x 8 cells (64
renders in one batch: on the built-in model at 64 px on two CPU cores, 0.08 s a step, 20 s in
all for 192 steps; every position of its 16x16 conv3, 256 cells, 0.36 s a step, 76 s)."""
MAX_CELLS = 1024
"""Cells at most (32 x 32): every cell is a batch item of one optimization."""
SHARED = 0.5
"""`param.shared` unless the config or --set gives one: half of every cell's parameters are
common to the grid, as in configs/interpolation.yaml."""
ALIGN = 3.0
"""Default weight of the 2-D alignment penalty (`--align`). On the built-in model at conv3 (an
image of two regions, 8 x 8 cells, 192 steps), param.shared 0.5 cuts the pixel difference of
neighbouring renders by 62 %, the penalty at 3 by another 5 % (at 10, 14 %, for 4 % less
objective); at either weight every cell's direction is still excited more by its own render
than by the farthest cell's."""
RENDER_CELL = 16
"""`output.cell` of the render unless the config or --set gives one: its own grid.png (a row
per cell, a column per snapshot, rewritten at every snapshot) at the renders' own size."""
MAX_SIDE = 4096
"""grid.png's tiled part is at most this many pixels a side: larger renders are scaled down."""
GAP = 8
BACKGROUND = (255, 255, 255)
LINES = (255, 255, 255)


# ----------------------------------------------------------------------------- activations


def image_activations(network: Network, spec: str, path: Path) -> tuple[Tensor, Tensor]:
    """The image at `path` fitted to the model's input [C, H, W] (shorter side resized, centre
    cropped, as `fvis.data` fits images), and the layer's activations on it [C, h, w]; a layer
    without places ([B, C], tokens) is refused."""
    if not path.is_file():
        raise UserError(f"--image {path}: no such file")
    prep = network.prep
    image = read_image(path, "L" if prep.channels == 1 else "RGB", prep.size, fit="crop")
    with torch.inference_mode(), Capture(network.model, [spec], network) as capture:
        out = select(capture.run(image[None]), spec)
    if out.dim() != 4:
        raise UserError(
            f"--layer: an activation grid needs a [B, C, H, W] layer; this one gives "
            f"{list(out.shape)}"
        )
    return image, out[0].float().cpu()


def grid_shape(layer: str, spatial: tuple[int, int], cells: int | None) -> tuple[int, int]:
    """(rows, columns) of cells: min(N, H) x min(N, W) for `--cells N`, by default every
    position of a layer of at most DEFAULT_SIDE^2 positions, else DEFAULT_SIDE a side."""
    h, w = spatial
    if cells is None:
        return (h, w) if h * w <= DEFAULT_SIDE**2 else (min(h, DEFAULT_SIDE), min(w, DEFAULT_SIDE))
    if not 1 <= cells <= max(h, w):
        raise UserError(
            f"--cells {cells}: expected 1 to {max(h, w)} ({layer} is {h}x{w} on this image)"
        )
    rows, cols = min(cells, h), min(cells, w)
    if rows * cols > MAX_CELLS:
        most = int(MAX_CELLS**0.5)
        raise UserError(
            f"--cells {cells}: {rows * cols} cells, more than the {MAX_CELLS} one optimization "
            f"renders: use --cells {most} or fewer"
        )
    return rows, cols


def cell_vectors(acts: Tensor, shape: tuple[int, int]) -> Tensor:
    """The mean activation vector of each cell [R * Q, C], row-major: adaptive average pooling
    of `acts` [C, H, W] to R x Q (cell (i, j) averages rows floor(i H / R) to ceil((i + 1) H / R)
    - 1, and the columns alike)."""
    return F.adaptive_avg_pool2d(acts[None], shape)[0].flatten(1).T.contiguous()


# ----------------------------------------------------------------------------- objectives


@dataclass(eq=False)
class GridCells(Leaf):
    """Each item its own cell's direction: item b scores lucid's dot x cosine with v_b,
    mean over positions p of dot(a_bp, v_b) * max(cos(a_bp, v_b), floor)^cossim_pow.

    Item b's value is `dot_cossim(layer, v_b)`'s on item b; a sum of B such terms, each masked
    to its item, evaluates every term on every item (B^2 products), this one B.
    """

    layer: str
    vectors: Tensor
    cossim_pow: float = 1.0
    floor: float = 0.1

    def __post_init__(self) -> None:
        self.name = label(
            "grid_cells",
            self.layer,
            cells=len(self.vectors),
            cossim_pow=unless(self.cossim_pow, 1.0),
            floor=unless(self.floor, 0.1),
        )

    def check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        channels = channel_count(shapes[self.layer])
        if self.vectors.dim() != 2 or self.vectors.shape[1] != channels:
            raise TermError(
                "file",
                f"the vectors are {list(self.vectors.shape)}, the layer needs [cells, {channels}]",
            )

    def value(self, x: Tensor) -> Tensor:
        _check_batch(self.name, x, len(self.vectors))
        a, v = positions(x), self.vectors
        dot = torch.einsum("bcn,bc->bn", a, v)
        norms = a.norm(dim=1) * v.norm(dim=1)[:, None]
        return dot_cosine(dot, norms, self.cossim_pow, self.floor)


def dot_cosine(dot: Tensor, norms: Tensor, power: float, floor: float) -> Tensor:
    """Mean over the last dimension of dot * max(cos, floor)^power, cos = dot / norms: lucid's
    dot x cosine from the dot products and the products of the norms (power 0: the dot)."""
    if power == 0:
        return dot.mean(-1)
    cos = dot / (norms + 1e-8)
    return (dot * cos.clamp(min=floor).pow(power)).mean(-1)


@dataclass(eq=False)
class GridAlignment(Leaf):
    """Alignment on a grid: the batch laid out row-major on `rows` x `cols` cells (item
    b = i * cols + j), each pair of cells d = 1..distance apart along a row or a column pays
    mean((A_b - A_b')^2) / decay^d, half from each of its two items; the batch total is minus
    the sum over pairs.

    The `alignment` objective's penalty with neighbours on the grid (left/right and up/down)
    instead of in batch order, where row-major order would pair a row's last cell with the
    next row's first.
    """

    layer: str
    rows: int
    cols: int
    decay: float = 2.0
    distance: int = 1

    def __post_init__(self) -> None:
        self.name = label(
            "grid_alignment",
            self.layer,
            self.rows,
            self.cols,
            decay=unless(self.decay, 2.0),
            distance=unless(self.distance, 1),
        )

    def value(self, x: Tensor) -> Tensor:
        _check_batch(self.name, x, self.rows * self.cols)
        grid = x.reshape(self.rows, self.cols, -1)
        out = x.new_zeros(self.rows, self.cols)
        for d in range(1, self.distance + 1):
            half = 2 * self.decay**d
            if d < self.cols:
                pair = (grid[:, d:] - grid[:, :-d]).square().mean(-1) / half
                out = out - F.pad(pair, (d, 0)) - F.pad(pair, (0, d))
            if d < self.rows:
                pair = (grid[d:] - grid[:-d]).square().mean(-1) / half
                out = out - F.pad(pair, (0, 0, d, 0)) - F.pad(pair, (0, 0, 0, d))
        return out.flatten()


def _check_batch(name: str, x: Tensor, cells: int) -> None:
    """A grid term needs one batch item per cell."""
    if x.shape[0] != cells:
        raise UserError(
            f"{name}: {cells} cells for a batch of {x.shape[0]} images: set param.batch to {cells}"
        )


def cells(
    layer: str, file: str, key: str = "vectors", cossim_pow: float = 1.0, floor: float = 0.1
) -> GridCells:
    """The `plugin` factory of `GridCells`: the vectors [cells, C] under `key` in `file` (a
    plugin's keys reach it as written: a relative path is from the working folder)."""
    vectors_ = read_tensor(TensorFile(file=Path(file), key=key), Path(), ("objective",))
    return GridCells(layer, vectors_, float(cossim_pow), float(floor))


def alignment(
    layer: str, rows: int, cols: int, decay: float = 2.0, distance: int = 1
) -> GridAlignment:
    """The `plugin` factory of `GridAlignment`."""
    if rows < 1 or cols < 1 or distance < 1 or decay <= 0:
        raise ValueError("rows, cols and distance must be at least 1 and decay positive")
    return GridAlignment(layer, int(rows), int(cols), float(decay), int(distance))


# ----------------------------------------------------------------------------- the render


@dataclass(frozen=True)
class Cells:
    """A grid's cells: the layer (as named, and its spec), the image fitted to the model's
    input, the layer's activations on it [C, H, W], the layout (rows, columns) and each cell's
    vector [rows * columns, C]."""

    layer: str
    spec: str
    image: Tensor
    acts: Tensor
    shape: tuple[int, int]
    vectors: Tensor

    @property
    def count(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def pooled(self) -> bool:
        """Whether cells average several positions (rather than one each)."""
        return self.shape != tuple(self.acts.shape[1:])


def measure(network: Network, layer: str, spec: str, image: Path, count: int | None) -> Cells:
    """The cells of `layer` (resolved to `spec`) on `image`, `count` a side (`--cells`)."""
    shown, acts = image_activations(network, spec, image)
    shape = grid_shape(layer, (acts.shape[1], acts.shape[2]), count)
    return Cells(layer, spec, shown, acts, shape, cell_vectors(acts, shape))


def save_tensors(folder: Path, grid: Cells) -> Path:
    """grid.safetensors: `vectors` [cells, C] (the directions rendered, row-major), `layout`
    [2] (rows, columns) and `activations` [C, H, W] (the layer on the image)."""
    tensors = {
        "vectors": grid.vectors,
        "layout": torch.tensor(grid.shape, dtype=torch.long),
        "activations": grid.acts,
    }
    write_atomic(folder / TENSORS, tensors_bytes(tensors, {"layer": grid.layer}))
    return folder / TENSORS


def objective(tensors: Path, grid: Cells, align: float) -> dict[str, Any]:
    """The render's objective node: `GridCells` on the file's vectors, and `GridAlignment`
    with weight `align` (left out at 0)."""
    terms: list[dict[str, Any]] = [
        {
            "kind": "plugin",
            "factory": "fvis.grid:cells",
            "layer": grid.layer,
            "file": str(tensors.resolve()),
            "key": "vectors",
        }
    ]
    if align > 0:
        rows, cols = grid.shape
        terms.append(
            {
                "kind": "plugin",
                "factory": "fvis.grid:alignment",
                "layer": grid.layer,
                "rows": rows,
                "cols": cols,
                "weight": align,
            }
        )
    return {"kind": "sum", "terms": terms}


def render_overrides(
    config: Config, overrides: list[str], tensors: Path, grid: Cells, align: float
) -> list[str]:
    """The `--set`s that make the user's config (`config`, loaded with `overrides`) the grid's
    render: `param.shared` and `output.cell` (SHARED and RENDER_CELL, unless the config or
    --set gives them), the user's own, one batch item per cell and the grid objective."""
    defaults = []
    if "shared" not in config.param.model_fields_set:
        defaults.append(f"param.shared={SHARED}")
    if "cell" not in config.output.model_fields_set:
        defaults.append(f"output.cell={RENDER_CELL}")
    node = json.dumps(objective(tensors, grid, align))
    return [*defaults, *overrides, f"param.batch={grid.count}", f"objective={node}"]


# ----------------------------------------------------------------------------- the picture


def tile(renders: Tensor, shape: tuple[int, int]) -> Tensor:
    """The renders [R * Q, 3, h, w] (row-major) side by side in their R x Q layout, scaled down
    (antialiased) where the whole would exceed MAX_SIDE pixels a side."""
    rows, cols = shape
    h, w = renders.shape[-2:]
    k = min(1.0, MAX_SIDE / (rows * h), MAX_SIDE / (cols * w))
    if k < 1:
        size = (max(1, int(h * k)), max(1, int(w * k)))
        renders = F.interpolate(renders, size, mode="bilinear", antialias=True).clamp(0, 1)
        h, w = size
    grid = renders.reshape(rows, cols, -1, h, w).permute(2, 0, 3, 1, 4)
    return grid.reshape(-1, rows * h, cols * w)


def picture(
    path: Path, fitted: tuple[int, int], tiled: Tensor, shape: tuple[int, int]
) -> Image.Image:
    """grid.png: the image (the crop the model saw, `fitted` (H, W), read again at the tiled
    grid's height), its cells outlined, then the tiled renders."""
    height, width = tiled.shape[-2:]
    side = (height, max(1, round(height * fitted[1] / fitted[0])))
    image = to_pil(read_image(path, "RGB", side, fit="crop"))
    draw = ImageDraw.Draw(image)
    rows, cols = shape
    for i in range(1, rows):
        y = round(i * side[0] / rows)
        draw.line((0, y, side[1], y), fill=LINES)
    for j in range(1, cols):
        x = round(j * side[1] / cols)
        draw.line((x, 0, x, side[0]), fill=LINES)
    sheet = Image.new("RGB", (side[1] + GAP + width, height), BACKGROUND)
    sheet.paste(image, (0, 0))
    sheet.paste(to_pil(tiled), (side[1] + GAP, 0))
    return sheet


def colours(images: Tensor) -> Tensor:
    """Renders [B, C, h, w] as RGB [B, 3, h, w]: grey repeated, extra channels dropped."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


# ----------------------------------------------------------------------------- measures


def excitation(
    network: Network,
    spec: str,
    renders: Tensor,
    vectors_: Tensor,
    power: float = 1.0,
    floor: float = 0.1,
) -> Tensor:
    """S [B, K]: how much render b (as the model sees it, untransformed) excites cell k's
    direction, by the render's objective (`GridCells`' dot x cosine, mean over positions)."""
    device = next(network.buffers()).device
    rows = []
    with torch.no_grad(), Capture(network.model, [spec], network) as capture:
        for chunk in renders.split(64):
            a = positions(select(capture.run(chunk.to(device)), spec).float().cpu())
            dot = torch.einsum("bcn,kc->bkn", a, vectors_)
            norms = a.norm(dim=1)[:, None] * vectors_.norm(dim=1)[None, :, None]
            rows.append(dot_cosine(dot, norms, power, floor))
    return torch.cat(rows)


def far_cells(shape: tuple[int, int]) -> Tensor:
    """For each cell, the cell farthest from it on the grid (Euclidean, the first of ties)."""
    rows, cols = shape
    where = torch.stack(
        torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1
    ).reshape(-1, 2)
    return torch.cdist(where.float(), where.float()).argmax(1)


def summary(scores: Tensor, renders: Tensor, shape: tuple[int, int]) -> dict[str, Any]:
    """grid.json's measures, from the scores S [B, K] (`excitation`): how much each cell's
    direction is excited by its own render, by the others' (mean) and by the farthest cell's;
    the share of cells whose direction its own render excites more than the farthest cell's
    render does (one direction against two renders, so that no vector's length favours it);
    and the mean absolute pixel difference of neighbouring renders (left/right, up/down)
    against that of all pairs."""
    k = len(scores)
    own = scores.diagonal()
    far = scores[far_cells(shape), torch.arange(k)]
    others = (scores.sum(0) - own) / max(1, k - 1)
    grid = renders.reshape(*shape, -1)
    steps = [(grid[:, 1:] - grid[:, :-1]), (grid[1:] - grid[:-1])]
    near = torch.cat([s.abs().mean(-1).flatten() for s in steps if s.numel()])
    flat = renders.flatten(1)
    every = torch.cdist(flat, flat, p=1) / flat.shape[1]
    pairs = every[torch.triu_indices(k, k, 1).unbind()]
    return {
        "own": _short(own.mean()),
        "others": _short(others.mean()),
        "farthest": _short(far.mean()),
        "own_over_farthest": _short((own > far).float().mean()) if k > 1 else None,
        "neighbour_difference": _short(near.mean()) if near.numel() else None,
        "pair_difference": _short(pairs.mean()) if pairs.numel() else None,
    }


def _short(value: Tensor | float) -> float:
    return round(float(value), 6)


# ----------------------------------------------------------------------------- the folder


@dataclass
class Record:
    """What grid.json records besides the measures: the user's config and overrides, the
    render's overrides, the cells' parameters and the seconds per stage."""

    config: Path
    overrides: list[str]
    render_overrides: list[str]
    image: Path
    align: float
    seconds: dict[str, float] = field(default_factory=dict)


def finish(
    folder: Path, grid: Cells, plan: Plan, render: Config, result: Result, record: Record
) -> Path:
    """grid.png, then grid.json (last: it marks the folder done), from the render's final
    images as the model sees them."""
    start = time.perf_counter()
    images = plan.param.opaque(result.final.images)
    renders = colours(images)
    tiled = tile(renders, grid.shape)
    fitted = (grid.image.shape[1], grid.image.shape[2])
    write_atomic(folder / PICTURE, png_bytes(picture(record.image, fitted, tiled, grid.shape)))
    scores = excitation(plan.network, grid.spec, images, grid.vectors)
    measures = summary(scores, renders, grid.shape)
    record.seconds["picture"] = round(time.perf_counter() - start, 3)
    rows = vectors.Rows(
        record.config, tuple(record.overrides), grid.layer, folder / TENSORS, "vectors"
    )
    objective = [sum(s.objective) / len(s.objective) for s in (result.initial, result.final)]
    index = {
        "versions": versions(),
        "config": str(record.config),
        "overrides": record.overrides,
        "image": str(record.image),
        "layer": grid.layer,
        "spec": grid.spec,
        "layer_shape": list(grid.acts.shape),
        "cells": {"rows": grid.shape[0], "cols": grid.shape[1], "count": grid.count},
        "pooled": grid.pooled,
        "seed": render.seed,
        "device": str(plan.device),
        "parameters": {
            "objective": "dot_cossim",
            "shared": render.param.shared,
            "align": record.align,
            "steps": result.steps_done,
            "size": list(images.shape[-2:]),
        },
        "seconds": record.seconds,
        "seconds_per_step": round(result.seconds / max(1, result.steps_done), 6),
        "mean_objective": {"initial": _short(objective[0]), "final": _short(objective[1])},
        "measures": measures,
        "picture": PICTURE,
        "tensors": TENSORS,
        "render": {"folder": RENDER, "overrides": record.render_overrides},
        "cell": rows.metadata(),
    }
    write_atomic(folder / INDEX, to_json(index))
    return folder / INDEX
