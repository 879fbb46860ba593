"""Colour statistics of the procedural dataset: per-channel mean/std and colour-correlation root.

These are computed once and stored as constants in the registry (`fvis.zoo.MODELS`); the
functions stay here so the constants can be checked against freshly generated data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fvis.zoo.data import generate


def _pixels(images: Tensor) -> Tensor:
    """All pixels of ``[N, 3, H, W]`` images as float64 rows ``[N*H*W, 3]``."""
    return images.permute(0, 2, 3, 1).reshape(-1, 3).double()


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation ``([3], [3])`` over all pixels of a batch."""
    pixels = _pixels(images)
    return pixels.mean(0), pixels.std(0)


def color_correlation_sqrt(images: Tensor) -> Tensor:
    """Square root of the RGB covariance, scaled so its largest column norm is 1: ``[3, 3]``.

    With ``C = U diag(s) U^T`` (SVD of the symmetric covariance), the root is
    ``R = U diag(sqrt(s))`` so that ``R R^T = C``; columns of ``R`` have norms ``sqrt(s_i)``, and
    ``R / max_i sqrt(s_i)`` is returned. Mapping decorrelated noise ``z`` to colours ``R z``
    gives it the dataset's colour correlations. Each column's sign is fixed so its largest
    entry is positive, making the result reproducible.
    """
    pixels = _pixels(images)
    centred = pixels - pixels.mean(0)
    return covariance_root(centred.T @ centred / (pixels.shape[0] - 1))


def covariance_root(cov: Tensor) -> Tensor:
    """`color_correlation_sqrt`'s root of a colour covariance ``[3, 3]`` given as such (float64),
    e.g. one accumulated over a pass too large to hold (`fvis stats`): the scale of ``cov`` does
    not matter, the root being normalized."""
    u, s, _ = torch.linalg.svd(cov)
    root = u * s.sqrt()
    largest = root.gather(0, root.abs().argmax(0, keepdim=True))
    root = root * torch.sign(largest)
    return root / s.sqrt().max()


def dataset_stats(n: int = 10_000, seed: int = 1234) -> dict[str, list[float] | list[list[float]]]:
    """Mean, std and colour-correlation root of ``n`` generated images, as plain lists."""
    images, _ = generate(n, seed)
    mean, std = channel_stats(images)
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "color_correlation": color_correlation_sqrt(images).tolist(),
    }
