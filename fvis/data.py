"""Images from a data source (a zoo dataset, a folder, an ImageFolder root), fitted to a model's
input and served in batches by a DataLoader: what `fvis examples`, `stats` and `probe` read.

Every image is fitted the same way, whatever its source: its shorter side resized to the
model's input (bilinear, antialiased), the centre cropped, values in [0, 1] (the network applies
its own normalization). An image that cannot be read is dropped from its batch and reported,
never fatal: one broken file in a folder of thousands should not end a pass over it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from fvis import zoo
from fvis.config.data import DataSpec, FolderData, ImageFolderData, ZooData
from fvis.errors import SpecError, UserError
from fvis.io import image_files, read_image, resolve
from fvis.zoo import data as zoo_data

UNLABELLED = -1
Item = tuple[Tensor | str, int, int]  # (the image, or why it could not be read), label, id


@dataclass(frozen=True)
class Batch:
    """Images [B, C, H, W] in [0, 1], their labels [B] (UNLABELLED: none) and ids [B] (their
    indices in the source); `skipped` says why images of this batch could not be read."""

    images: Tensor
    labels: Tensor
    ids: Tensor
    skipped: tuple[str, ...] = ()


class Images(Dataset[Item]):
    """A data source as a map-style dataset of fitted images. `classes` names the labels."""

    classes: tuple[str, ...]

    def __init__(self, size: tuple[int, int], channels: int) -> None:
        if channels not in (1, 3):
            raise SpecError(("data",), f"images have 1 or 3 channels; the model takes {channels}")
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """How outputs name image `index` (a path, or the zoo dataset and the index)."""
        raise NotImplementedError

    def label(self, index: int) -> int:
        """The class of image `index`, or UNLABELLED."""
        raise NotImplementedError

    def read(self, index: int) -> Tensor:
        """Image `index` fitted to the model's input; UserError if it cannot be read."""
        raise NotImplementedError

    def rooted(self, folder: Path) -> Images:
        """These images as read from `folder` (a cluster's worker runs elsewhere than the
        command that named them): relative paths taken from `folder`."""
        return self

    def __getitem__(self, index: int) -> Item:
        try:
            image: Tensor | str = self.read(index)
        except UserError as exc:
            image = str(exc)
        return image, self.label(index), index


class ZooImages(Images):
    """`count` images of a zoo model's dataset from `seed`: image i is `zoo.data.image(seed, i)`."""

    def __init__(self, spec: ZooData, size: tuple[int, int], channels: int) -> None:
        super().__init__(size, channels)
        try:
            zoo.get(spec.name)
        except ValueError as exc:
            raise SpecError(("data", "name"), str(exc)) from None
        self.spec = spec
        self.classes = zoo_data.CLASSES

    def __len__(self) -> int:
        return self.spec.count

    def name(self, index: int) -> str:
        return f"zoo:{self.spec.name}:{self.spec.seed}#{index}"

    def label(self, index: int) -> int:
        return zoo_data.label(self.spec.seed, index)

    def read(self, index: int) -> Tensor:
        image = zoo_data.image(self.spec.seed, index)
        return fit(image.mean(0, keepdim=True) if self.channels == 1 else image, self.size)


class FileImages(Images):
    """Image files and their labels (an index into `classes`, or UNLABELLED)."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        classes: Sequence[str],
        root: Path,
        size: tuple[int, int],
        channels: int,
    ) -> None:
        super().__init__(size, channels)
        self.files = list(files)
        self.labels = list(labels)
        self.classes = tuple(classes)
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index])

    def label(self, index: int) -> int:
        return self.labels[index]

    def rooted(self, folder: Path) -> FileImages:
        files = [folder / file for file in self.files]  # an absolute file stays as it is
        return FileImages(
            files, self.labels, self.classes, folder / self.root, self.size, self.channels
        )

    def read(self, index: int) -> Tensor:
        return read_image(
            self.files[index], "L" if self.channels == 1 else "RGB", self.size, fit="crop"
        )


def fit(image: Tensor, size: tuple[int, int]) -> Tensor:
    """An image [C, h, w] with its shorter side resized to cover `size` (bilinear, antialiased)
    and its centre cropped to `size`; returned as is when it has that size already."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    k = max(size[0] / h, size[1] / w)
    scaled = (max(size[0], round(h * k)), max(size[1], round(w * k)))
    image = F.interpolate(image[None], scaled, mode="bilinear", antialias=True)[0].clamp(0, 1)
    top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return image[:, top : top + size[0], left : left + size[1]]


def open_source(spec: DataSpec, base: Path, size: tuple[int, int], channels: int) -> Images:
    """The images a data spec names, fitted to `size` and `channels`; relative paths are from
    `base` (the config's folder). Errors are SpecErrors at `data.*`."""
    if isinstance(spec, ZooData):
        return ZooImages(spec, size, channels)
    root = _folder(resolve(base, spec.path))
    if isinstance(spec, ImageFolderData):
        return _image_folder(root, size, channels)
    return _files(spec, root, size, channels)


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise SpecError(
            ("data", "path"), f"{path}: {'not a' if path.exists() else 'no such'} folder"
        )
    return path


def _files(spec: FolderData, root: Path, size: tuple[int, int], channels: int) -> FileImages:
    """A folder's images; an image's class is the sub-folder of `root` it lies in, if any."""
    try:
        files = image_files(root, spec.pattern)
    except (ValueError, NotImplementedError) as exc:  # a pattern pathlib refuses
        raise SpecError(("data", "pattern"), f"{spec.pattern!r}: {exc}") from None
    if not files:
        raise SpecError(("data",), f"{root}: no images match {spec.pattern!r}")
    folders = [
        f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files
    ]
    classes = sorted({c for c in folders if c is not None})
    index = {c: i for i, c in enumerate(classes)}
    labels = [UNLABELLED if c is None else index[c] for c in folders]
    return FileImages(files, labels, classes, root, size, channels)


def _image_folder(root: Path, size: tuple[int, int], channels: int) -> FileImages:
    """torchvision's ImageFolder layout: every sub-folder (but hidden ones) a class, in sorted
    order, holding its images at any depth."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SpecError(
            ("data", "path"), f"{root}: no class folders (an ImageFolder root holds one per class)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = image_files(root / name)
        files += found
        labels += [label] * len(found)
    if not files:
        raise SpecError(("data", "path"), f"{root}: no images in its class folders")
    return FileImages(files, labels, classes, root, size, channels)


def batches(
    images: Images, batch: int, workers: int = 0, start: int = 0, stop: int | None = None
) -> Iterator[Batch]:
    """Images `start`, `start` + 1, ... up to `stop` (None: the last) in order, `batch` at a
    time, read by `workers` worker processes (0: in this one). Unreadable images are left out
    of their batch (see `skipped`)."""
    subset = Subset(images, range(start, len(images) if stop is None else stop))
    loader = DataLoader(
        subset,
        batch_size=batch,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
    )
    yield from loader


def _worker_init(worker: int) -> None:
    """Workers read and resize single-threaded (they run beside the network's own threads) and
    ignore Ctrl-C: the main process decides when a pass stops, between two batches."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _collate(items: list[Item]) -> Batch:
    good = [(image, label, i) for image, label, i in items if isinstance(image, Tensor)]
    skipped = tuple(image for image, _, _ in items if isinstance(image, str))
    if not good:
        return Batch(
            torch.empty(0),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long),
            skipped,
        )
    images, labels, ids = zip(*good, strict=True)
    return Batch(torch.stack(images), torch.tensor(labels), torch.tensor(ids), skipped)
