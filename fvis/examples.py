"""Dataset examples: for each unit of a layer, the images (and the crops of them) that excite it
most and least, found in one streaming pass with a running top-K per unit.

A unit is a channel of a layer (a conv layer's channel, a linear layer's neuron, a class
logit); at each of the layer's positions it has one activation. Each image scores a unit twice:
by its mean over the positions and by its maximum (and where it lies). `TopK` keeps, per unit,
the K highest and the K lowest images by each score, and nothing more, whatever the size of the
data: every batch is merged into what it kept by one stable sort, so the result equals a sort of
all the activations at once (ties: the lower image id first, see `merge`).

The crops around a maximum are the unit's receptive field there (`fvis.receptive`), clipped to
the image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from fvis import receptive, runs
from fvis.data import Batch, Images, Item
from fvis.errors import UserError
from fvis.hooks import Capture, select
from fvis.io import png_bytes, tensors_bytes, to_json, to_pil, write_atomic
from fvis.receptive import Field
from fvis.scan import Outcome, Progress, Scan

FORMAT = "fvis-examples-1"
INDEX = "examples.json"
TENSORS = "examples.safetensors"
CHECKPOINT = runs.EXAMPLES.checkpoint
SPATIAL = ("top_mean", "bottom_mean", "top_max", "bottom_max")
"""The rankings of a layer with several positions: by the mean over positions, by the maximum."""
FLAT = ("top", "bottom")
"""The rankings of a layer with one position ([B, C]), where the mean and the maximum coincide."""
CHANNELS = re.compile(r"(\d{1,9})(?::(\d{1,9}))?")
MAX_UNITS = 1 << 20
"""More channels than any layer has: a --channels range is refused beyond it (before the
layers are known), so that a mistyped 0:999999999 is an error, not a billion indices."""
BOX_NOTE = (
    "box: a max ranking's receptive field at its position, [top, left, height, width] in the "
    "image's pixels (as fitted to the model's input); it may reach beyond the image, and the "
    "crop on the sheet is the box clipped to the image (grey beyond it)"
)
GREY = (128, 128, 128)
CHUNK = 32
"""Units whose sheets are drawn together, from the images they show read at once."""


# ----------------------------------------------------------------------------- the layers


@dataclass(frozen=True)
class Layer:
    """A layer as `fvis examples` reads it: its name (as given) and spec, its units (channels)
    and the grid of its positions ((H, W), (T,) for tokens, () for one), the units it ranks,
    and its receptive field (None without a spatial grid)."""

    name: str
    spec: str
    channels: int
    grid: tuple[int, ...]
    units: tuple[int, ...]
    field: Field | None

    @property
    def positions(self) -> int:
        return int(torch.tensor(self.grid).prod()) if self.grid else 1

    @property
    def rankings(self) -> tuple[str, ...]:
        return SPATIAL if self.positions > 1 else FLAT

    def summary(self) -> str:
        """One line: the units ranked and the receptive field."""
        ranked = f"{self.name}: {len(self.units)} of {self.channels} units"
        if self.field is None:
            return f"{ranked}, no receptive field (no spatial positions)"
        f = self.field
        size = "x".join("whole" if w else str(n) for n, w in zip(f.size, f.whole, strict=True))
        return f"{ranked}, receptive field {size} px, stride {'x'.join(map(str, f.stride))}"

    def position(self, flat: int) -> list[int]:
        """A position index as grid coordinates: [y, x], [t], or [] for a single position."""
        if len(self.grid) == 2:
            return list(divmod(flat, self.grid[1]))
        return [flat] if self.grid else []


def parse_channels(text: str | None) -> tuple[int, ...] | None:
    """'0:8,12,20:24' -> channels 0 to 7, 12, 20 to 23 (sorted, each once); None: all."""
    if text is None:
        return None
    chosen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        match = CHANNELS.fullmatch(part)
        if not match:
            shown = part if len(part) <= 40 else f"{part[:40]}..."
            raise UserError(
                f"--channels {shown or repr(part)}: expected comma-separated indices and "
                "START:STOP ranges, e.g. 0:8,12"
            )
        start = int(match.group(1))
        stop = start + 1 if match.group(2) is None else int(match.group(2))
        if stop <= start:
            raise UserError(f"--channels {part}: an empty range (STOP must exceed START)")
        if stop > MAX_UNITS:
            raise UserError(f"--channels {part}: beyond any layer (at most {MAX_UNITS} units)")
        chosen.update(range(start, stop))
    return tuple(sorted(chosen))


def layers(scan: Scan, channels: tuple[int, ...] | None) -> list[Layer]:
    """The scan's layers with their shapes (one forward of one image) and the `channels` to rank
    in each (None: all); their receptive fields are left to `measure`."""
    network, images = scan.network, scan.images
    network.to(scan.device)
    probe = torch.full((1, images.channels, *images.size), 0.5, device=scan.device)
    with torch.no_grad(), Capture(network.model, scan.layers.values(), network) as capture:
        outputs = capture.run(probe)
    found = []
    for name, spec in scan.layers.items():
        try:
            shape = tuple(select(outputs, spec).shape)
        except TypeError as exc:  # a tuple or dict output, or a selector that does not fit it
            raise UserError(f"--layers {name}: {exc}") from None
        if len(shape) not in (2, 3, 4):
            raise UserError(
                f"--layers {name}: an output of shape {list(shape)}; expected [B, C], "
                "[B, T, C] (tokens) or [B, C, H, W]"
            )
        count = shape[2] if len(shape) == 3 else shape[1]
        grid = (shape[1],) if len(shape) == 3 else tuple(shape[2:])
        units = tuple(range(count)) if channels is None else channels
        if units and units[-1] >= count:
            raise UserError(
                f"--channels {units[-1]}: layer {name} has {count} channels (0 to {count - 1})"
            )
        found.append(Layer(name, spec, count, grid, units, None))
    return found


def measure(scan: Scan, found: list[Layer]) -> list[Layer]:
    """The layers with their receptive fields, measured by gradient (`fvis.receptive`): those
    with a spatial grid [B, C, H, W]."""
    network, images = scan.network, scan.images
    network.to(scan.device)
    return [
        replace(
            layer,
            field=receptive.field(
                network.model, layer.spec, images.size, images.channels, network, scan.device
            ),
        )
        if len(layer.grid) == 2
        else layer
        for layer in found
    ]


# ----------------------------------------------------------------------------- running top-K


def merge(
    kept: dict[str, Tensor],
    values: Tensor,
    ids: Tensor,
    positions: Tensor | None,
    k: int,
    top: bool,
) -> dict[str, Tensor]:
    """The K best of what was `kept` ({values, ids[, positions]}: [U, k'] each, best first) and
    a batch's `values` [U, B] of images `ids` [B] (ascending, all above the kept ones) at
    `positions` [U, B]: best = highest if `top`, else lowest. The batch may be what another
    pass over later images kept (`ids` then [U, B], best first, each row's ties in id order).

    One stable sort of the kept entries followed by the batch's: among equal values the earlier
    entry wins, which is the lower image id, so the result is that of one stable sort of every
    image's value in id order, however the images were batched or shared among passes.
    """
    units = values.shape[0]
    device = values.device
    ids = ids.to(device)
    merged = {
        "values": torch.cat([kept["values"].to(device), values], 1),
        "ids": torch.cat(
            [kept["ids"].to(device), ids if ids.dim() == 2 else ids.expand(units, -1)], 1
        ),
    }
    if positions is not None:
        merged["positions"] = torch.cat([kept["positions"].to(device), positions], 1)
    key = merged["values"] if top else -merged["values"]
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    return {name: tensor.gather(1, order) for name, tensor in merged.items()}


def candidates(acts: Tensor) -> dict[str, tuple[Tensor, Tensor | None]]:
    """A batch's scores of each unit, from activations [B, U, P]: {ranking: (values [U, B],
    positions [U, B] or None)}."""
    if acts.shape[2] == 1:
        values = acts[:, :, 0].T
        return {"top": (values, None), "bottom": (values, None)}
    mean = acts.mean(2).T
    peak, where = acts.max(2)
    return {
        "top_mean": (mean, None),
        "bottom_mean": (mean, None),
        "top_max": (peak.T, where.T),
        "bottom_max": (peak.T, where.T),
    }


Rankings = dict[tuple[str, str], dict[str, Tensor]]
"""{(layer, ranking): {"values", "ids"[, "positions"]: [U, k]}}, best first."""


class TopK:
    """The running top-K and bottom-K images of every ranked unit of every layer: a scan's
    accumulator. Its state is [U, k] tensors per layer and ranking (values, ids, positions),
    with k up to K (fewer while fewer images were read), and the number of images read.

    A batch is merged into new tensors, which replace the old ones (and the count) in one
    assignment: a Ctrl-C during `update` leaves the state of the batches before it whole, which
    is what the scan's checkpoint saves and a resumed pass goes on from.
    """

    def __init__(self, layers: list[Layer], k: int) -> None:
        self.layers = {layer.name: layer for layer in layers}
        self.k = k
        self._select: dict[str, Tensor | None] = {}
        empty: Rankings = {}
        for layer in layers:
            everything = layer.units == tuple(range(layer.channels))
            self._select[layer.name] = None if everything else torch.tensor(layer.units)
            for ranking in layer.rankings:
                empty[layer.name, ranking] = self._empty(layer, ranking)
        self._now: tuple[Rankings, int] = (empty, 0)

    @property
    def read(self) -> int:
        """The images merged so far."""
        return self._now[1]

    def _empty(self, layer: Layer, ranking: str) -> dict[str, Tensor]:
        units = len(layer.units)
        empty = {
            "values": torch.empty(units, 0),
            "ids": torch.empty(units, 0, dtype=torch.long),
        }
        if ranking.endswith("_max"):
            empty["positions"] = torch.empty(units, 0, dtype=torch.long)
        return empty

    def update(self, batch: Batch, acts: dict[str, Tensor]) -> None:
        kept, read = self._now
        merged = dict(kept)
        for name, x in acts.items():
            chosen = self._select[name]
            if chosen is not None:
                x = x[:, chosen.to(x.device)]
            for ranking, (values, positions) in candidates(x).items():
                key = (name, ranking)
                top = ranking.startswith("top")
                merged[key] = merge(kept[key], values, batch.ids, positions, self.k, top)
        self._now = (merged, read + len(batch.ids))

    def extend(self, state: dict[str, Tensor]) -> None:
        kept, read = self._now
        merged = {}
        for (name, ranking), parts in kept.items():
            later = {part: state[f"{name}/{ranking}/{part}"] for part in parts}
            merged[name, ranking] = merge(
                parts,
                later["values"],
                later["ids"],
                later.get("positions"),
                self.k,
                ranking.startswith("top"),
            )
        self._now = (merged, read + int(state["read"]))

    def state(self) -> dict[str, Tensor]:
        kept, read = self._now
        tensors = {
            f"{name}/{ranking}/{part}": tensor
            for (name, ranking), parts in kept.items()
            for part, tensor in parts.items()
        }
        return {**tensors, "read": torch.tensor(read)}

    def load(self, state: dict[str, Tensor]) -> None:
        expected = set(self.state())
        if set(state) != expected:
            raise ValueError(f"its entries are not this pass's ({len(expected)} expected)")
        kept: Rankings = {}
        for (name, ranking), parts in self._now[0].items():
            loaded = {part: state[f"{name}/{ranking}/{part}"] for part in parts}
            shape = loaded["values"].shape
            units = len(self.layers[name].units)
            if len(shape) != 2 or shape[0] != units or shape[1] > self.k:
                raise ValueError(f"{name}/{ranking}/values is {list(shape)}")
            for part, tensor in loaded.items():
                if tensor.shape != shape or tensor.dtype != parts[part].dtype:
                    raise ValueError(
                        f"{name}/{ranking}/{part} is {tensor.dtype} {list(tensor.shape)}"
                    )
            kept[name, ranking] = loaded
        self._now = (kept, int(state["read"]))

    def ranking(self, name: str, ranking: str) -> dict[str, Tensor]:
        """What was kept of one ranking of one layer, on the CPU."""
        return {part: tensor.cpu() for part, tensor in self._now[0][name, ranking].items()}


# ----------------------------------------------------------------------------- the command


@dataclass
class Written:
    """What `run` wrote: the index and how many images the pass went through."""

    index: Path
    seen: int
    read: int
    outcome: Outcome


def run(
    scan: Scan,
    found: list[Layer],
    k: int,
    folder: Path,
    resume: bool = False,
    progress: Progress | None = None,
) -> Written:
    """Rank every unit of `found` over the scan's images, keeping the `k` best and worst, and
    write the index, the tensors and a sheet per unit in `folder` (held and claimed); the
    checkpoint is removed once they are written."""
    accumulator = TopK(found, k)
    checkpoint = folder / CHECKPOINT
    outcome = scan.run(accumulator, checkpoint, resume, progress)
    if not accumulator.read:
        first = f" (the first: {outcome.skipped[0]})" if outcome.skipped else ""
        raise UserError(f"none of the {outcome.seen} images could be read{first}")
    write(folder, scan, found, accumulator, outcome.seen)
    checkpoint.unlink(missing_ok=True)
    return Written(folder / INDEX, outcome.seen, accumulator.read, outcome)


def write(folder: Path, scan: Scan, found: list[Layer], kept: TopK, seen: int) -> None:
    """The sheets, examples.safetensors, then examples.json (last: it marks the folder done)."""
    folders = _folder_names([layer.name for layer in found])
    index: dict[str, Any] = {
        "format": FORMAT,
        "model": scan.identity.get("model"),
        "data": scan.identity.get("data"),
        "images": {"seen": seen, "read": kept.read, "skipped": seen - kept.read},
        "top": kept.k,
        "note": BOX_NOTE,
        "layers": {},
    }
    tensors: dict[str, Tensor] = {}
    units: dict[str, list[dict[str, Any]]] = {}
    for layer in found:
        rankings = {
            r: _entries(layer, kept.ranking(layer.name, r), scan.images) for r in layer.rankings
        }
        units[layer.name] = [
            {
                "unit": unit,
                "sheet": f"{folders[layer.name]}/unit_{unit:04d}.png",
                **{r: entries[u] for r, entries in rankings.items()},
            }
            for u, unit in enumerate(layer.units)
        ]
        index["layers"][layer.name] = {
            "spec": layer.spec,
            "shape": [layer.channels, *layer.grid],
            "field": layer.field.describe() if layer.field else None,
            "rankings": list(layer.rankings),
            "folder": folders[layer.name],
            "units": units[layer.name],
        }
        tensors.update(_tensors(layer, kept))
        sub = folder / folders[layer.name]
        try:
            sub.mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"{sub}: cannot create the folder ({exc.strerror})") from None
    _write_sheets(folder, scan, found, units)
    metadata = {"format": FORMAT, "top": str(kept.k), "seen": str(seen), "read": str(kept.read)}
    write_atomic(folder / TENSORS, tensors_bytes(tensors, metadata))
    write_atomic(folder / INDEX, to_json(index))


def _write_sheets(
    folder: Path, scan: Scan, found: list[Layer], units: dict[str, list[dict[str, Any]]]
) -> None:
    """A sheet per unit, drawn CHUNK units at a time from the images they show, which the
    scan's workers read (each chunk's once) while the sheets of the chunk before are drawn."""
    sheets = Sheets(scan.images.size)
    chunks = [
        (layer, units[layer.name][start : start + CHUNK])
        for layer in found
        for start in range(0, len(units[layer.name]), CHUNK)
    ]
    needed = [
        sorted({e["id"] for unit in chunk for r in layer.rankings for e in unit[r]})
        for layer, chunk in chunks
    ]
    pictures = _pictures(scan.images, needed, scan.workers)
    for (layer, chunk), shown in zip(chunks, pictures, strict=True):
        for unit in chunk:
            sheet = sheets.draw(layer, unit["unit"], unit, shown)
            write_atomic(folder / unit["sheet"], png_bytes(sheet))


def _pictures(
    images: Images, groups: list[list[int]], workers: int
) -> Iterator[dict[int, Image.Image | None]]:
    """For each group of image ids, {id: the image (RGB), or None where it cannot be read now},
    read in order by `workers` worker processes (0: this one)."""
    order = [image for group in groups for image in group]
    loader = DataLoader(
        Subset(images, order), batch_size=16, num_workers=workers, collate_fn=_items
    )
    items = (item for batch in loader for item in batch)
    for group in groups:
        yield dict(zip(group, items, strict=False))  # group first: stops before items


def _items(batch: list[Item]) -> list[Image.Image | None]:
    """A batch of read images as RGB pictures (None: unreadable, gone or broken since the pass)."""
    return [
        to_pil(image).convert("RGB") if isinstance(image, Tensor) else None for image, *_ in batch
    ]


def _entries(layer: Layer, kept: dict[str, Tensor], images: Images) -> list[list[dict[str, Any]]]:
    """Per unit, one ranking's images as JSON entries: image (its name), id, value, and for a
    max ranking the position (and the field's box there)."""
    names: dict[int, str] = {}
    rows = []
    for u in range(len(layer.units)):
        row = []
        for j, image in enumerate(kept["ids"][u].tolist()):
            if image not in names:
                names[image] = images.name(image)
            entry: dict[str, Any] = {
                "image": names[image],
                "id": image,
                "value": float(kept["values"][u, j]),
            }
            if "positions" in kept:
                at = layer.position(int(kept["positions"][u, j]))
                entry["position"] = at
                if layer.field is not None:
                    entry["box"] = list(layer.field.box(*at))
            row.append(entry)
        rows.append(row)
    return rows


def _tensors(layer: Layer, kept: TopK) -> dict[str, Tensor]:
    """One layer's rankings as tensors: LAYER/RANKING/values [U, k], ids [U, k], and for the max
    rankings positions [U, k, D] (grid coordinates) and boxes [U, k, 4] (with a field)."""
    out = {f"{layer.name}/units": torch.tensor(layer.units, dtype=torch.long)}
    for ranking in layer.rankings:
        part = kept.ranking(layer.name, ranking)
        key = f"{layer.name}/{ranking}"
        out[f"{key}/values"], out[f"{key}/ids"] = part["values"], part["ids"]
        if "positions" in part:
            flat = part["positions"]
            coords = (
                [flat // layer.grid[1], flat % layer.grid[1]] if len(layer.grid) == 2 else [flat]
            )
            out[f"{key}/positions"] = torch.stack(coords, -1)
            if layer.field is not None:
                at = torch.stack(coords, -1).view(-1, 2).tolist()
                boxes = [layer.field.box(y, x) for y, x in at]
                out[f"{key}/boxes"] = torch.tensor(boxes, dtype=torch.long).view(*flat.shape, 4)
    return {name: tensor.contiguous() for name, tensor in out.items()}


def _folder_names(names: list[str]) -> dict[str, str]:
    """A sub-folder name for each layer's sheets: its name with characters other than letters,
    digits, '.', '_' and '-' as '_', made unique (and other than the files beside them)."""
    taken = {INDEX, TENSORS, CHECKPOINT.lstrip("."), runs.LOCK.lstrip(".")}
    folders = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "layer"
        folder, n = base, 1
        while folder in taken:
            n += 1
            folder = f"{base}_{n}"
        taken.add(folder)
        folders[name] = folder
    return folders


# ----------------------------------------------------------------------------- sheets


class Sheets:
    """A unit's sheet: its rankings as rows of images, each row labelled and each image with
    its value under it; the crops row shows each top-by-max image's receptive field around the
    maximum, clipped to the image (grey beyond it) and enlarged (nearest) to the cell.

    Cells are the image's size, between 64 and 96 pixels (64-pixel images are shown as they
    are).
    """

    PAD = 4
    TEXT = 14

    def __init__(self, size: tuple[int, int]) -> None:
        self.cell = min(96, max(64, *size))
        self.font = ImageFont.load_default()

    def draw(
        self,
        layer: Layer,
        unit: int,
        rankings: dict[str, Any],
        pictures: dict[int, Image.Image | None],
    ) -> Image.Image:
        """The sheet of `unit` of `layer`, from its rankings' entries and the images they name
        (None: an empty cell)."""
        rows = list(self._rows(layer, rankings))
        pad, text, cell = self.PAD, self.TEXT, self.cell
        columns = max([len(entries) for _, entries, _ in rows] + [1])
        width = max(pad + columns * (cell + pad), 240)
        height = text + pad + len(rows) * (2 * text + cell + pad)
        sheet = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((pad, 1), f"{layer.name} unit {unit}", fill="black", font=self.font)
        y = text + pad
        for label, entries, crops in rows:
            draw.text((pad, y), label, fill="black", font=self.font)
            for i, entry in enumerate(entries):
                x = pad + i * (cell + pad)
                picture = self._cell(pictures[entry["id"]], entry, crops)
                if picture is not None:
                    sheet.paste(
                        picture,
                        (x + (cell - picture.width) // 2, y + text + (cell - picture.height) // 2),
                    )
                value = f"{entry['value']:.3g}"
                shift = max(0, (cell - int(self.font.getlength(value))) // 2)
                draw.text((x + shift, y + text + cell + 1), value, fill="black", font=self.font)
            y += 2 * text + cell + pad
        return sheet

    def _rows(
        self, layer: Layer, rankings: dict[str, Any]
    ) -> Iterator[tuple[str, list[dict[str, Any]], bool]]:
        if layer.rankings == FLAT:
            yield "top", rankings["top"], False
            yield "bottom", rankings["bottom"], False
            return
        yield "top by mean", rankings["top_mean"], False
        yield "top by max", rankings["top_max"], False
        if layer.field is not None:
            yield "crops around the max", rankings["top_max"], True
        yield "bottom by mean", rankings["bottom_mean"], False

    def _cell(
        self, image: Image.Image | None, entry: dict[str, Any], crop: bool
    ) -> Image.Image | None:
        """An entry's image (or its crop) fitted to the cell."""
        if image is None:
            return None
        if crop:
            top, left, height, width = entry["box"]
            canvas = Image.new("RGB", (width, height), GREY)
            inside = (
                max(left, 0),
                max(top, 0),
                min(left + width, image.width),
                min(top + height, image.height),
            )
            if inside[2] > inside[0] and inside[3] > inside[1]:
                canvas.paste(image.crop(inside), (inside[0] - left, inside[1] - top))
            image = canvas
        scale = self.cell / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size == image.size:
            return image
        enlarged = crop or scale > 1
        resample = Image.Resampling.NEAREST if enlarged else Image.Resampling.LANCZOS
        return image.resize(size, resample)
