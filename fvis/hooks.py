"""Capturing named layers' outputs in a forward pass, which stops once all of them are captured."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn

from fvis.errors import SpecError, YamlPath

IMAGE = "image"
OUTPUT = "output"
# Characters of an unknown layer name an error repeats (a hostile name can be megabytes long).
MAX_SHOWN = 80
SELECTOR = re.compile(r"\[([^\[\]]+)\]")


def split_layer(spec: str) -> tuple[str, tuple[int | str, ...]]:
    """'blocks.3[0][attn]' -> ('blocks.3', (0, 'attn')): a module path and selectors that pick
    one tensor out of a tuple, list or dict output."""
    path, bracket, _ = spec.partition("[")
    keys = SELECTOR.findall(spec[len(path) :]) if bracket else []
    return path, tuple(int(k) if k.lstrip("-").isdigit() else k for k in keys)


def select(outputs: dict[str, Any], spec: str) -> torch.Tensor:
    """The tensor a layer spec names among captured module outputs."""
    path, keys = split_layer(spec)
    value = outputs[path]
    for key in keys:
        try:
            value = value[key]
        except (IndexError, KeyError, TypeError):
            raise TypeError(
                f"layer {spec!r}: cannot select [{key}] from {describe_shape(value)}"
            ) from None
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"layer {spec!r} outputs {describe_shape(value)}, not a tensor; select one with "
            f"[index] or [key], e.g. {path}[0]"
        )
    return value


def resolve_layer(name: str, aliases: dict[str, str], model: nn.Module, loc: YamlPath) -> str:
    """The layer spec a name means: an alias, a named_modules() path (with optional selectors
    like `[0]`), 'image' or 'output'. An unknown name answers with the closest valid names.
    """
    spec = aliases.get(name, name)
    path = split_layer(spec)[0]
    if path in (IMAGE, OUTPUT):
        return spec
    if isinstance(model, torch.jit.ScriptModule):
        raise SpecError(
            loc,
            f"layer {name!r}: a TorchScript model runs as compiled code, so only 'output' "
            "can be captured; load its weights into a Python architecture to hook inner layers",
        )
    names = [n for n, _ in model.named_modules() if n]
    if path in names:
        return spec
    if name in aliases:
        loc, name, candidates = ("hooks", name), path, names
    else:
        candidates = [*aliases, *names, IMAGE, OUTPUT]
    close = difflib.get_close_matches(name[:MAX_SHOWN], candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    shown = (
        repr(name)
        if len(name) <= MAX_SHOWN
        else f"{name[:MAX_SHOWN]!r}... ({len(name)} characters)"
    )
    raise SpecError(loc, f"unknown layer {shown}{hint} (`fvis layers CONFIG` lists them)")


class _Stop(Exception):
    """Raised inside the forward pass once every needed layer has been captured."""


class Capture:
    """Forward hooks on the needed modules only, removed on exit however the block ends.

    Specs are layer specs of `model` (module paths, selectors ignored here); `forward` (default:
    `model`) is what `run` calls, e.g. the model behind its preprocessing. `run(x)` returns
    {module path: output}, to be read with `select`. Unless the model's output
    is needed, the pass stops right after the last needed module has run, so no work is spent
    on the layers above it. A module called several times in one pass is captured at its first
    call.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Iterable[str],
        forward: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        self.model = model
        self.forward: Callable[[torch.Tensor], Any] = model if forward is None else forward
        self.paths = {split_layer(s)[0] for s in specs} - {IMAGE}
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
    """(path, module type, output shape) for every named module, from one dry forward.

    A module called more than once in the pass (ResNet's `relu`, shared by a block's layers)
    shows its first call's shape, marked `(call 1 of N: the one read)`: hooks and objectives
    read a layer at its first call (see `Capture`).
    """
    shapes: dict[str, str] = {}
    calls: dict[str, int] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            shapes.setdefault(name, describe_shape(output))
            calls[name] = calls.get(name, 0) + 1

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
    for name, n in calls.items():
        if n > 1:
            shapes[name] += f" (call 1 of {n}: the one read)"
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
