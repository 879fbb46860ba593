"""Network-free class recovery for shapes images: hand-made signature statistics and rules.

Used to check that a feature visualization of a class logit really shows that class's
signature. Three families of statistics, all on a ``[3, H, W]`` image in [0, 1]:

* colour: share of pixels (after a `COLOUR_BLUR`-px box blur, which keeps uniform regions and
  averages away fine multicoloured texture) where one channel exceeds both others by
  `DOMINANCE_MARGIN`, per channel;
* spectrum: share of the mid-band power (`BAND`, radial frequency in cycles/pixel) of the
  mean-removed, Hann-windowed greyscale image in each of four orientation bins, named by the
  direction the *stripes* run (0 = horizontal, 90 = vertical; see `fvis.zoo.data`);
* structure tensor ``J = G_rho * (grad I grad I^T)``: ``coherence`` (energy-weighted mean of
  ``(l1 - l2) / (l1 + l2)``: is the image locally oriented?) and ``consistency`` (length of the
  summed doubled-angle orientation vectors over their summed lengths: is it the *same*
  orientation everywhere?).

The rules (`classify`) decide colour first, then texture:

1. one channel dominates a large enough region -> red / green / blue;
2. flat (no contrast) or dominated by pixel noise (high-frequency share) -> `UNKNOWN`;
3. locally oriented: the same orientation everywhere and one dominant spectral orientation ->
   stripes at that orientation, otherwise -> curves;
4. not oriented: spectrum mostly on the diagonals -> checkerboard, mostly on the axes -> dots,
   neither (isotropic: short arcs of every orientation) -> curves.

Smooth random noise has curved level lines and is recovered as curves; white noise is not.

Thresholds leave a wide margin on generated images (>= 98% recovered per class) and were
checked on rough feature visualizations of the shipped model, which are multicoloured, noisy
and less regular than the data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ORIENTATIONS: tuple[int, ...] = (0, 45, 90, 135)
UNKNOWN = "unknown"
"""What `recover_class` returns for an image with no class signature (flat or noise)."""
FLAT_STD = 0.02
"""Greyscale standard deviation below which an image is flat (texture data: >= 0.06)."""
NOISE_SHARE = 0.5
"""High-frequency share above which an image is mostly pixel noise (texture data: <= 0.15)."""
DOMINANCE_MARGIN = 0.15
"""A pixel is dominated by a channel that exceeds both others by this much (blurred image)."""
COLOUR_BLUR = 13
"""Box-blur size (px) before the colour test: colour classes are regions, not fine texture."""
COLOUR_SHARE = 0.04
"""Minimum share of dominated pixels for a colour class (a 9 px blob covers 6% of 64^2)."""
BAND = (0.04, 0.4)
"""Mid-frequency band (cycles/pixel) for orientation shares: periods of 2.5 to 25 px."""
COHERENCE_MIN = 0.3
"""Oriented images (stripes, rings: ~0.7-1) versus lattices (checks, dots: < 0.1)."""
CONSISTENCY_MIN = 0.96
"""Straight stripes (>= 0.99) versus rings and arcs (< 0.95 with centres up to 4 px off-image)."""
STRIPES_SHARE = 0.6
"""Minimum mid-band power share of the dominant orientation bin for stripes (data: >= 0.97)."""
DIAGONAL_SHARE = 0.7
"""Minimum diagonal power share for a checkerboard (data: >= 0.87)."""
AXIS_SHARE = 0.55
"""Minimum axis power share for dots (data: >= 0.61; small dots leak onto the diagonals)."""
TENSOR_SIGMA = 4.0
"""Integration scale (px) of the structure tensor: above a checker cell, so checks and dots
average to no orientation while stripes and rings stay oriented."""


MIN_SIZE = 32
"""Smallest image side the statistics are defined for (the structure tensor needs a margin)."""


def _check(img: Tensor) -> Tensor:
    """``img`` detached on the CPU as float32, or `ValueError` if not ``[3, H, W]``, H, W >= 32."""
    if img.dim() != 3 or img.shape[0] != 3 or min(img.shape[1:]) < MIN_SIZE:
        raise ValueError(
            f"expected an image [3, H, W] with H, W >= {MIN_SIZE}, got shape {tuple(img.shape)}"
        )
    return img.detach().cpu().float()


def _grey(img: Tensor) -> Tensor:
    """Channel mean ``[H, W]`` of a ``[3, H, W]`` image."""
    return img.mean(0)


FLAT_EPS = 1e-6
"""Largest deviation from the mean (about float32 rounding) under which an image has no power."""


class _Spectrum:
    """Power ``|FFT(w (I - mean I))|^2`` of a grey image, ``w`` a 2D Hann window, with its
    radial frequency and stripe orientation (degrees, see `orientation_shares`) per bin."""

    def __init__(self, grey: Tensor) -> None:
        h, w = grey.shape
        window = torch.outer(
            torch.hann_window(h, periodic=False), torch.hann_window(w, periodic=False)
        )
        centred = grey - grey.mean()
        if float(centred.abs().max()) < FLAT_EPS:
            centred = torch.zeros_like(centred)
        self.power = torch.fft.fft2(centred * window).abs().double() ** 2
        fy = torch.fft.fftfreq(h)[:, None].expand(h, w)
        fx = torch.fft.fftfreq(w)[None, :].expand(h, w)
        self.radius = torch.sqrt(fy**2 + fx**2)
        self.angle = torch.rad2deg(torch.atan2(fx, fy)) % 180.0

    def share(self, part: Tensor, within: Tensor | None = None) -> float:
        """Power in the mask ``part`` over the power in ``within`` (everything if None)."""
        total = self.power.sum() if within is None else self.power[within].sum()
        return float(self.power[part].sum() / total) if total > 0 else 0.0

    def high_frequency(self) -> float:
        """Share of power above 1/3 cycle/pixel."""
        return self.share(self.radius > 1 / 3)

    def orientations(self) -> dict[int, float]:
        """Share of mid-band power per 45-degree stripe orientation bin."""
        band = (self.radius >= BAND[0]) & (self.radius <= BAND[1])
        bins = torch.round(self.angle / 45.0).long() % len(ORIENTATIONS)
        return {o: self.share(band & (bins == i), band) for i, o in enumerate(ORIENTATIONS)}


def high_frequency_share(img: Tensor) -> float:
    """Share of spectral power above 1/3 cycle/pixel (radial) of the mean-removed grey image.

    Hann-windowed so image borders do not leak power. 0 for a constant image, near 1 for a
    1-pixel checkerboard; generated shapes images have a median of about 0.01.
    """
    return _Spectrum(_grey(_check(img))).high_frequency()


def orientation_shares(img: Tensor) -> dict[int, float]:
    """Share of mid-band spectral power per stripe orientation bin (0, 45, 90, 135 degrees).

    A frequency ``(fx, fy)`` belongs to stripes running at ``atan2(fx, fy) mod 180`` degrees
    (x right, y down, angle counter-clockwise as displayed); bins are 45 degrees wide.
    """
    return _Spectrum(_grey(_check(img))).orientations()


def _colour_dominance(img: Tensor) -> dict[str, float]:
    """`colour_dominance` of a checked image."""
    blurred = F.avg_pool2d(
        img[None], COLOUR_BLUR, stride=1, padding=COLOUR_BLUR // 2, count_include_pad=False
    )[0]
    shares: dict[str, float] = {}
    for c, name in enumerate(("red", "green", "blue")):
        others = torch.cat([blurred[:c], blurred[c + 1 :]]).amax(0)
        shares[name] = float((blurred[c] - others > DOMINANCE_MARGIN).float().mean())
    return shares


def colour_dominance(img: Tensor) -> dict[str, float]:
    """Share of pixels whose blurred colour has one channel above both others by the margin."""
    return _colour_dominance(_check(img))


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, 1, H, W]`` (valid region only, no padding artefacts)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return F.conv2d(x, kernel.view(1, 1, 1, -1))


def _structure(grey: Tensor) -> tuple[float, float]:
    """`structure_coherence` of a grey image ``[H, W]``."""
    smooth = _gaussian_blur(grey[None, None], 1.0)
    gy = (smooth[..., 2:, 1:-1] - smooth[..., :-2, 1:-1]) / 2
    gx = (smooth[..., 1:-1, 2:] - smooth[..., 1:-1, :-2]) / 2
    products = _gaussian_blur(torch.cat([gx * gx, gy * gy, gx * gy]), TENSOR_SIGMA).double()
    jxx, jyy, jxy = products[0, 0], products[1, 0], products[2, 0]
    vx, vy = jxx - jyy, 2 * jxy
    length = torch.sqrt(vx**2 + vy**2)
    energy, total_length = (jxx + jyy).sum(), length.sum()
    coherence = float(total_length / energy) if energy > 0 else 0.0
    aligned = torch.hypot(vx.sum(), vy.sum())
    consistency = float(aligned / total_length) if total_length > 0 else 0.0
    return coherence, consistency


def structure_coherence(img: Tensor) -> tuple[float, float]:
    """``(coherence, consistency)`` of the structure tensor at scale `TENSOR_SIGMA`.

    With ``v = (Jxx - Jyy, 2 Jxy)`` the doubled-angle orientation vector (length
    ``l1 - l2``) and ``E = Jxx + Jyy``: coherence ``= sum |v| / sum E`` and consistency
    ``= |sum v| / sum |v|``. Stripes give (high, ~1), rings (high, lower), checks and dots low
    coherence.
    """
    return _structure(_grey(_check(img)))


def signature(img: Tensor) -> dict[str, float]:
    """All signature statistics of a ``[3, H, W]`` image in [0, 1], by name.

    Keys: ``red``/``green``/``blue`` (dominance shares), ``contrast`` (greyscale std),
    ``orient_0``..``orient_135`` (mid-band spectral shares), ``axes`` (0 + 90), ``diagonals``
    (45 + 135), ``coherence``, ``consistency`` and ``high_frequency``.
    """
    img = _check(img)
    grey = _grey(img)
    spectrum = _Spectrum(grey)
    shares = spectrum.orientations()
    stats = _colour_dominance(img)
    stats["contrast"] = float(grey.std())
    stats.update({f"orient_{o}": s for o, s in shares.items()})
    stats["axes"] = shares[0] + shares[90]
    stats["diagonals"] = shares[45] + shares[135]
    stats["coherence"], stats["consistency"] = _structure(grey)
    stats["high_frequency"] = spectrum.high_frequency()
    return stats


def _colour_class(stats: dict[str, float]) -> str | None:
    """The dominating colour if one channel dominates >= `COLOUR_SHARE` and twice any other."""
    ranked = sorted(("red", "green", "blue"), key=lambda c: stats[c], reverse=True)
    top, second = stats[ranked[0]], stats[ranked[1]]
    return ranked[0] if top >= COLOUR_SHARE and top >= 2 * second else None


def _oriented_class(stats: dict[str, float]) -> str:
    """Straight stripes at the dominant spectral orientation, or curves."""
    best = max(ORIENTATIONS, key=lambda o: stats[f"orient_{o}"])
    straight = stats["consistency"] >= CONSISTENCY_MIN
    if straight and stats[f"orient_{best}"] >= STRIPES_SHARE:
        return f"stripes_{best}"
    return "curves"


def _lattice_class(stats: dict[str, float]) -> str:
    """Checkerboard (diagonal spectrum), dots (axis spectrum) or, if neither, curves."""
    if stats["diagonals"] >= DIAGONAL_SHARE:
        return "checkerboard"
    if stats["axes"] >= AXIS_SHARE:
        return "dots"
    return "curves"


def classify(stats: dict[str, float]) -> str:
    """Class name decided from a `signature`: colour first, then orientation, then spectrum."""
    colour = _colour_class(stats)
    if colour is not None:
        return colour
    if stats["contrast"] < FLAT_STD or stats["high_frequency"] > NOISE_SHARE:
        return UNKNOWN
    if stats["coherence"] >= COHERENCE_MIN:
        return _oriented_class(stats)
    return _lattice_class(stats)


def recover_class(img: Tensor) -> str:
    """The class a ``[3, H, W]`` image in [0, 1] shows, judged from its signature alone.

    One of `fvis.zoo.data.CLASSES`, or `UNKNOWN` for a flat or noise-dominated image.
    """
    return classify(signature(img))
