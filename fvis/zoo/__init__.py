"""Built-in model zoo: small models shipped with fvis, with everything needed to visualize them.

`MODELS` maps a name to its `ZooModel` entry (classes, hookable layers, input spec, colour
statistics, weights file and its sha256); `load` returns the verified, frozen network.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from fvis.zoo.data import CLASSES
from fvis.zoo.net import ShapesNet

Vector3 = tuple[float, float, float]
Matrix3 = tuple[Vector3, Vector3, Vector3]


@dataclass(frozen=True)
class ZooModel:
    """A registry entry: what a zoo model is, how to feed it and where its weights are.

    ``mean``/``std`` normalize an input in ``value_range`` as ``(x - mean) / std`` before the
    network; ``color_correlation`` is the normalized square root of the training data's RGB
    covariance (see `fvis.zoo.stats.color_correlation_sqrt`), for decorrelated colour
    parameterizations. ``layers`` lists hookable module names in forward order with a one-line
    description each.
    """

    name: str
    description: str
    classes: tuple[str, ...]
    layers: tuple[tuple[str, str], ...]
    input_size: tuple[int, int]
    value_range: tuple[float, float]
    mean: Vector3
    std: Vector3
    color_correlation: Matrix3
    weights: str
    sha256: str
    build: Callable[[], nn.Module]
    prior: str | None = None  # a denoiser of its data (`fvis.prior`), beside the weights
    prior_sha256: str | None = None

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The hookable layer names, in forward order."""
        return tuple(name for name, _ in self.layers)


SHAPES = ZooModel(
    name="shapes",
    description=(
        "ShapesNet (62k params) trained on fvis's procedural 64x64 dataset: oriented stripes, "
        "checkerboards, curved contours, dots and red/green/blue blobs."
    ),
    classes=CLASSES,
    layers=(
        ("conv1", "Conv3x3(3->16)-BN-ReLU, post-ReLU, 16x64x64, receptive field 3 px"),
        ("conv2", "Conv3x3(16->32)-BN-ReLU, post-ReLU, 32x32x32, receptive field 8 px"),
        ("conv3", "Conv3x3(32->64)-BN-ReLU, post-ReLU, 64x16x16, receptive field 18 px"),
        ("conv4", "Conv3x3(64->64)-BN-ReLU, post-ReLU, 64x8x8, receptive field 38 px"),
        ("logits", "Linear(64->10) on globally averaged conv4: class scores, pre-softmax"),
    ),
    input_size=(64, 64),
    value_range=(0.0, 1.0),
    mean=(0.5031, 0.5026, 0.5031),
    std=(0.2536, 0.2531, 0.2533),
    color_correlation=(
        (0.5778, -0.1635, -0.0934),
        (0.5773, -0.0006, 0.1858),
        (0.5770, 0.1643, -0.0923),
    ),
    weights="shapes.safetensors",
    sha256="63581447988b1c384e60c62ca86dc22376f75fe16bc5d34ef185ed66f4d5688e",
    build=ShapesNet,
    # fvis prior train --data zoo:shapes:5000 -o shapes-prior.safetensors (the defaults)
    prior="shapes-prior.safetensors",
    prior_sha256="48567a46d0704b405fcd512e2ad395b6b5a3dbeb45ca275c2beeb5c82cff2b4e",
)

MODELS: dict[str, ZooModel] = {SHAPES.name: SHAPES}


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def get(name: str) -> ZooModel:
    """The registry entry called ``name``; `ValueError` naming close matches if there is none."""
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(sorted(MODELS))
    raise ValueError(f"unknown zoo model {name!r} (available: {known}).{hint}")


def load_from(entry: ZooModel, path: Path | str) -> nn.Module:
    """``entry``'s network with weights from ``path``, checked against ``entry.sha256``.

    Returns the model in eval mode with ``requires_grad`` off on every parameter; raises
    `ValueError` if the file's sha256 differs from the registry's (corrupt or replaced file).
    """
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ValueError(
            f"weights file {path} for zoo model {entry.name!r} has sha256 {actual}, expected "
            f"{entry.sha256}: the file is corrupt or was replaced; reinstall fvis"
        )
    model = entry.build()
    model.load_state_dict(load_file(str(path)))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load(name: str) -> nn.Module:
    """The zoo model ``name`` with its packaged, sha256-verified weights, frozen in eval mode."""
    entry = get(name)
    with resources.as_file(resources.files(__name__) / entry.weights) as path:
        return load_from(entry, path)


def prior_file(name: str) -> Path:
    """The prior (`fvis.prior`) the zoo model ``name`` ships with, checked against its sha256;
    `ValueError` where it ships none or the file was changed."""
    entry = get(name)
    if entry.prior is None:
        raise ValueError(f"zoo model {name!r} ships no prior")
    path = Path(str(resources.files(__name__) / entry.prior))
    actual = sha256_file(path)
    if actual != entry.prior_sha256:
        raise ValueError(
            f"prior file {path} of zoo model {name!r} has sha256 {actual}, expected "
            f"{entry.prior_sha256}: the file is corrupt or was replaced; reinstall fvis"
        )
    return path


__all__ = ["MODELS", "ZooModel", "get", "load", "load_from", "prior_file", "sha256_file"]
