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


def load_callable(target: str, base: Path, loc: YamlPath) -> Callable[..., Any]:
    """The callable `target` names; SpecError at `loc` when it cannot be imported or called."""
    module_name, _, attr = target.partition(":")
    with importable(base):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SpecError(loc, f"cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SpecError(loc, f"module {module_name!r} has no callable {attr!r}")
    return factory


@contextmanager
def importable(folder: Path) -> Iterator[None]:
    """`folder` first on sys.path within the block."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
