"""One pass of a network over a data source: batches in, named layers' activations out to an
accumulator (running top-K, moments, pooled features), with progress, a checkpoint, and
resumption where an interrupted pass stopped.

An accumulator sees every batch once, in order, and keeps a bounded state whatever the size of
the data; that state, with the number of images seen, is the checkpoint (a safetensors file
written atomically every `every` seconds and when the pass is interrupted). A resumed pass loads
it and reads on from the next batch, so an interrupted and resumed pass sees the same batches as
an uninterrupted one, and ends in the same state. The checkpoint records what made it (the
config, the data, the layers, the options: `identity`); it is refused for any other pass.
"""

from __future__ import annotations

import copy
import json
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from fvis.config import ModelSpec
from fvis.data import Batch, Images, batches
from fvis.errors import Interrupted, SpecError, UserError
from fvis.hooks import Capture, resolve_layer, select
from fvis.io import tensors_bytes, write_atomic
from fvis.models import Network

FORMAT = "fvis-scan-1"
Progress = Callable[[int, int], None]  # (images done, of which read by this run) per batch


class Accumulator(Protocol):
    """What a pass feeds: `update` per batch with the layers' activations as [B, C, P] (units by
    positions, see `units`); `state`/`load` its tensors, for the checkpoint; `extend` takes in
    the state of another accumulator, fed the images that follow these (a shard of the pass
    read by a cluster's worker), as if they had been fed here."""

    def update(self, batch: Batch, acts: dict[str, Tensor]) -> None: ...

    def state(self) -> dict[str, Tensor]: ...

    def load(self, state: dict[str, Tensor]) -> None: ...

    def extend(self, state: dict[str, Tensor]) -> None: ...


@dataclass(frozen=True)
class Recipe:
    """How a cluster's worker builds a pass's network again: the model spec, the folder its
    relative paths start from, and the config's device (resolved where the worker runs)."""

    spec: ModelSpec
    base: Path
    device: str


@dataclass(frozen=True)
class Read:
    """What a shard of a pass gave: its accumulator's state and what it read."""

    state: dict[str, Tensor]
    outcome: Outcome


class Shards(Protocol):
    """What reads a pass elsewhere, shard by shard (`fvis.cluster.RayBackend`): `slots` shards
    at once; `scan` feeds each shard (a range of image indices) to a copy of the blank
    `accumulator` and yields (the shard's index, what it read) as each completes."""

    def slots(self) -> int: ...

    def scan(
        self, scan: Scan, accumulator: Accumulator, shards: list[range]
    ) -> Generator[tuple[int, Read]]: ...


def units(x: Tensor) -> Tensor:
    """A layer's output as [B, C, P]: its C units at P positions. [B, C, H, W] -> P = H * W;
    [B, C] (a linear layer, logits) -> P = 1; [B, T, C] (tokens) -> the C channels at T tokens."""
    if x.dim() == 4:
        return x.flatten(2)
    if x.dim() == 2:
        return x[:, :, None]
    if x.dim() == 3:
        return x.transpose(1, 2)
    raise ValueError(
        f"an output of shape {list(x.shape)}: expected [B, C], [B, T, C] or [B, C, H, W]"
    )


def layer_specs(
    network: Network, names: list[str], aliases: dict[str, str], flag: str
) -> dict[str, str]:
    """{name as given: layer spec} for layers named on the command line (`flag` in errors)."""
    specs = {}
    for name in names:
        try:
            specs[name] = resolve_layer(name, aliases, network.model, (flag,))
        except SpecError as exc:
            raise UserError(f"{flag} {name}: {exc.message}") from None
    return specs


SHARDS_PER_SLOT = 4
"""A pass on a cluster is cut into about this many shards per task it runs at once: enough to
even out workers of unequal speed, few enough that a shard's start (its network's copy, its
first batches) stays small beside its reading."""


@dataclass
class Scan:
    """A pass of `network` over `images`, reading `layers` ({name: spec}) at `batch` images a
    step on `device`; `identity` is what a checkpoint must match to be resumed. With `backend`
    the images are read in shards elsewhere (a Ray cluster), whose workers build the network
    from `recipe`."""

    network: Network
    layers: dict[str, str]
    images: Images
    batch: int = 64
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    identity: dict[str, Any] = field(default_factory=dict)
    recipe: Recipe | None = None
    backend: Shards | None = None

    def shapes(self) -> dict[str, tuple[int, int]]:
        """{name: (units, positions)} of each layer, from one forward of one image."""
        self.network.to(self.device)
        probe = torch.full((1, self.images.channels, *self.images.size), 0.5, device=self.device)
        return {name: tuple(acts.shape[1:]) for name, acts in self.forward(probe).items()}  # type: ignore[misc]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """The layers' activations [B, C, P] of a batch (float32)."""
        with (
            torch.inference_mode(),
            Capture(self.network.model, self.layers.values(), self.network) as capture,
        ):
            outputs = capture.run(images)
            return {
                name: units(select(outputs, spec)).float() for name, spec in self.layers.items()
            }

    def run(
        self,
        accumulator: Accumulator,
        checkpoint: Path | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        every: float = 30.0,
    ) -> Outcome:
        """Feed every batch to `accumulator`; with `checkpoint`, save its state every `every`
        seconds, at the end of the pass and on Ctrl-C (then raise Interrupted), and with
        `resume` start from it.

        Ctrl-C stops the pass between two batches, so the state saved is never that of a batch
        half taken in; a second Ctrl-C stops at once, keeping the last checkpoint saved.
        """
        # The shards' accumulators start blank: copied before a checkpoint is loaded.
        blank = accumulator if self.backend is None else copy.deepcopy(accumulator)
        start = self._resume(accumulator, checkpoint) if resume and checkpoint else 0
        outcome = Outcome(seen=start)
        saved = time.monotonic()
        with _BetweenBatches() as stop:
            try:
                steps = (
                    self._local(accumulator, start, outcome)
                    if self.backend is None
                    else self._sharded(self.backend, accumulator, blank, start, outcome)
                )
                for done in steps:
                    if progress:
                        progress(done, done - start)
                    if stop.requested:
                        raise KeyboardInterrupt
                    if checkpoint and time.monotonic() - saved > every:
                        self._save(accumulator, checkpoint, outcome.seen)
                        saved = time.monotonic()
            except KeyboardInterrupt:
                raise self._interrupted(accumulator, checkpoint, outcome.seen, stop.hard) from None
        if checkpoint:  # what follows (writing the results) may be interrupted in turn
            self._save(accumulator, checkpoint, outcome.seen)
        return outcome

    def _local(self, accumulator: Accumulator, start: int, outcome: Outcome) -> Generator[int]:
        """Every batch from image `start` fed here, in order; after each, the images done."""
        for batch in self._fed(accumulator, range(start, len(self.images))):
            outcome.count(batch)
            yield outcome.seen

    def _sharded(
        self,
        backend: Shards,
        accumulator: Accumulator,
        blank: Accumulator,
        start: int,
        outcome: Outcome,
    ) -> Generator[int]:
        """The images from `start` read in shards by `backend`; each shard's state taken in
        once those before it are (so `outcome.seen`, what a checkpoint keeps, counts only
        images all read); after each shard, the images done anywhere."""
        shards = self.shards(start, backend.slots())
        arrived: dict[int, Read] = {}
        done, merged = start, 0
        with closing(backend.scan(self, blank, shards)) as results:  # closed: tasks cancelled
            for index, read in results:
                arrived[index] = read
                done += len(shards[index])
                while merged in arrived:
                    taken = arrived.pop(merged)
                    accumulator.extend(taken.state)
                    outcome.seen += taken.outcome.seen
                    outcome.skipped += taken.outcome.skipped
                    merged += 1
                yield done

    def shards(self, start: int, slots: int) -> list[range]:
        """The images from `start` cut into about SHARDS_PER_SLOT shards per slot, each a whole
        number of batches: the batches a local pass reads, so the same activations."""
        total = len(self.images)
        count = -(-(total - start) // self.batch)
        size = self.batch * max(1, -(-count // (SHARDS_PER_SLOT * max(slots, 1))))
        return [range(first, min(first + size, total)) for first in range(start, total, size)]

    def read(self, accumulator: Accumulator, shard: range) -> Read:
        """The images of `shard` fed to `accumulator` here, in order (a cluster's task)."""
        outcome = Outcome()
        for batch in self._fed(accumulator, shard):
            outcome.count(batch)
        return Read(accumulator.state(), outcome)

    def _fed(self, accumulator: Accumulator, images: range) -> Iterator[Batch]:
        """Each batch of `images` (a range of indices), once fed to `accumulator`."""
        self.network.to(self.device)
        for batch in batches(self.images, self.batch, self.workers, images.start, images.stop):
            if len(batch.ids):
                accumulator.update(batch, self.forward(batch.images.to(self.device)))
            yield batch

    def _interrupted(
        self, accumulator: Accumulator, checkpoint: Path | None, seen: int, hard: bool
    ) -> Interrupted:
        """Save the state of a pass stopped between batches; the error that says so."""
        done = f"interrupted after {seen} of {len(self.images)} images"
        if checkpoint is None:
            return Interrupted(done)
        if hard:
            return Interrupted(
                f"{done} (at once: the last checkpoint saved, if any, is in {checkpoint}; "
                "--resume goes on from it)"
            )
        self._save(accumulator, checkpoint, seen)
        return Interrupted(
            f"{done}; kept in {checkpoint}: run the same command with --resume to go on"
        )

    def _save(self, accumulator: Accumulator, path: Path, seen: int) -> None:
        meta = {
            "format": FORMAT,
            "seen": str(seen),
            "identity": json.dumps(self.identity, sort_keys=True),
        }
        tensors = {name: t.contiguous().cpu() for name, t in accumulator.state().items()}
        write_atomic(path, tensors_bytes(tensors, meta))

    def _resume(self, accumulator: Accumulator, path: Path) -> int:
        """Load a checkpoint into `accumulator`; the number of images it had seen."""
        if not path.is_file():
            raise UserError(f"{path}: no checkpoint to resume from (run without --resume)")
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable checkpoint ({exc})") from None
        if meta.get("format") != FORMAT or not meta.get("seen", "").isdigit():
            raise UserError(f"{path}: not an fvis scan checkpoint")
        if json.loads(meta.get("identity", "null")) != json.loads(
            json.dumps(self.identity, sort_keys=True)
        ):
            raise UserError(
                f"{path}: made by a pass with other settings (config, data, layers or options); "
                "rerun without --resume to start again"
            )
        try:
            accumulator.load(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"{path}: its state does not fit this pass ({exc})") from None
        return min(int(meta["seen"]), len(self.images))


class _BetweenBatches:
    """Ctrl-C (SIGINT) while a pass runs: the first asks it to stop after the batch at hand
    (`requested`), the second stops it at once (`hard`: a KeyboardInterrupt where it stands).
    Outside the main thread, where Python cannot take signals, SIGINT is left as it is."""

    def __init__(self) -> None:
        self.requested = False
        self.hard = False
        self._previous: Any = None

    def __enter__(self) -> _BetweenBatches:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            self.hard = True
            raise KeyboardInterrupt
        self.requested = True


@dataclass
class Outcome:
    """What a pass read: the images it went through (resumed ones included) and why any could
    not be read."""

    seen: int = 0
    skipped: tuple[str, ...] = ()

    def count(self, batch: Batch) -> None:
        """Count a batch read: its images and those it could not read."""
        self.seen += len(batch.ids) + len(batch.skipped)
        self.skipped += batch.skipped
