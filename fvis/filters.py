"""Image filters shared by parameterizations, transforms and gradient preconditioning.

Gaussian blur (a low-pass filter), the bilateral filter (a blur that keeps edges, Tomasi and
Manduchi 1998), the Laplacian pyramid (Burt and Adelson 1983: band-pass levels whose sum,
coarse to fine with upsampling, gives the image back exactly) and a centre crop (of images, and
of activation maps). All work on [B, C, H, W] batches and are differentiable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _radius(sigma: float, size: tuple[int, int]) -> int:
    """Kernel radius 3 sigma, at most what reflect padding allows (one less than the side)."""
    return max(0, min(math.ceil(3 * sigma), min(size) - 1))


def gaussian_kernels(sigmas: Tensor, radius: int) -> Tensor:
    """Normalized 1-D Gaussian kernels [N, 2 radius + 1], one per sigma (sigma 0: identity)."""
    t = torch.arange(-radius, radius + 1, dtype=sigmas.dtype, device=sigmas.device)
    s = sigmas.clamp(min=1e-6)[:, None]
    kernels = torch.exp(-(t[None] ** 2) / (2 * s**2))
    return kernels / kernels.sum(1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: float | Sequence[float] | Tensor) -> Tensor:
    """Separable Gaussian blur with reflected borders; `sigma` in pixels, one or one per item.

    G_sigma * x with G_sigma(t) = exp(-t^2 / 2 sigma^2) / Z, truncated at 3 sigma.
    """
    b, c, h, w = x.shape
    sigmas = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).flatten().expand(b)
    radius = _radius(float(sigmas.max()), (h, w))
    if radius == 0:
        return x
    kernels = gaussian_kernels(sigmas, radius).repeat_interleave(c, 0)  # [B*C, K]
    k = 2 * radius + 1
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernels.view(b * c, 1, k, 1), groups=b * c)
    y = F.conv2d(y, kernels.view(b * c, 1, 1, k), groups=b * c)
    return y.view(b, c, h, w)


def bilateral(x: Tensor, sigma_space: float, sigma_color: float) -> Tensor:
    """Edge-preserving smoothing: each pixel becomes the mean of its neighbours weighted by
    exp(-|p - q|^2 / 2 sigma_space^2) * exp(-|x_p - x_q|^2 / 2 sigma_color^2).

    Neighbours across an edge differ in colour and get little weight, so edges stay sharp while
    noise within regions is averaged away. Window radius: 2 sigma_space.
    """
    b, c, h, w = x.shape
    r = max(1, min(math.ceil(2 * sigma_space), min(h, w) - 1))
    k = 2 * r + 1
    patches = F.unfold(F.pad(x, (r,) * 4, mode="reflect"), k).view(b, c, k * k, h, w)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    space = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma_space**2)).flatten()
    colour = (patches - x[:, :, None]).square().sum(1, keepdim=True)
    weights = space.view(1, 1, k * k, 1, 1) * torch.exp(-colour / (2 * sigma_color**2))
    return (weights * patches).sum(2) / weights.sum(2)


def center_crop(x: Tensor, h: int, w: int) -> Tensor:
    """The centre h x w of the last two dimensions (a view; the top-left one of two middles)."""
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def level_sizes(size: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """Sizes of a pyramid's levels: each half the one before (rounded up), at least 1 px."""
    sizes = [size]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        if h == 1 and w == 1:
            break
        sizes.append((max(1, -(-h // 2)), max(1, -(-w // 2))))
    return sizes


def downsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Area (box) downsampling to `size`: each output pixel is the mean of the pixels it covers."""
    return F.interpolate(x, size=size, mode="area")


def upsample(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Bilinear (or bicubic) upsampling to `size`, pixel centres aligned (align_corners=False)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Laplacian pyramid, fine to coarse: L_k = G_k - up(G_k+1), and the last level G_K itself.

    G_0 = x and G_k+1 = down(G_k), so `collapse` gives x back exactly (up to rounding).
    """
    sizes = level_sizes((x.shape[-2], x.shape[-1]), levels)
    gauss = [x]
    for size in sizes[1:]:
        gauss.append(downsample(gauss[-1], size))
    bands = [
        g - upsample(g_next, size)
        for (g, g_next), size in zip(itertools.pairwise(gauss), sizes, strict=False)
    ]
    return [*bands, gauss[-1]]


def collapse(levels: Sequence[Tensor]) -> Tensor:
    """The image a Laplacian pyramid holds: x = L_0 + up(L_1 + up(L_2 + ...))."""
    x = levels[-1]
    for band in reversed(levels[:-1]):
        x = band + upsample(x, (band.shape[-2], band.shape[-1]))
    return x


def normalize_levels(g: Tensor, levels: int, eps: float = 1e-12) -> Tensor:
    """Laplacian-pyramid normalization: every band of `g` rescaled to unit RMS per item, then
    the sum rescaled to the RMS `g` had (DeepDream's gradient normalization: coarse bands, weak
    in a raw gradient, get as much weight as fine ones)."""

    def rms(t: Tensor) -> Tensor:
        return t.square().mean((1, 2, 3), keepdim=True).sqrt()

    bands = [band / (rms(band) + eps) for band in pyramid(g, levels)]
    out = collapse(bands)
    return out * (rms(g) / (rms(out) + eps))
