"""Captum's LimeBase with the choices a YAML file can make: the interpretable space (one feature
per segment of the feature mask, sampled present/absent, blended, or by the user's function),
the similarity kernel and the ridge penalty of the linear surrogate.

LimeBase fits one surrogate per input and returns its coefficients (one per segment);
`SegmentLime` runs it input by input and spreads each coefficient over its segment's pixels,
so the result is input-shaped like every primary method's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import LimeBase
from torch import Tensor

from fvis.attribution.surrogate import linear_surrogate
from fvis.config.attribution import (
    BlendSpace,
    CustomKernel,
    CustomSpace,
    ExponentialKernel,
    PresenceSpace,
    SimilarityKernel,
    UniformKernel,
)
from fvis.errors import YamlPath
from fvis.factories import load_callable

Sampler = Callable[..., Tensor]


class SegmentLime(LimeBase):
    """LimeBase sampling in the space of the feature mask's segments (weights in [0, 1] per
    segment, 1 = the input's pixels, 0 = the baseline's) and answering in the input's shape."""

    @torch.no_grad()  # also gives NoiseTunnel the `attribute.__wrapped__` it calls
    def attribute(  # type: ignore[override]
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        baselines: Tensor | tuple[Tensor, ...] | None = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        n_samples: int = 25,  # Lime's default (LimeBase's is 50): the defaults make Lime
        perturbations_per_eval: int = 1,
    ) -> Tensor:
        """[B, C, H, W]: each input's surrogate coefficient of a segment on its pixels.

        Captum's metrics and NoiseTunnel pass tuples of one tensor: they are unpacked."""
        x, refs, masks = _single(inputs), _single(baselines), _single(feature_mask)
        features = int(masks.max()) + 1
        out = torch.zeros_like(x)
        for i in range(len(x)):
            rows = slice(i, i + 1)
            mask = masks[rows] if len(masks) > 1 else masks
            coefficients = super().attribute(
                x[rows],
                target=_row(target, i, len(x)),
                n_samples=n_samples,
                perturbations_per_eval=perturbations_per_eval,
                baselines=refs[rows] if len(refs) > 1 else refs,
                feature_mask=mask,
                num_interp_features=features,
            )
            out[rows] = coefficients.reshape(-1).to(x)[mask].expand_as(x[rows])
        return out


def _single(value: Tensor | tuple[Tensor, ...] | None) -> Tensor:
    """The one tensor of a tuple of one (Captum's formatted arguments)."""
    assert value is not None
    return value[0] if isinstance(value, tuple) else value


def _row(target: Any, i: int, count: int) -> Any:
    """Input i's target: one per input (a tensor or list of `count`), or one for all."""
    if isinstance(target, Tensor) and target.numel() == count and count > 1:
        return target.reshape(-1)[i : i + 1]
    if isinstance(target, list) and len(target) == count:
        return target[i : i + 1]
    return target


def segment_lime(forward: Callable[..., Any], spec: Any, base: Path, loc: YamlPath) -> SegmentLime:
    """The LimeBase a `lime_base` node describes; user functions imported from `base`."""
    sample, transform = _space(spec.space, base, (*loc, "space"))
    return SegmentLime(
        forward,
        interpretable_model=linear_surrogate(spec.ridge),
        similarity_func=_kernel(spec.kernel, base, (*loc, "kernel")),
        perturb_func=sample,
        perturb_interpretable_space=True,
        from_interp_rep_transform=transform,
        to_interp_rep_transform=None,
    )


# ----------------------------------------------------------------------------- the space


def _space(space: Any, base: Path, loc: YamlPath) -> tuple[Sampler, Sampler]:
    """The sampler of the interpretable space and the transform of a sample into an image."""
    if isinstance(space, PresenceSpace):
        return _presence(space.keep), blend
    if isinstance(space, BlendSpace):
        return _uniform(space.low, space.high), blend
    if isinstance(space, CustomSpace):
        sample = _checked(load_callable(space.sample, base, (*loc, "sample")), space.sample)
        if space.transform is None:
            return sample, blend
        return sample, load_callable(space.transform, base, (*loc, "transform"))
    raise AssertionError(f"unhandled space {space!r}")


def _presence(keep: float) -> Sampler:
    """Each segment present (1) with probability `keep`, else absent (0)."""

    def sample(original_input: Tensor, **kwargs: Any) -> Tensor:
        count = int(kwargs["num_interp_features"])
        return torch.bernoulli(torch.full((1, count), keep)).to(original_input.device)

    return sample


def _uniform(low: float, high: float) -> Sampler:
    """Each segment's weight drawn uniformly from [low, high]."""

    def sample(original_input: Tensor, **kwargs: Any) -> Tensor:
        count = int(kwargs["num_interp_features"])
        return (low + (high - low) * torch.rand(1, count)).to(original_input.device)

    return sample


def _checked(sample: Sampler, name: str) -> Sampler:
    """A user's sampler whose samples are checked: one weight per segment, [1, features]."""

    def checked(original_input: Tensor, **kwargs: Any) -> Tensor:
        z = sample(original_input, **kwargs)
        count = int(kwargs["num_interp_features"])
        if not isinstance(z, Tensor) or tuple(z.shape) != (1, count):
            got = list(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{name} returned {got}; expected a tensor [1, {count}]")
        return z.to(original_input.device)

    return checked


def blend(curr_sample: Tensor, original_input: Tensor, **kwargs: Any) -> Tensor:
    """A sample of segment weights as an image: baseline + weight * (input - baseline) on each
    segment's pixels (weights of 0 and 1: Lime's absent and present)."""
    baselines: Tensor = kwargs["baselines"]
    weights = curr_sample.reshape(-1)[kwargs["feature_mask"]].to(original_input)
    return baselines + weights * (original_input - baselines)


# ----------------------------------------------------------------------------- the kernel


def _kernel(kernel: SimilarityKernel, base: Path, loc: YamlPath) -> Callable[..., Any]:
    """Captum's similarity_func for a kernel node."""
    if isinstance(kernel, ExponentialKernel):
        return exponential(kernel.distance, kernel.width, kernel.between)
    if isinstance(kernel, UniformKernel):
        return lambda *_, **__: 1.0
    if isinstance(kernel, CustomKernel):
        return load_callable(kernel.function, base, (*loc, "function"))
    raise AssertionError(f"unhandled kernel {kernel!r}")


def exponential(distance: str, width: float, between: str) -> Callable[..., Tensor]:
    """exp(-d^2 / (2 width^2)), d the cosine (1 - cos) or Euclidean distance between the input
    and the sample (`between` images) or between their interpretable vectors (`between`
    features: the input's is all ones)."""

    def similarity(original: Tensor, perturbed: Tensor, interpretable: Tensor, **_: Any) -> Tensor:
        if between == "features":
            original, perturbed = torch.ones_like(interpretable), interpretable
        a, b = original.flatten().double(), perturbed.flatten().double()
        d = 1 - F.cosine_similarity(a, b, dim=0) if distance == "cosine" else (a - b).norm()
        return torch.exp(-(d**2) / (2 * width**2))

    return similarity
