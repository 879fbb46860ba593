"""Network-free class recovery for shapes images: hand-made signature statistics and rules.

Used to check that a feature visualization of a class logit really shows that class's
signature. Three families of statistics, all on a ``[3, H, W]`` image in [0, 1]:

* colour: share of pixels (after a 5x5 box blur) where one channel exceeds both others by
  `DOMINANCE_MARGIN`, per channel;
* spectrum: share of the mid-band power (`BAND`, radial frequency in cycles/pixel) of the
  mean-removed, Hann-windowed greyscale image in each of four orientation bins, named by the
  direction the *stripes* run (0 = horizontal, 90 = vertical; see `fvis.zoo.data`);
* structure tensor ``J = G_rho * (grad I grad I^T)``: ``coherence`` (energy-weighted mean of
  ``(l1 - l2) / (l1 + l2)``: is the image locally oriented?) and ``consistency`` (length of the
  summed doubled-angle orientation vectors over their summed lengths: is it the *same*
  orientation everywhere?).

The rules decide colour first, then texture: oriented and consistent -> stripes at the dominant
spectral orientation; oriented but inconsistent -> curves; not oriented -> checkerboard if the
spectrum's diagonals outweigh its axes, else dots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ORIENTATIONS: tuple[int, ...] = (0, 45, 90, 135)
DOMINANCE_MARGIN = 0.15
"""A pixel is dominated by a channel that exceeds both others by this much (blurred image)."""
COLOUR_SHARE = 0.03
"""Minimum share of dominated pixels for a colour class (a 10 px blob covers 7.7% of 64^2)."""
BAND = (0.04, 0.4)
"""Mid-frequency band (cycles/pixel) for orientation shares: periods of 2.5 to 25 px."""
COHERENCE_MIN = 0.45
CONSISTENCY_MIN = 0.96
TENSOR_SIGMA = 4.0
"""Integration scale (px) of the structure tensor: above a checker cell, so checks and dots
average to no orientation while stripes and rings stay oriented."""


def _grey(img: Tensor) -> Tensor:
    """Channel mean ``[H, W]`` of a ``[3, H, W]`` image, as float64 for stable spectra."""
    return img.double().mean(0)


def _check(img: Tensor) -> Tensor:
    """``img`` detached on the CPU, or `ValueError` if it is not ``[3, H, W]``."""
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"expected an image [3, H, W], got shape {tuple(img.shape)}")
    return img.detach().cpu()


def _spectrum(grey: Tensor, window: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Power ``|FFT(w (I - mean I))|^2`` and frequency grids ``(fy, fx)`` in cycles/pixel."""
    h, w = grey.shape
    centred = grey - grey.mean()
    if window:
        hann_y = torch.hann_window(h, periodic=False, dtype=grey.dtype)
        hann_x = torch.hann_window(w, periodic=False, dtype=grey.dtype)
        centred = centred * hann_y[:, None] * hann_x[None, :]
    power = torch.fft.fft2(centred).abs() ** 2
    fy = torch.fft.fftfreq(h, dtype=grey.dtype)[:, None].expand(h, w)
    fx = torch.fft.fftfreq(w, dtype=grey.dtype)[None, :].expand(h, w)
    return power, fy, fx


def _share(part: Tensor, total: Tensor) -> float:
    """``part / total`` as a float, 0 when there is no power at all."""
    return float(part / total) if total > 0 else 0.0


def high_frequency_share(img: Tensor) -> float:
    """Share of spectral power above 1/3 cycle/pixel (radial) of the mean-removed grey image.

    Hann-windowed so image borders do not leak power. 0 for a constant image, near 1 for a
    1-pixel checkerboard; natural images of the shapes dataset sit around 0.005.
    """
    power, fy, fx = _spectrum(_grey(_check(img)))
    radius = torch.sqrt(fy**2 + fx**2)
    return _share(power[radius > 1 / 3].sum(), power.sum())


def orientation_shares(img: Tensor) -> dict[int, float]:
    """Share of mid-band spectral power per stripe orientation bin (0, 45, 90, 135 degrees).

    A frequency ``(fx, fy)`` belongs to stripes running at ``atan2(fx, fy) mod 180`` degrees
    (x right, y down, angle counter-clockwise as displayed); bins are 45 degrees wide.
    """
    power, fy, fx = _spectrum(_grey(_check(img)))
    radius = torch.sqrt(fy**2 + fx**2)
    band = (radius >= BAND[0]) & (radius <= BAND[1])
    angle = torch.rad2deg(torch.atan2(fx, fy)) % 180.0
    bins = torch.round(angle / 45.0).long() % 4
    total = power[band].sum()
    return {o: _share(power[band & (bins == i)].sum(), total) for i, o in enumerate(ORIENTATIONS)}


def colour_dominance(img: Tensor) -> dict[str, float]:
    """Share of pixels whose blurred colour has one channel above both others by the margin."""
    blurred = F.avg_pool2d(
        _check(img).float()[None], 5, stride=1, padding=2, count_include_pad=False
    )[0]
    shares: dict[str, float] = {}
    for c, name in enumerate(("red", "green", "blue")):
        others = torch.cat([blurred[:c], blurred[c + 1 :]]).amax(0)
        shares[name] = float((blurred[c] - others > DOMINANCE_MARGIN).double().mean())
    return shares


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, 1, H, W]`` (valid region only, no padding artefacts)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return F.conv2d(x, kernel.view(1, 1, 1, -1))


def structure_coherence(img: Tensor) -> tuple[float, float]:
    """``(coherence, consistency)`` of the structure tensor at scale `TENSOR_SIGMA`.

    With ``v = (Jxx - Jyy, 2 Jxy)`` the doubled-angle orientation vector (length
    ``l1 - l2``) and ``E = Jxx + Jyy``: coherence ``= sum |v| / sum E`` and consistency
    ``= |sum v| / sum |v|``. Stripes give (high, ~1), rings (high, lower), checks and dots low
    coherence.
    """
    grey = _gaussian_blur(_grey(_check(img))[None, None], 1.0)
    gy = (grey[..., 2:, 1:-1] - grey[..., :-2, 1:-1]) / 2
    gx = (grey[..., 1:-1, 2:] - grey[..., 1:-1, :-2]) / 2
    jxx = _gaussian_blur(gx * gx, TENSOR_SIGMA)
    jyy = _gaussian_blur(gy * gy, TENSOR_SIGMA)
    jxy = _gaussian_blur(gx * gy, TENSOR_SIGMA)
    vx, vy = jxx - jyy, 2 * jxy
    length = torch.sqrt(vx**2 + vy**2)
    coherence = _share(length.sum(), (jxx + jyy).sum())
    consistency = _share(torch.hypot(vx.sum(), vy.sum()), length.sum())
    return coherence, consistency


def signature(img: Tensor) -> dict[str, float]:
    """All signature statistics of a ``[3, H, W]`` image in [0, 1], by name.

    Keys: ``red``/``green``/``blue`` (dominance shares), ``orient_0``..``orient_135``
    (mid-band spectral shares), ``axes`` (0 + 90), ``diagonals`` (45 + 135), ``coherence``,
    ``consistency`` and ``high_frequency``.
    """
    stats: dict[str, float] = dict(colour_dominance(img))
    shares = orientation_shares(img)
    stats.update({f"orient_{o}": s for o, s in shares.items()})
    stats["axes"] = shares[0] + shares[90]
    stats["diagonals"] = shares[45] + shares[135]
    stats["coherence"], stats["consistency"] = structure_coherence(img)
    stats["high_frequency"] = high_frequency_share(img)
    return stats


def _colour_class(stats: dict[str, float]) -> str | None:
    """The dominating colour if one channel dominates >= `COLOUR_SHARE` and twice any other."""
    ranked = sorted(("red", "green", "blue"), key=lambda c: stats[c], reverse=True)
    top, second = stats[ranked[0]], stats[ranked[1]]
    return ranked[0] if top >= COLOUR_SHARE and top >= 2 * second else None


def classify(stats: dict[str, float]) -> str:
    """Class name decided from a `signature`: colour first, then orientation, then spectrum."""
    colour = _colour_class(stats)
    if colour is not None:
        return colour
    if stats["coherence"] >= COHERENCE_MIN:
        if stats["consistency"] >= CONSISTENCY_MIN:
            best = max(ORIENTATIONS, key=lambda o: stats[f"orient_{o}"])
            return f"stripes_{best}"
        return "curves"
    return "checkerboard" if stats["diagonals"] > stats["axes"] else "dots"


def recover_class(img: Tensor) -> str:
    """The class a ``[3, H, W]`` image in [0, 1] shows, judged from its signature alone."""
    return classify(signature(img))
