"""The images to explain: files, folders, earlier fvis runs and generated zoo classes, as one batch.

Every image becomes [C, H, W] in [0, 1] at the run's size: images of another size are resized
(bilinear, antialiased) either by their shorter side and then centre-cropped, or stretched.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fvis import zoo
from fvis.config import ModelSpec, ZooModelSpec
from fvis.config.attribution import (
    FileInput,
    FolderInput,
    InputSource,
    RunInput,
    ZooClassInput,
)
from fvis.errors import SpecError, UserError, YamlPath
from fvis.io import read_image, resolve
from fvis.zoo.data import generate_class

RUN_IMAGE = re.compile(r"^image_(\d+)\.png$")


@dataclass
class Images:
    """A batch of images with a display name each and, where known, the class they show."""

    tensor: torch.Tensor
    names: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)


@dataclass(frozen=True)
class Loader:
    """What loading needs besides the sources: the config's folder, size, channels, model."""

    base: Path
    size: tuple[int, int]
    channels: int
    fit: str
    model: ModelSpec

    def load(self, sources: Sequence[InputSource], loc: YamlPath) -> Images:
        """Every source in order, as one batch."""
        parts = [self._source(source, (*loc, i)) for i, source in enumerate(sources)]
        return Images(
            torch.cat([p.tensor for p in parts]),
            [n for p in parts for n in p.names],
            [label for p in parts for label in p.labels],
        )

    def image(self, path: Path, loc: YamlPath) -> torch.Tensor:
        """One image file named in the config (relative to its folder) as [1, C, H, W] in
        [0, 1], fitted to the run's size."""
        return self._read(resolve(self.base, path), loc)

    def _read(self, full: Path, loc: YamlPath) -> torch.Tensor:
        """An image file at a path already resolved (not joined to the config's folder again)."""
        if not looked_up(full, Path.is_file, loc):
            raise SpecError(loc, f"no such file: {full}")
        return fit_size(read_file(full, self.channels, loc), self.size, self.fit)

    def _source(self, source: InputSource, loc: YamlPath) -> Images:
        if isinstance(source, FileInput):
            return Images(self.image(source.path, (*loc, "path")), [source.path.stem], [None])
        if isinstance(source, ZooClassInput):
            return self._zoo_class(source, loc)
        files = self._files(source, loc)
        tensor = torch.cat([self._read(path, (*loc, "path")) for path in files])
        prefix = source.path.name if isinstance(source, RunInput) else ""
        names = [f"{prefix}/{p.stem}" if prefix else p.stem for p in files]
        return Images(tensor, names, [None] * len(files))

    def _files(self, source: FolderInput | RunInput, loc: YamlPath) -> list[Path]:
        """The image files of a folder or run source, as paths resolved against the config's
        folder."""
        folder = resolve(self.base, source.path)
        if not looked_up(folder, Path.is_dir, (*loc, "path")):
            raise SpecError((*loc, "path"), f"no such folder: {folder}")
        if isinstance(source, RunInput):
            indexed = {_run_index(p.name): p for p in folder.iterdir()}
            files = [indexed[i] for i in sorted(indexed) if i >= 0]
            if not files:
                raise SpecError(
                    (*loc, "path"), f"{folder}: not an fvis run folder (no image_<i>.png files)"
                )
            return files
        try:
            files = sorted(p for p in folder.glob(source.pattern) if p.is_file())
        except (NotImplementedError, ValueError) as exc:  # an absolute or malformed pattern
            raise SpecError(
                (*loc, "pattern"), f"{source.pattern!r}: not a pattern ({exc})"
            ) from None
        if not files:
            raise SpecError((*loc, "pattern"), f"no file in {folder} matches {source.pattern!r}")
        return files[: source.limit]

    def _zoo_class(self, source: ZooClassInput, loc: YamlPath) -> Images:
        if not isinstance(self.model, ZooModelSpec):
            raise SpecError(
                (*loc, "kind"), "zoo_class images need the built-in model (model: {source: zoo})"
            )
        classes = list(zoo.get(self.model.name).classes)
        index = class_index(source.label, classes, (*loc, "class"))
        generator = torch.Generator().manual_seed(source.seed)
        images = generate_class(index, source.count, generator)
        tensor = fit_size(images, self.size, self.fit)
        names = [f"{classes[index]}#{i}" for i in range(source.count)]
        return Images(tensor, names, [index] * source.count)


def class_index(label: int | str, classes: Sequence[str] | None, loc: YamlPath) -> int:
    """A class given by index or name as an index; names need known classes (the zoo's)."""
    if isinstance(label, int):
        if classes is not None and label >= len(classes):
            raise SpecError(loc, f"class {label} is out of range: the model has {len(classes)}")
        return label
    if classes is None:
        raise SpecError(loc, f"class {label!r}: names need the built-in model; give an index")
    if label in classes:
        return list(classes).index(label)
    close = difflib.get_close_matches(label, classes, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    raise SpecError(loc, f"unknown class {label!r}; {hint}(classes: {', '.join(classes)})")


def _run_index(name: str) -> int:
    """i for a file named image_<i>.png, -1 for any other file."""
    match = RUN_IMAGE.match(name)
    return int(match[1]) if match else -1


def looked_up(path: Path, test: Callable[[Path], bool], loc: YamlPath) -> bool:
    """`test(path)` (is_file, is_dir), with a path the system cannot look up (too long, ...)
    a SpecError at `loc` rather than an OSError."""
    try:
        return test(path)
    except OSError as exc:
        raise SpecError(loc, f"{path}: cannot look it up ({exc.strerror})") from None


def read_file(path: Path, channels: int, loc: YamlPath) -> torch.Tensor:
    """An image file as [1, C, h, w] in [0, 1] at its own size: grey (C = 1) or RGB (C = 3);
    errors located at `loc`."""
    if channels not in (1, 3):
        raise SpecError(loc, f"image files need a 1- or 3-channel model; it takes {channels}")
    try:
        return read_image(path, "L" if channels == 1 else "RGB")[None]
    except UserError as exc:
        raise SpecError(loc, str(exc)) from None


def fit_size(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[N, C, h, w] resized to `size`: shorter side then centre crop ('crop'), or 'stretch'."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    if mode == "stretch":
        return _resize(images, size)
    scale = max(size[0] / h, size[1] / w)
    scaled = _resize(images, (max(size[0], round(h * scale)), max(size[1], round(w * scale))))
    top = (scaled.shape[-2] - size[0]) // 2
    left = (scaled.shape[-1] - size[1]) // 2
    return scaled[..., top : top + size[0], left : left + size[1]].contiguous()


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp(0, 1)
