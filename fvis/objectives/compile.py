"""Compiling an objective tree from the config into the objective algebra.

Each node's schema class names the objective class it builds (`builds`, "module:Class"); that
class's `from_node` builds it, asking the `Context` for layers, tensors and compiled children.
Layers are resolved and their shapes known before compiling (one dry forward), so every leaf is
checked against the layer it reads as it is built, and errors point at the config key.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file

from fvis.config import ImageTarget, ObjectiveNode, RandomTensor, TensorFile
from fvis.errors import SpecError, UserError, YamlPath
from fvis.io import resolve
from fvis.objectives.activation import channel_count, positions
from fvis.objectives.algebra import LAYER_FIELDS, Masked, Objective, TermError, label


def layer_fields(node: BaseModel, loc: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    """(YAML path, layer name) of every layer an objective tree names, depth first: the nodes'
    own and those of the nodes inside them (children, `{image: FILE, layer: L}`)."""
    for key, value in node:
        if key in LAYER_FIELDS and isinstance(value, str):
            yield (*loc, key), value
        elif isinstance(value, BaseModel):
            yield from layer_fields(value, (*loc, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from layer_fields(item, (*loc, key, i))


@cache
def built_class(target: str) -> Any:
    """The class a schema's `builds` names ("module:Class"), imported on first use."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Context:
    """What building an objective can ask for: resolved layer specs and shapes (one dry
    forward), tensors named in the config, an image's activations, the batch size, and the
    compiled objective of a child node. Warnings raised while compiling collect here."""

    specs: dict[YamlPath, str]
    probe: dict[str, torch.Tensor]
    base: Path
    batch: int
    activation_of: Callable[[Path, str], torch.Tensor]
    warnings: list[tuple[YamlPath, str]] = field(default_factory=list)

    def compile(self, node: ObjectiveNode, loc: YamlPath) -> Objective:
        """One node and its children, each leaf checked against its layer's shape; the node's
        batch selection and weight applied on top."""
        result = built_class(node.builds).from_node(node, loc, self)
        for leaf in result.leaves():
            unknown = [layer for layer in leaf.reads if layer not in self.probe]
            if unknown:  # only a plugin's own objective can read a layer no field named
                raise SpecError(
                    loc,
                    f"{leaf.name} reads {unknown[0]!r}, which the node does not name: pass "
                    "the layer as the node's `layer` and build the objective on what it gets",
                )
            try:
                leaf.check(self.shapes)
            except TermError as exc:
                raise SpecError((*loc, *exc.loc), f"layer {leaf.layer!r}: {exc}") from None
        if node.batch is not None:
            outside = [b for b in node.batch if b >= self.batch]
            if outside:
                raise SpecError(
                    (*loc, "batch"),
                    f"batch item {outside[0]} does not exist: param.batch is {self.batch}",
                )
            result = Masked(result, tuple(node.batch))
        return result if node.weight == 1.0 else node.weight * result

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every layer read, from the dry forward at batch 1."""
        return {spec: tuple(t.shape) for spec, t in self.probe.items()}

    def layer(self, loc: YamlPath, name: str = "layer") -> str:
        """The resolved spec of the layer field `name` of the node at `loc`."""
        return self.specs[(*loc, name)]

    def tensor(
        self, spec: Any, loc: YamlPath, shape: tuple[int, ...], layer: str | None = None
    ) -> torch.Tensor:
        """A tensor given inline, in a file, as {random: seed} of `shape` (or its own), or as
        the activations an image produces (`image`; at `layer`, the spec of the node's layer
        field, by default the node's `layer`)."""
        if isinstance(spec, list):
            try:
                return torch.tensor(spec, dtype=torch.float32)
            except (TypeError, ValueError) as exc:
                raise SpecError(loc, f"not a rectangular list of numbers ({exc})") from None
        if isinstance(spec, RandomTensor):
            generator = torch.Generator().manual_seed(spec.random)
            return torch.randn(tuple(spec.shape or shape), generator=generator)
        if isinstance(spec, ImageTarget):
            return self.image(spec, loc, layer or self.layer(loc[:-1]))
        return read_tensor(spec, self.base, loc)

    def image(self, spec: ImageTarget, loc: YamlPath, default: str) -> torch.Tensor:
        """The activations [C, H, W] (or [T, C], [C]) the image `spec` names produces at its
        layer (`default`, a layer spec, where it names none): read at the render's size, run
        through the network (one forward at build time)."""
        layer = default if spec.layer is None else self.layer(loc)
        path = resolve(self.base, spec.image)
        if not path.is_file():
            raise SpecError((*loc, "image"), f"no such file: {path}")
        try:
            return self.activation_of(path, layer)
        except UserError as exc:  # unreadable, or too large: the message names the file
            raise SpecError((*loc, "image"), str(exc)) from None

    def sources(self, node: Any, *keys: str) -> dict[str, str]:
        """How the config names each tensor field of a node, for the term's label (`random(3)`,
        `file('v.pt', 'dir')`, `image('cat.png')`); inline numbers are left out (the leaf labels
        them by a digest of their values)."""
        out = {}
        for key in keys:
            spec = getattr(node, key, None)
            if isinstance(spec, RandomTensor):
                out[key] = label("random", spec.random, shape=spec.shape)
            elif isinstance(spec, TensorFile):
                key_shown = None if spec.key is None else repr(spec.key)
                out[key] = label("file", repr(str(spec.file)), key_shown, index=spec.index)
            elif isinstance(spec, ImageTarget):
                own = spec.layer in (None, getattr(node, "layer", None))
                out[key] = label("image", repr(str(spec.image)), None if own else spec.layer)
        return out

    def vector(
        self, node: Any, loc: YamlPath, key: str = "vector", layer: str = "layer"
    ) -> torch.Tensor:
        """The node's `key` tensor, a direction over the channels of its `layer` field; an
        image's activations averaged over positions (Olah et al.'s caricature: the direction
        of what a photo activates), those of a [B, C] layer its row."""
        spec, where = getattr(node, key), (*loc, key)
        if isinstance(spec, ImageTarget):
            activation = self.image(spec, where, self.layer(loc, layer))
            if activation.dim() not in (1, 2, 3):
                raise SpecError(
                    where,
                    f"the image's activations are {list(activation.shape)}: a direction needs "
                    "a [B, C], [B, T, C] or [B, C, H, W] layer",
                )
            return positions(activation[None])[0].mean(1)
        shape = self.shapes[self.layer(loc, layer)]
        return self.tensor(spec, where, (channel_count(shape),))

    def matrix(self, node: Any, loc: YamlPath) -> torch.Tensor | None:
        """The node's optional `transform`: a [D, C] matrix over its layer's channels."""
        if node.transform is None:
            return None
        channels = channel_count(self.shapes[self.layer(loc)])
        matrix = self.tensor(node.transform, (*loc, "transform"), (channels, channels))
        if matrix.dim() != 2:
            raise SpecError((*loc, "transform"), f"must be a matrix, got {list(matrix.shape)}")
        return matrix

    def target(self, node: Any, loc: YamlPath) -> torch.Tensor:
        """An activation to reproduce: a tensor, or what an image produces at the layer."""
        spec = self.layer(loc)
        return self.tensor(node.target, (*loc, "target"), self.shapes[spec][1:], spec)


def read_tensor(
    spec: TensorFile, base: Path, loc: YamlPath, default_key: str | None = None
) -> torch.Tensor:
    """The tensor a `{file, key, index}` node names, as float32: from a .npy (no pickle), a
    .safetensors or a .pt/.pth file (`weights_only`); in a dict, the entry `key` (else
    `default_key` where the file holds it, else the only entry). Every problem is a SpecError
    at `loc` (the node's place in the YAML), one line naming the file."""
    path = resolve(base, spec.file)
    if not path.is_file():
        raise SpecError((*loc, "file"), f"no such file: {path}")
    try:
        content: Any
        if path.suffix == ".npy":
            content = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".safetensors":
            content = load_file(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError((*loc, "file"), f"cannot read {path}: {first}") from None
    if isinstance(content, dict):
        key = spec.key
        if key is None and default_key in content:
            key = default_key
        elif key is None and len(content) == 1:
            key = next(iter(content))
        if key not in content:
            raise SpecError(
                (*loc, "key"), f"{path} holds {', '.join(map(str, content))}: set key to one"
            )
        content = content[key]
    if not isinstance(content, torch.Tensor):
        raise SpecError((*loc, "file"), f"{path} does not hold a tensor")
    if spec.index is not None:
        if content.dim() == 0 or spec.index >= content.shape[0]:
            raise SpecError(
                (*loc, "index"),
                f"row {spec.index} is outside a tensor of {list(content.shape)}",
            )
        content = content[spec.index]
    if content.is_complex() or content.dtype == torch.bool:
        what = f"{path} holds {content.dtype} values, not real numbers"
        raise SpecError((*loc, "file"), what)
    return content.float()
