"""Entry points into the user's own code ('package.module:function'), for model and objective
factories: imported with the config's folder importable. Importing runs that module's code."""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fvis.errors import SpecError, YamlPath

# The config fields that name a 'module:function' of the user's code.
USER_CODE_FIELDS = ("factory", "arch")
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
            raise SpecError(loc, _import_failure(module_name, folder, exc)) from None
        except Exception as exc:  # the user's module failed while it ran
            raise SpecError(loc, f"importing {module_name!r} failed: {_user_frame(exc)}") from None
    origin = getattr(sys.modules.get(top), "__file__", None)
    if origin and Path(origin).resolve() in _module_files(folder, top):
        _FROM_FOLDER[top] = folder
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SpecError(loc, f"module {module_name!r} has no callable {attr!r}")
    return factory


def call(fn: Callable[..., Any], loc: YamlPath, **kwargs: Any) -> Any:
    """`fn(**kwargs)`, a function of the user's code: keywords it refuses, or any exception it
    raises, become one line at `loc` naming the place in the user's file."""
    try:
        return fn(**kwargs)
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            raise SpecError(loc, f"{_name(fn)} refused its arguments: {exc}") from None
        raise SpecError(loc, f"{_name(fn)} failed: {_user_frame(exc)}") from None
    except Exception as exc:
        raise SpecError(loc, f"{_name(fn)} failed: {_user_frame(exc)}") from None


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def entry_points(node: object, loc: YamlPath = ()) -> list[tuple[YamlPath, str]]:
    """Every place in a validated config that imports the user's code: a `factory`, or an
    `arch` given as 'module:function' (a checkpoint's architecture), with its YAML path. fvis's
    own modules (the objectives `fvis grid` writes into its configs) are not the user's code."""
    if isinstance(node, BaseModel):
        found = []
        for name in type(node).model_fields:
            value = getattr(node, name)
            if name in USER_CODE_FIELDS and isinstance(value, str) and ":" in value:
                if value.split(":", 1)[0].partition(".")[0] != "fvis":
                    found.append(((*loc, name), value))
            else:
                found += entry_points(value, (*loc, name))
        return found
    if isinstance(node, (list, tuple)):
        return [hit for i, item in enumerate(node) for hit in entry_points(item, (*loc, i))]
    if isinstance(node, dict):
        return [hit for key, item in node.items() for hit in entry_points(item, (*loc, key))]
    return []


def _import_failure(module_name: str, folder: Path, exc: ImportError) -> str:
    """Why `module_name` did not import: not found (and where fvis looked), or a module that
    it imports missing."""
    missing = exc.name or ""
    if missing and module_name != missing and not module_name.startswith(f"{missing}."):
        return f"cannot import {module_name!r}: it imports {missing!r}, which is not installed"
    return (
        f"cannot import {module_name!r}: no module {missing or module_name!r} in the config's "
        f"folder ({folder}) or on the Python path (installed packages, PYTHONPATH)"
    )


def _user_frame(exc: BaseException) -> str:
    """'file.py:LINE: Error: message' at the deepest frame of the user's code (the last frame
    outside Python's import machinery), so a failing module is found without a traceback."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in Path(f.filename).parts and not f.filename.startswith("<")
    ]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}: "
        return f"{where}SyntaxError: {exc.msg}"
    return f"{where}{type(exc).__name__}: {exc}"


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
