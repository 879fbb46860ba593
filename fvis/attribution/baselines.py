"""Baselines: the reference images attributions are measured against, in [0, 1] image space.

A method either compares each input with one reference (`References.per_input`, [B, C, H, W])
or samples references from a distribution (`References.distribution`, [K, C, H, W]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fvis.attribution.inputs import Loader
from fvis.config.attribution import (
    Baseline,
    BlurBaseline,
    ConstantBaseline,
    FileBaseline,
    NoiseBaseline,
    SamplesBaseline,
    ZerosBaseline,
)
from fvis.errors import SpecError, YamlPath


@dataclass
class References:
    """A baseline made concrete: [K, C, H, W] images, or [B, ...] when it depends on the input."""

    images: torch.Tensor
    depends_on_input: bool
    kind: str

    def per_input(self, batch: int, loc: YamlPath, method: str) -> torch.Tensor:
        """One reference per input: [batch, C, H, W]."""
        if self.depends_on_input:
            return self.images
        if self.images.shape[0] != 1:
            raise SpecError(
                loc,
                f"{method} compares each input with one baseline, but this {self.kind} baseline "
                f"holds {self.images.shape[0]} images (a distribution, for SHAP-style methods)",
            )
        return self.images.expand(batch, -1, -1, -1)

    def distribution(self, loc: YamlPath, method: str, least: int) -> torch.Tensor:
        """A set of references shared by every input: [K, C, H, W] with K >= least."""
        if self.depends_on_input:
            raise SpecError(
                loc,
                f"{method} samples its baselines from a distribution; a {self.kind} "
                "baseline depends on each input (use noise with count, samples, zeros, ...)",
            )
        if self.images.shape[0] < least:
            raise SpecError(
                loc,
                f"{method} needs at least {least} baseline images; this {self.kind} baseline "
                f"holds {self.images.shape[0]} (e.g. {{kind: noise, count: 8}})",
            )
        return self.images


def references(spec: Baseline, inputs: torch.Tensor, loader: Loader, loc: YamlPath) -> References:
    """The reference images a baseline spec means for these inputs ([B, C, H, W] in [0, 1])."""
    shape = (1, *inputs.shape[1:])
    if isinstance(spec, ZerosBaseline):
        return References(torch.zeros(shape), False, spec.kind)
    if isinstance(spec, ConstantBaseline):
        return References(torch.full(shape, spec.value), False, spec.kind)
    if isinstance(spec, BlurBaseline):
        return References(blur(inputs, spec.sigma), True, spec.kind)
    if isinstance(spec, NoiseBaseline):
        generator = torch.Generator().manual_seed(spec.seed)
        noise = torch.rand((spec.count, *shape[1:]), generator=generator)
        return References(spec.low + (spec.high - spec.low) * noise, False, spec.kind)
    if isinstance(spec, FileBaseline):
        return References(loader.image(spec.path, (*loc, "path")), False, spec.kind)
    if isinstance(spec, SamplesBaseline):
        return References(loader.load(spec.inputs, (*loc, "inputs")).tensor, False, spec.kind)
    raise AssertionError(f"unhandled baseline {spec!r}")


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation `sigma` px, kernel +-3 sigma (within the image)."""
    from torchvision.transforms.functional import gaussian_blur  # lazy: 2 s (torch._dynamo)

    h, w = images.shape[-2:]
    radius = min(math.ceil(3 * sigma), min(h, w) - 1)
    return gaussian_blur(images, [2 * radius + 1] * 2, [sigma, sigma])
