"""The `data:` node: a source of images to run a network over (`fvis examples`, `fvis stats`,
`fvis probe train`), in YAML or on the command line as `--data` in its short form."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from fvis.config.base import FilePath, Node, Shorthand, Tagged

GLOB_CHARS = frozenset("*?[")
MAX_ZOO_IMAGES = 10_000_000  # fvis.zoo.data.MAX_IMAGES (the schema is torch-free)


class ZooData(Node):
    """Images of a zoo model's own generated dataset, labelled: `count` images from `seed`.

    Image i is a pure function of (seed, i), so any image can be read alone, in any order.
    """

    source: Literal["zoo"]
    name: str = Field("shapes", description="Zoo model whose dataset to generate.")
    count: int = Field(2000, ge=1, le=MAX_ZOO_IMAGES, description="Number of images.")
    seed: int = Field(
        1, ge=0, le=2**31 - 1, description="Seed (the shipped weights were trained on seed 0)."
    )


class FolderData(Node):
    """Image files under a folder, searched recursively (or matched by `pattern`); an image's
    class is the name of the sub-folder of `path` it lies in, where it lies in one."""

    source: Literal["folder"]
    path: FilePath = Field(description="The folder; relative paths are from the config's folder.")
    pattern: str = Field(
        "**/*",
        min_length=1,
        description="Glob pattern under the folder; files without an image suffix are skipped.",
    )


class ImageFolderData(Node):
    """A torchvision `ImageFolder` root: one sub-folder per class, classes numbered in sorted
    order; files directly in the root are not part of it."""

    source: Literal["imagefolder"]
    path: FilePath = Field(description="The root; relative paths are from the config's folder.")


def parse_short(value: Any) -> Any:
    """The short form of a data source as its full form: `zoo:NAME[:COUNT[:SEED]]`,
    `imagefolder:PATH`, `folder:PATH`, or a folder path (with a glob pattern from its first
    component holding `*`, `?` or `[`: `photos/**/*.jpg`)."""
    if not isinstance(value, str):
        return value
    if not value:
        raise ValueError("an empty data source: expected zoo:NAME[:COUNT[:SEED]] or a folder")
    kind, colon, rest = value.partition(":")
    if colon and kind == "zoo":
        return _zoo(value, rest)
    if colon and kind in ("folder", "imagefolder"):
        return {"source": kind, "path": rest} if kind == "imagefolder" else _folder(rest)
    return _folder(value)


def _zoo(value: str, rest: str) -> dict[str, Any]:
    parts = rest.split(":")
    if len(parts) > 3 or not parts[0] or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"{value!r}: expected zoo:NAME, zoo:NAME:COUNT or zoo:NAME:COUNT:SEED")
    node: dict[str, Any] = {"source": "zoo", "name": parts[0]}
    node.update(zip(("count", "seed"), map(int, parts[1:]), strict=False))
    return node


def _folder(value: str) -> dict[str, Any]:
    parts = value.split("/")
    first_glob = next((i for i, part in enumerate(parts) if GLOB_CHARS & set(part)), None)
    if first_glob is None:
        return {"source": "folder", "path": value}
    return {
        "source": "folder",
        "path": "/".join(parts[:first_glob]) or ".",
        "pattern": "/".join(parts[first_glob:]),
    }


DataSpec = Annotated[
    ZooData | FolderData | ImageFolderData,
    Tagged("source"),
    Shorthand(
        parse_short,
        "zoo:NAME[:COUNT[:SEED]], imagefolder:PATH, or a folder (optionally with a glob "
        "pattern, photos/**/*.jpg).",
        {"type": "string", "minLength": 1},
    ),
]
DATA = TypeAdapter(DataSpec)
