"""Entry points into the user's own code ('package.module:function'), for model and objective
factories: imported with the config's folder importable. Importing runs that module's code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fvis.errors import SpecError, YamlPath

# The top-level modules imported from a config's folder, and that folder: one process renders
# several configs (`fvis render a/x.yaml b/y.yaml`), and b's `net.py` is not a's.
_FROM_FOLDER: dict[str, Path] = {}


def load_callable(target: str, base: Path, loc: YamlPath) -> Callable[..., Any]:
    """The callable `target` names; SpecError at `loc` when it cannot be imported or called."""
    module_name, _, attr = target.partition(":")
    top = module_name.partition(".")[0]
    folder = base.resolve()
    with importable(base):
        if _FROM_FOLDER.get(top, folder) != folder and _has_module(folder, top):
            _forget(top)  # another config's module of the same name: import this folder's
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SpecError(loc, f"cannot import {module_name!r}: {exc}") from None
    origin = getattr(sys.modules.get(top), "__file__", None)
    if origin and Path(origin).resolve() in _module_files(folder, top):
        _FROM_FOLDER[top] = folder
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SpecError(loc, f"module {module_name!r} has no callable {attr!r}")
    return factory


def _module_files(folder: Path, name: str) -> tuple[Path, Path]:
    """Where a module or a package `name` of `folder`'s own would be."""
    return folder / f"{name}.py", folder / name / "__init__.py"


def _has_module(folder: Path, name: str) -> bool:
    """Whether `folder` holds a module or package `name` of its own."""
    return any(path.is_file() for path in _module_files(folder, name))


def _forget(top: str) -> None:
    """Drop a module imported from another config's folder, and its submodules."""
    for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
        del sys.modules[name]
    del _FROM_FOLDER[top]


@contextmanager
def importable(folder: Path) -> Iterator[None]:
    """`folder` first on sys.path within the block."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
