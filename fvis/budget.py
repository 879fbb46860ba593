"""Memory budgets: what a render will need, estimated before anything big is allocated.

Per batch item a render holds its image parameters with their gradients and Adam's two moments
(4 P bytes, P: the item's parameters) and its parameterization's buffers (F) throughout, and
during a step the tensors autograd saves for the backward pass (S: the parameterization's
forward, the transforms, the network up to the last layer read, the objective on what it reads)
plus about as much again in gradients while the backward runs. On the device, for a batch of B:

    state = B * (4 P + F)        step = B * 2 S

S, P and F are measured on one item: the parameterization and the transforms are built at a
small size and one forward runs with autograd on, counting every storage it saves once (the
network's weights and the parameters left out; with optim.fold_batchnorm, what batch norms
save is left out too, as they will be folded). A config at most MEASURE_PIXELS large is
measured at its own size; a larger one at about MEASURE_PIXELS and at a quarter of that, and
scaled to its pixels: S by (pixels / measured) ^ e, e in [1, 2] the growth seen between the two
(1 for convolutions, up to 2 for attention over all positions), P and F along the line through
the two (a CPPN's parameters do not grow with the image, a pixel grid's do). The host keeps the
snapshots (N of I bytes per item, float32, on the CPU whatever the device), and between steps
serializes a checkpoint in memory (the snapshots and 3 P, twice: the buffer and its bytes) or
draws grid.png (G pixels, 10 bytes each):

    kept = B * N * I             write = max(2 * (kept + 3 * B * P), 10 * G)

On a CUDA device, state + step must fit in its free memory and kept + write in the host's; on
a CPU, state + kept + max(step, write) in the host's (a step and a write never overlap).
`free_memory` says what is available: CUDA's free device memory, or Linux's MemAvailable.
The estimate errs high (on the built-in model by 10 to 60% of a render's peak: not all that
autograd saves is alive at once), never low by much.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvis.config import MacoParam, Param, Transform
from fvis.hooks import Capture, split_layer
from fvis.io import MAX_IMAGE_PIXELS
from fvis.models import Network
from fvis.params import build_param
from fvis.transforms import build_transforms

# Images up to this many pixels are measured at their own size; larger ones are scaled down
# to it (and to a quarter of it) and the measurements scaled back up.
MEASURE_PIXELS = 320 * 320
# What a step holds at its peak, in multiples of the tensors autograd saves: the saved tensors
# and their gradients, which the backward pass creates before it frees the saved ones.
GRAD_COPIES = 2
# The parameters, their gradients and Adam's two moments.
ADAM_COPIES = 4
# Copies of a snapshot or parameter in a checkpoint written in memory: torch.save's buffer and
# the bytes taken from it.
CHECKPOINT_COPIES = 2
# grid.png in memory: Pillow's 4 bytes per RGB pixel, its PNG encoding (at most about 3 bytes
# per pixel) and the copy of that encoding handed to the writer.
GRID_BYTES_PER_PIXEL = 10
# The largest image fvis reads (fvis.io's limit, Pillow's default), so it writes none larger.
# It admits the grid of a render at the largest param.size (4096) with batch 1 and 4 snapshots
# (67.6 megapixels).
MAX_GRID_PIXELS = MAX_IMAGE_PIXELS
# The batch norms `fusion.fold_batchnorms` folds into the convolution before them.
FOLDED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# writers.grid's layout: row labels on the left, column labels on top, 2 px between cells.
GRID_LABEL_WIDTH = 40
GRID_LABEL_HEIGHT = 16
GRID_PAD = 2


@dataclass(frozen=True)
class ItemCost:
    """Bytes per batch item: saved for backward in one step, parameters, buffers."""

    saved: int
    params: int
    buffers: int


@dataclass(frozen=True)
class Need:
    """Bytes a render needs beyond what is allocated already (the network), by when it holds
    them: `state` (the parameters, their gradients, Adam's moments, buffers: on the device
    throughout), `step` (on the device while a step runs), `kept` (the snapshots, in host
    memory throughout) and `write` (in host memory while a checkpoint or grid.png is made,
    between steps)."""

    state: int
    step: int
    kept: int
    write: int


def free_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device (the driver's free memory plus what PyTorch's caching
    allocator holds unused, such as the measurement's), or available to processes on a Linux
    host (MemAvailable); None where neither can be read (then nothing is refused)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + cached
    return host_memory()


def host_memory() -> int | None:
    """Bytes available to processes on a Linux host (/proc/meminfo's MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure(
    network: Network,
    layers: Iterable[str],
    spec: Param,
    transforms: Sequence[Transform],
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    transparency: bool = False,
    fold: bool = False,
) -> ItemCost | None:
    """One item's cost at `size`, measured at most MEASURE_PIXELS large (module docstring).

    A model that cannot take the smaller images (a fixed input size) is measured at `size`;
    None if the model fails there too (the build's dry forward then says why).
    """
    measure_at = partial(
        _measure_at,
        network,
        list(layers),
        spec,
        transforms,
        channels=channels,
        device=device,
        dtype=dtype,
        transparency=transparency,
        fold=fold,
    )

    def at(hw: tuple[int, int]) -> ItemCost | None:
        try:
            with torch.random.fork_rng(devices=[]):  # the render's random state stays as it was
                return measure_at(size=hw)
        except RuntimeError:
            return None

    pixels = size[0] * size[1]
    if pixels <= MEASURE_PIXELS:
        return at(size)
    big, small = _scaled(size, MEASURE_PIXELS), _scaled(size, MEASURE_PIXELS // 4)
    hi, lo = at(big), at(small)
    if hi is None or lo is None:
        return at(size)
    p1, p0 = big[0] * big[1], small[0] * small[1]
    growth = 1.0
    if p1 > p0 and lo.saved > 0 and hi.saved > lo.saved:
        growth = min(2.0, max(1.0, math.log(hi.saved / lo.saved) / math.log(p1 / p0)))

    def line(y1: int, y0: int) -> int:
        slope = max(0.0, (y1 - y0) / (p1 - p0)) if p1 > p0 else y1 / p1
        return math.ceil(y1 + slope * (pixels - p1))

    return ItemCost(
        saved=math.ceil(hi.saved * (pixels / p1) ** growth),
        params=line(hi.params, lo.params),
        buffers=line(hi.buffers, lo.buffers),
    )


def _scaled(size: tuple[int, int], pixels: int) -> tuple[int, int]:
    """`size` scaled to about `pixels`, aspect kept, each side at least 8."""
    k = math.sqrt(pixels / (size[0] * size[1]))
    return max(8, round(size[0] * k)), max(8, round(size[1] * k))


def _measure_at(
    network: Network,
    layers: list[str],
    spec: Param,
    transforms: Sequence[Transform],
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    transparency: bool,
    fold: bool,
) -> ItemCost:
    """One item at `size`: a random init (init files and spectra left out: the memory is the
    same), its own random stream, one forward with autograd on. With `fold`, what batch norms
    (but the hooked ones) save is not counted: `fusion.fold_batchnorms` will fold them into
    the convolutions before them."""
    fields = {"init": None, **({"spectrum": None} if isinstance(spec, MacoParam) else {})}
    stream = torch.Generator().manual_seed(0)
    param = build_param(
        spec.model_copy(update=fields),
        size,
        channels,
        network.prep.color_correlation,
        [stream],
        transparency=transparency,
    ).to(device, dtype)
    pipeline = build_transforms(transforms, size, alpha=spec.alpha)
    fixed = [*network.parameters(), *network.buffers(), *param.parameters(), *param.buffers()]
    skip = {t.untyped_storage().data_ptr() for t in fixed}
    saved: dict[int, int] = {}
    folding: list[nn.Module] = []  # the batch norm running now, if it will be folded

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip and not folding:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    hooked = {split_layer(layer)[0] for layer in layers}
    norms = [
        module
        for path, module in network.model.named_modules()
        if fold and isinstance(module, FOLDED) and path not in hooked
    ]
    handles = [
        handle
        for norm in norms
        for handle in (
            norm.register_forward_pre_hook(lambda m, args: folding.append(m)),
            norm.register_forward_hook(lambda m, args, out: folding.clear()),
        )
    ]
    try:
        with (
            Capture(network.model, layers, network) as capture,
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            image = param()
            acts = capture.run(pipeline(image, [stream]))
            # The objective's own saved tensors: at most about two copies of what it reads.
            read = 2 * sum(_nbytes(value) for value in acts.values()) + 2 * _nbytes(image)
            total = sum(saved.values()) + read
    finally:
        for handle in handles:
            handle.remove()
    return ItemCost(
        saved=total,
        params=sum(_nbytes(p) for p in param.parameters()),
        buffers=sum(_nbytes(b) for b in param.buffers()),
    )


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in a layer's output (a tensor, or tuples, lists, dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def need(
    cost: ItemCost,
    batch: int,
    image_bytes: int,
    snapshots: int,
    checkpoints: bool = True,
    grid_pixels: int = 0,
) -> Need:
    """What `batch` items need (module docstring): `image_bytes` per item and snapshot, kept
    `snapshots` times; `checkpoints`: a checkpoint is written in memory at each snapshot."""
    kept = batch * snapshots * image_bytes
    checkpoint = CHECKPOINT_COPIES * (kept + 3 * batch * cost.params) if checkpoints else 0
    return Need(
        state=batch * (ADAM_COPIES * cost.params + cost.buffers),
        step=batch * GRAD_COPIES * cost.saved,
        kept=kept,
        write=max(checkpoint, GRID_BYTES_PER_PIXEL * grid_pixels),
    )


def pools(need: Need, device: torch.device) -> list[tuple[str, int, int | None]]:
    """(where, bytes needed, bytes available) per memory pool: the device's and the host's, or
    one on a CPU, where a step and a write (which never overlap) share the room; available is
    None where it cannot be read."""
    if device.type == "cuda":
        return [
            (f"on {device}", need.state + need.step, free_memory(device)),
            ("of host memory", need.kept + need.write, host_memory()),
        ]
    total = need.state + need.kept + max(need.step, need.write)
    return [("of memory", total, free_memory(device))]


def shortfall(need: Need, device: torch.device) -> str | None:
    """'about 310 GB of memory; 20 GB are available' for the first pool `need` does not fit
    in, or None if it fits (or what is available cannot be read)."""
    for where, needed, available in pools(need, device):
        if available is not None and needed > available:
            return f"about {human(needed)} {where}; {human(available)} are available"
    return None


def largest_batch(per_item: Need, device: torch.device, share: float, cap: int) -> int:
    """The most items (1 to `cap`) whose need, `per_item` times the batch, fits in `share` of
    what each pool has available."""
    batch = cap
    for _, needed, available in pools(per_item, device):
        if available is not None:
            batch = min(batch, int(available * share) // max(needed, 1))
    return max(1, batch)


def grid_size(size: tuple[int, int], batch: int, columns: int, cell: int) -> tuple[int, int]:
    """grid.png's (width, height): `writers.grid` of `batch` rows and `columns` snapshots,
    each image upscaled by the whole factor that makes it at least `cell` pixels."""
    h, w = size
    k = max(1, -(-cell // max(h, w)))
    return (
        GRID_LABEL_WIDTH + columns * (w * k + GRID_PAD),
        GRID_LABEL_HEIGHT + batch * (h * k + GRID_PAD),
    )


def human(n: float) -> str:
    """Bytes in words: '44 TB', '310 GB', '2.5 GB', '640 MB' (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9)):
        if n >= 10 * size:
            return f"{n / size:.0f} {unit}"
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{max(1, round(n / 1e6))} MB"
