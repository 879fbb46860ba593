"""Capturing named layers' outputs in a forward pass, which stops once all of them are captured."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn

from fvis.errors import SpecError, YamlPath

IMAGE = "image"
OUTPUT = "output"


def resolve_layer(name: str, aliases: dict[str, str], model: nn.Module, loc: YamlPath) -> str:
    """The module path a layer name means: an alias, a named_modules() path, 'image' or 'output'.

    An unknown name answers with the closest valid names.
    """
    path = aliases.get(name, name)
    if path in (IMAGE, OUTPUT):
        return path
    if isinstance(model, torch.jit.ScriptModule):
        raise SpecError(
            loc,
            f"layer {name!r}: a TorchScript model runs as compiled code, so only 'output' "
            "can be captured; load its weights into a Python architecture to hook inner layers",
        )
    names = [n for n, _ in model.named_modules() if n]
    if path in names:
        return path
    if name in aliases:
        loc, name, candidates = ("hooks", name), path, names
    else:
        candidates = [*aliases, *names, IMAGE, OUTPUT]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    raise SpecError(loc, f"unknown layer {name!r}; {hint}(`fvis layers CONFIG` lists them)")


class _Stop(Exception):
    """Raised inside the forward pass once every needed layer has been captured."""


class Capture:
    """Forward hooks on the needed modules only, removed on exit however the block ends.

    Paths are `model`'s module paths; `forward` (default: `model`) is what `run` calls, e.g. the
    model behind its preprocessing. `run(x)` returns {path: output}. Unless the model's output
    is needed, the pass stops right after the last needed module has run, so no work is spent
    on the layers above it. A module called several times in one pass is captured at its first
    call.
    """

    def __init__(
        self, model: nn.Module, paths: Iterable[str], forward: nn.Module | None = None
    ) -> None:
        self.model = model
        self.forward = forward or model
        self.paths = {p for p in paths if p != IMAGE}
        self.needs_output = OUTPUT in self.paths
        self.modules = self.paths - {OUTPUT}
        self.acts: dict[str, Any] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Capture:
        for path in sorted(self.modules):
            module = self.model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, path: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.acts.setdefault(path, output)
            if not self.needs_output and len(self.acts) == len(self.modules):
                raise _Stop

        return hook

    def run(self, x: torch.Tensor) -> dict[str, Any]:
        """One forward pass; the captured outputs by module path (and 'output' if needed)."""
        self.acts = {}
        try:
            out = self.forward(x)
        except _Stop:
            return self.acts
        if self.needs_output:
            self.acts[OUTPUT] = out
        missing = self.modules - set(self.acts)
        if missing:
            raise SpecError(
                ("objective",), f"layers {sorted(missing)} never ran in the forward pass"
            )
        return self.acts


def layer_table(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, str]]:
    """(path, module type, output shape) for every named module, from one dry forward."""
    shapes: dict[str, str] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            shapes.setdefault(name, describe_shape(output))

        return hook

    handles = [
        module.register_forward_hook(record(name)) for name, module in model.named_modules() if name
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [
        (name, type(module).__name__, shapes.get(name, "(not run)"))
        for name, module in model.named_modules()
        if name
    ]


def describe_shape(value: Any) -> str:
    """A module output's shape for display: tensors, and tuples/lists/dicts of them."""
    if isinstance(value, torch.Tensor):
        return "[" + ", ".join(map(str, value.shape)) + "]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe_shape(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe_shape(v)}" for k, v in value.items()) + "}"
    return type(value).__name__
