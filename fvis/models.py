"""Building a network from its spec, wrapped with the preprocessing its inputs need."""

from __future__ import annotations

import copy
import difflib
import importlib.metadata
import importlib.util
import pickle
import re
import sys
import urllib.error
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from fvis import zoo
from fvis.config import (
    CheckpointModelSpec,
    FactoryModelSpec,
    InputSpec,
    ModelSpec,
    TorchScriptModelSpec,
    TorchvisionModelSpec,
    ZooModelSpec,
)
from fvis.errors import SpecError, UserError
from fvis.factories import call, load_callable
from fvis.io import resolve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image in [0, 1] becomes the model's input, plus what the image should look like."""

    size: tuple[int, int]
    channels: int
    range: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color_correlation: tuple[tuple[float, ...], ...] | None = None


class Network(nn.Module):
    """A model behind its preprocessing: takes images in [0, 1], feeds the model what it expects.

    The inner model stays at `.model`, so layer names are the model's own `named_modules()` paths.
    """

    gain: torch.Tensor
    bias: torch.Tensor

    def __init__(self, model: nn.Module, prep: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.prep = prep
        lo, hi = prep.range
        shape = (1, prep.channels, 1, 1)
        std = torch.tensor(prep.std).view(shape)
        # (x * (hi - lo) + lo - mean) / std folded into one multiply-add.
        self.register_buffer("gain", (hi - lo) / std)
        self.register_buffer("bias", (lo - torch.tensor(prep.mean).view(shape)) / std)

    def forward(self, image: torch.Tensor) -> Any:
        return self.model(image * self.gain + self.bias)


_kept: dict[tuple[str, str], Network] | None = None
"""The networks this process built, while `keep_networks` is on (a cluster's worker)."""


def keep_networks() -> None:
    """From now on, build each network once in this process and hand out copies of it.

    A Ray worker runs many tasks of one model: it reads the weights (or runs the factory) once,
    and each task gets its own deep copy, free to fold batch norms or change memory format. A
    file changed on disk after the first build is not read again: workers live for one command.
    """
    global _kept
    if _kept is None:
        _kept = {}


def build_network(spec: ModelSpec, base: Path) -> Network:
    """The network a model spec names, in eval mode, frozen, with in-place ops turned off (a
    copy of the one built before, once `keep_networks` is on)."""
    if _kept is None:
        return _build_network(spec, base)
    key = (spec.model_dump_json(), str(base.resolve()))
    if key not in _kept:
        _kept[key] = _build_network(spec, base)
    return copy.deepcopy(_kept[key])


def _build_network(spec: ModelSpec, base: Path) -> Network:
    """In-place activations are disabled so that a captured layer output is never overwritten
    by the layer after it (which would make captured values depend on where the pass stops)."""
    model, defaults = _BUILDERS[type(spec)](spec, base)
    if not isinstance(model, nn.Module):
        raise SpecError(("model",), f"the model is a {type(model).__name__}, not a torch nn.Module")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if spec.control == "shuffled":
        shuffle_weights(model)
    if not isinstance(model, torch.jit.ScriptModule):  # compiled code: nothing to change
        for module in model.modules():
            if getattr(module, "inplace", False) is True:
                setattr(module, "inplace", False)  # noqa: B010 (not every module declares it)
    return Network(model, _preprocessing(spec.input, defaults))


@torch.no_grad()
def shuffle_weights(model: nn.Module, seed: int = 0) -> None:
    """Permute the entries of every floating-point parameter and buffer of `model` in place,
    each by its own draw from `seed`: the control network of `model.control: shuffled`."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and tensor.numel() > 1:
            flat = tensor.flatten()
            tensor.copy_(flat[torch.randperm(len(flat), generator=generator)].view_as(tensor))


def resolve_device(name: str) -> torch.device:
    """The device a config names: 'auto' picks CUDA, then MPS, then CPU; an explicit device
    must exist. (Here, beside the network, so that `fvis attribute` needs no render builder.)"""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise SpecError(("device",), f"{name} is not available on this machine (try auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SpecError(("device",), "mps is not available on this machine (try auto or cpu)")
    return device


def _preprocessing(given: InputSpec, default: Preprocessing) -> Preprocessing:
    """The source's defaults overridden by what the config sets; lengths checked."""
    changes: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in given if v is not None
    }
    prep = replace(default, **changes)
    if given.channels is not None and given.mean is None and len(prep.mean) != prep.channels:
        prep = replace(prep, mean=(0.0,) * prep.channels, std=(1.0,) * prep.channels)
    for name in ("mean", "std"):
        n = len(getattr(prep, name))
        if n != prep.channels:
            raise SpecError(
                ("model", "input", name),
                f"has {n} values but the model takes {prep.channels} channels",
            )
    return prep


def _plain(size: tuple[int, int] = (224, 224), channels: int = 3) -> Preprocessing:
    """No normalization: the image goes in as it is, in [0, 1]."""
    return Preprocessing(size, channels, (0.0, 1.0), (0.0,) * channels, (1.0,) * channels)


IMAGENET = Preprocessing((224, 224), 3, (0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD)


# ----------------------------------------------------------------------------- sources


def _zoo(spec: ZooModelSpec, base: Path) -> tuple[nn.Module, Preprocessing]:
    try:
        entry = zoo.get(spec.name)
        model = zoo.load(spec.name)
    except ValueError as exc:
        raise SpecError(("model", "name"), str(exc)) from None
    prep = Preprocessing(
        entry.input_size, 3, entry.value_range, entry.mean, entry.std, entry.color_correlation
    )
    return model, prep


def torchvision_version() -> str:
    """torchvision's `__version__` (build tag included, e.g. 0.29.1+cu130), read without
    importing it: run.json records it, and the import costs a zoo render 1 to 2 s and pulls in
    torch._dynamo. The installed package's version.py holds the string; the distribution's
    metadata (the fallback) omits the build tag."""
    module = sys.modules.get("torchvision")
    if module is not None:
        return str(module.__version__)
    spec = importlib.util.find_spec("torchvision")  # finds the package, does not run it
    if spec is not None and spec.origin:
        try:
            text = (Path(spec.origin).parent / "version.py").read_text()
        except OSError:
            text = ""
        found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.MULTILINE)
        if found:
            return found.group(1)
    return importlib.metadata.version("torchvision")


def _torchvision(spec: TorchvisionModelSpec, base: Path) -> tuple[nn.Module, Preprocessing]:
    import torchvision  # lazy: 2 s (it imports torch._dynamo); only torchvision models need it

    try:
        weights_enum = torchvision.models.get_model_weights(spec.name)
    except (ValueError, KeyError):
        known = torchvision.models.list_models()
        raise SpecError(
            ("model", "name"), _unknown("torchvision model", spec.name, known)
        ) from None
    if spec.weights is None:
        return _call(torchvision.models.get_model, spec.name, weights=None, **spec.kwargs), IMAGENET
    try:
        weights = weights_enum[spec.weights]
    except KeyError:
        members = [*weights_enum.__members__, "DEFAULT"]
        raise SpecError(
            ("model", "weights"), _unknown(f"{weights_enum.__name__} member", spec.weights, members)
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        # torchvision's own builder: it downloads to (or reads from) its cache, and adapts the
        # architecture to the weights (e.g. googlenet's transform_input).
        model = _call(torchvision.models.get_model, spec.name, weights=weights, **spec.kwargs)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"cannot download {type(weights).__name__}.{weights.name} ({_first_line(exc)}); "
            f"offline, put the file at {cached} (from {weights.url})"
        ) from None
    return model, _weights_preprocessing(weights)


def _weights_preprocessing(weights: Any) -> Preprocessing:
    """Mean, std and crop size from a weights enum's own inference transforms."""
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", [224])
    size = (crop[0], crop[-1])
    mean = tuple(getattr(transforms, "mean", IMAGENET_MEAN))
    std = tuple(getattr(transforms, "std", IMAGENET_STD))
    return Preprocessing(size, len(mean), (0.0, 1.0), mean, std)


def _checkpoint(spec: CheckpointModelSpec, base: Path) -> tuple[nn.Module, Preprocessing]:
    path = _existing(base, spec.path, ("model", "path"))
    state = _state_dict(_read_checkpoint(path), spec.key, path)
    if ":" in spec.arch:
        model, prep = _factory_call(spec.arch, spec.kwargs, base, ("model", "arch")), _plain()
        if not isinstance(model, nn.Module):
            raise SpecError(
                ("model", "arch"),
                f"{spec.arch} returned a {type(model).__name__}, not a torch nn.Module",
            )
    else:
        import torchvision  # lazy: 2 s (it imports torch._dynamo); only torchvision models need it

        if spec.arch not in torchvision.models.list_models():
            known = torchvision.models.list_models()
            raise SpecError(("model", "arch"), _unknown("architecture", spec.arch, known))
        model = _call(torchvision.models.get_model, spec.arch, weights=None, **spec.kwargs)
        prep = IMAGENET
    _load_state(model, state, spec.strict, path)
    return model, prep


def _read_checkpoint(path: Path) -> Any:
    """A checkpoint's contents: safetensors, or a pickle restricted to tensors and containers."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).partition("WeightsUnpickler error:")[2].strip()
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", reason)
        if refused:
            raise UserError(
                f"{path}: refused by torch.load(weights_only=True): it holds a Python object "
                f"({refused.group(1)}) that could run code; save a plain state dict with "
                "torch.save(model.state_dict(), path)"
            ) from None
        detail = reason.splitlines()[0] if reason else _first_line(exc)
        raise UserError(f"{path}: not a readable checkpoint ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None


def _state_dict(content: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: at `key`, or the usual 'state_dict'/'model' nesting."""
    if key is not None:
        if not isinstance(content, dict) or key not in content:
            keys = list(content) if isinstance(content, dict) else []
            raise UserError(f"{path}: no entry {key!r} (entries: {', '.join(map(str, keys[:10]))})")
        content = content[key]
    elif isinstance(content, dict):
        for nested in ("state_dict", "model"):
            if isinstance(content.get(nested), dict):
                content = content[nested]
                break
    if not isinstance(content, dict) or not all(
        isinstance(v, torch.Tensor) for v in content.values()
    ):
        raise UserError(f"{path}: does not hold a state dict of tensors (set model.key?)")
    if content and all(k.startswith("module.") for k in content):
        content = {k.removeprefix("module."): v for k, v in content.items()}
    return content


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool, path: Path) -> None:
    """Load a state dict; on mismatch, list the missing and unexpected keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"missing keys: {_few(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if wrong:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong]
        problems.append(f"shape mismatch: {_few(shapes)}")
    if problems:
        raise UserError(f"{path}: does not fit the architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=strict)


def _torchscript(spec: TorchScriptModelSpec, base: Path) -> tuple[nn.Module, Preprocessing]:
    path = _existing(base, spec.path, ("model", "path"))
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but users still have files
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu"), _plain()
    except (RuntimeError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a TorchScript file ({_first_line(exc)})") from None


def _factory(spec: FactoryModelSpec, base: Path) -> tuple[nn.Module, Preprocessing]:
    return _factory_call(spec.factory, spec.kwargs, base, ("model", "factory")), _plain()


_BUILDERS: dict[type, Callable[[Any, Path], tuple[nn.Module, Preprocessing]]] = {
    ZooModelSpec: _zoo,
    TorchvisionModelSpec: _torchvision,
    CheckpointModelSpec: _checkpoint,
    TorchScriptModelSpec: _torchscript,
    FactoryModelSpec: _factory,
}


# ----------------------------------------------------------------------------- helpers


def _factory_call(target: str, kwargs: dict[str, Any], base: Path, loc: tuple[str, ...]) -> Any:
    """Import 'module:function' (the config's folder importable) and call it. Trusted code."""
    return call(load_callable(target, base, loc), ("model", "kwargs") if kwargs else loc, **kwargs)


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a model builder; a wrong keyword, or a value it cannot build with, is the user's
    mistake, reported in one line."""
    try:
        return fn(*args, **kwargs)
    except TypeError as exc:
        raise SpecError(
            ("model", "kwargs"), f"the model builder refused its arguments: {exc}"
        ) from None
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(("model", "kwargs"), f"the model builder failed: {first}") from None


def _existing(base: Path, path: Path, loc: tuple[str, ...]) -> Path:
    full = resolve(base, path)
    if not full.is_file():
        raise SpecError(loc, f"no such file: {full}")
    return full


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} {name!r}{hint}"


def _few(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's can run to a paragraph)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
