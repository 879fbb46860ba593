"""Image parameterizations: modules whose parameters map to a batch of images in [0, 1].

An image is built in three stages: a basis (pixels, or 1/f-scaled Fourier coefficients) gives
values in a decorrelated colour space; a fixed 3x3 matrix maps them to the model's colours;
a squash (sigmoid or clamp) maps them into [0, 1]. Olah et al. 2017, "Feature Visualization",
explain why the Fourier basis and decorrelated colours precondition the optimization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fvis.config import FFTParam, Param, PixelParam

# Square root of ImageNet's colour covariance (lucid's published constants), for models
# that do not provide their own.
IMAGENET_COLOR_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))

# lucid scales the inverse FFT output by 1/4; keeping it lets its learning rates carry over.
FFT_OUTPUT_SCALE = 0.25


def color_matrix(sqrt_cov: Sequence[Sequence[float]]) -> torch.Tensor:
    """The colour-covariance square root normalized so that its largest column norm is 1."""
    m = torch.tensor(sqrt_cov, dtype=torch.float32)
    return m / m.norm(dim=0).max()


class ImageParam(nn.Module):
    """Base class: `forward()` returns the current images [B, C, H, W] in [0, 1]."""

    def __init__(
        self,
        size: tuple[int, int],
        channels: int,
        color: torch.Tensor | None,
        squash: str,
    ) -> None:
        super().__init__()
        self.size = size
        self.channels = channels
        self.squash = squash
        self.register_buffer("color", color)

    def basis(self) -> torch.Tensor:
        """Unconstrained values [B, C, H, W] in the (possibly decorrelated) colour space."""
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        x = self.basis()
        if self.color is not None:
            x = torch.einsum("ck,bkhw->bchw", self.color, x)
        if self.squash == "sigmoid":
            return torch.sigmoid(x)
        return (x + 0.5).clamp(0.0, 1.0)


def _noise(shape: Sequence[int], streams: Sequence[torch.Generator], sd: float) -> torch.Tensor:
    """Gaussian init drawn item by item, each item from its own random stream."""
    return torch.cat([torch.randn(1, *shape[1:], generator=g) for g in streams]) * sd


class PixelImage(ImageParam):
    """One free parameter per pixel and channel."""

    def __init__(
        self,
        spec: PixelParam,
        size: tuple[int, int],
        channels: int,
        color: torch.Tensor | None,
        streams: Sequence[torch.Generator],
    ) -> None:
        super().__init__(size, channels, color, spec.squash)
        self.pixels = nn.Parameter(_noise((len(streams), channels, *size), streams, spec.sd))

    def basis(self) -> torch.Tensor:
        return self.pixels


class FourierImage(ImageParam):
    """Real-FFT coefficients scaled by 1 / max(f, 1/max(h, w))^decay, inverted orthonormally.

    The orthonormal inverse keeps the image's scale independent of its size, so one learning
    rate fits every size; the 1/f scaling gives low frequencies larger steps (preconditioning).
    """

    def __init__(
        self,
        spec: FFTParam,
        size: tuple[int, int],
        channels: int,
        color: torch.Tensor | None,
        streams: Sequence[torch.Generator],
    ) -> None:
        super().__init__(size, channels, color, spec.squash)
        h, w = size
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = (fx.square() + fy.square()).sqrt()
        scale = freq.clamp(min=1.0 / max(h, w)).pow(-spec.decay) * FFT_OUTPUT_SCALE
        self.register_buffer("scale", scale)
        shape = (len(streams), channels, h, w // 2 + 1, 2)
        self.spectrum = nn.Parameter(_noise(shape, streams, spec.sd))

    def basis(self) -> torch.Tensor:
        coeffs = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(coeffs, s=self.size, norm="ortho")


def build_param(
    spec: Param,
    size: tuple[int, int],
    channels: int,
    color_sqrt: Sequence[Sequence[float]] | None,
    streams: Sequence[torch.Generator],
) -> ImageParam:
    """The parameterization a spec names; decorrelation applies to 3-channel images only."""
    color = color_matrix(color_sqrt or IMAGENET_COLOR_SQRT) if spec.decorrelate else None
    if color is not None and channels != 3:
        raise ValueError(f"decorrelate needs 3 channels, the image has {channels}")
    kinds = {"pixel": PixelImage, "fft": FourierImage}
    return kinds[spec.kind](spec, size, channels, color, streams)
