"""Procedural dataset of 64x64 RGB images in ten classes, generated from a seed.

Each class has one *signature* (an orientation, a spectral layout, a curvature or a colour) and
every other property is random nuisance: phase, position, scale, grey level, contrast, shading,
waveform sharpness and additive noise. A network trained on it must therefore learn the
signature, which makes its feature visualizations checkable (see `fvis.zoo.quality`).

Geometry conventions: images are ``[3, H, W]``, ``x`` grows to the right (columns), ``y`` grows
downwards (rows). A stripe angle ``theta`` is the direction the stripes *run*, measured
counter-clockwise from the x axis as the image is displayed, so

* ``stripes_0``: horizontal stripes (intensity varies along y),
* ``stripes_45``: stripes running from bottom-left to top-right ("/"),
* ``stripes_90``: vertical stripes (intensity varies along x),
* ``stripes_135``: stripes running from top-left to bottom-right ("\\").

Texture classes (0-6) use grey or low-saturation colours (each channel within a few percent of
the others), so a dominant colour channel is the signature of the colour classes (7-9) only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

CLASSES: tuple[str, ...] = (
    "stripes_0",
    "stripes_45",
    "stripes_90",
    "stripes_135",
    "checkerboard",
    "curves",
    "dots",
    "red",
    "green",
    "blue",
)
SIZE = 64
TINT = 0.04
"""Largest per-channel offset of texture colours from grey: keeps texture classes colourless."""

Generator = torch.Generator


def _uniform(g: Generator, n: int, low: float, high: float) -> Tensor:
    """Per-image uniform samples in ``[low, high)``, shaped ``[n, 1, 1]`` to broadcast on maps."""
    return low + (high - low) * torch.rand(n, 1, 1, generator=g)


def _grid(size: int = SIZE) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``(y, x)``, each ``[1, size, size]``."""
    axis = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return y[None], x[None]


def _rotated_grid(g: Generator, n: int, jitter_deg: float) -> tuple[Tensor, Tensor]:
    """Coordinates rotated about the image centre by a random angle within ``+-jitter_deg``."""
    y, x = _grid()
    angle = torch.deg2rad(_uniform(g, n, -jitter_deg, jitter_deg))
    cy = cx = (SIZE - 1) / 2
    c, s = torch.cos(angle), torch.sin(angle)
    xr = c * (x - cx) - s * (y - cy) + cx
    yr = s * (x - cx) + c * (y - cy) + cy
    return yr, xr


def _wave(g: Generator, t: Tensor) -> Tensor:
    """Periodic profile in [0, 1] of phase ``t`` (cycles): a sinusoid sharpened towards a square.

    ``w(t) = 1/2 + 1/2 * tanh(k cos 2 pi t) / tanh(k)`` with a random sharpness ``k`` per image:
    ``k -> 0`` gives a sinusoid, large ``k`` a square wave.
    """
    k = _uniform(g, t.shape[0], 0.3, 4.0)
    return 0.5 + 0.5 * torch.tanh(k * torch.cos(2 * math.pi * t)) / torch.tanh(k)


def _signed_wave(g: Generator, t: Tensor) -> Tensor:
    """The profile of `_wave` mapped to [-1, 1]."""
    return 2 * _wave(g, t) - 1


def _stripes(theta_deg: float) -> Callable[[Generator, int], Tensor]:
    """Pattern maker for gratings running at ``theta_deg`` (+-6 degrees), period 5-12 px.

    The phase is ``t = (x sin(theta) + y cos(theta)) / period + phi``: constant along the
    direction ``(cos(theta), -sin(theta))`` in (x, y-down) pixel coordinates.
    """

    def make(g: Generator, n: int) -> Tensor:
        y, x = _grid()
        theta = torch.deg2rad(theta_deg + _uniform(g, n, -6.0, 6.0))
        period = _uniform(g, n, 5.0, 12.0)
        phase = _uniform(g, n, 0.0, 1.0)
        t = (x * torch.sin(theta) + y * torch.cos(theta)) / period + phase
        return _wave(g, t)

    return make


def _checkerboard(g: Generator, n: int) -> Tensor:
    """Axis-aligned checks, cell 3-8 px: a product of x and y square-ish waves.

    ``cos(a x) cos(a y)`` has all its energy at the diagonal frequencies ``(+-a, +-a)``.
    """
    y, x = _rotated_grid(g, n, 4.0)
    cell = _uniform(g, n, 3.0, 8.0)
    tx = x / (2 * cell) + _uniform(g, n, 0.0, 1.0)
    ty = y / (2 * cell) + _uniform(g, n, 0.0, 1.0)
    return 0.5 + 0.5 * _signed_wave(g, tx) * _signed_wave(g, ty)


def _curves(g: Generator, n: int) -> Tensor:
    """Concentric rings (arcs when the centre is off-image), radial period 5-12 px.

    The centre is uniform in ``[-4, 68]^2``, up to 4 px outside the image, so the class is
    "curved contours" with no fixed centre: the network must learn curvature, not a position.
    """
    y, x = _grid()
    cx = _uniform(g, n, -4.0, SIZE + 4.0)
    cy = _uniform(g, n, -4.0, SIZE + 4.0)
    spacing = _uniform(g, n, 5.0, 12.0)
    radius = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return _wave(g, radius / spacing + _uniform(g, n, 0.0, 1.0))


def _dots(g: Generator, n: int) -> Tensor:
    """Axis-aligned square lattice of round dots: spacing 6-12 px, radius 20-38% of spacing.

    A lattice of spacing ``s`` has its strongest spectral peaks at ``(+-1/s, 0)`` and
    ``(0, +-1/s)``, i.e. on the axes.
    """
    y, x = _rotated_grid(g, n, 4.0)
    spacing = _uniform(g, n, 6.0, 12.0)
    radius = spacing * _uniform(g, n, 0.2, 0.38)
    dx = (torch.remainder(x / spacing + _uniform(g, n, 0.0, 1.0), 1.0) - 0.5) * spacing
    dy = (torch.remainder(y / spacing + _uniform(g, n, 0.0, 1.0), 1.0) - 0.5) * spacing
    dist = torch.sqrt(dx**2 + dy**2)
    return torch.sigmoid((radius - dist) / _uniform(g, n, 0.3, 1.0))


def _smooth_noise(g: Generator, n: int, cells: int = 8) -> Tensor:
    """Low-frequency noise ``[n, H, W]`` of unit-ish amplitude: a ``cells^2`` grid upsampled."""
    coarse = torch.randn(n, 1, cells, cells, generator=g)
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[:, 0]


def _grey_colours(g: Generator, n: int) -> tuple[Tensor, Tensor]:
    """Two low-saturation colours ``[n, 3, 1, 1]``: grey levels with contrast 0.3-0.9 and a tint.

    Dark and light are swapped at random so dots and rings can be dark-on-light or the reverse.
    """
    dark = _uniform(g, n, 0.03, 0.45)
    light = torch.clamp(dark + _uniform(g, n, 0.3, 0.9), max=0.97)
    swap = torch.rand(n, 1, 1, generator=g) < 0.5
    low, high = torch.where(swap, light, dark), torch.where(swap, dark, light)
    tint_low = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * TINT
    tint_high = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * TINT
    return low[:, None] + tint_low, high[:, None] + tint_high


def _finish(g: Generator, img: Tensor) -> Tensor:
    """Add smooth shading and Gaussian pixel noise (sigma 0-0.04), then clip to [0, 1]."""
    n = img.shape[0]
    shading = _smooth_noise(g, n, 4)[:, None] * _uniform(g, n, 0.0, 0.06)[:, None]
    noise = torch.randn(img.shape, generator=g) * _uniform(g, n, 0.0, 0.04)[:, None]
    return torch.clamp(img + shading + noise, 0.0, 1.0)


def _texture(pattern: Callable[[Generator, int], Tensor]) -> Callable[[Generator, int], Tensor]:
    """Image maker that paints a ``[n, H, W]`` pattern in [0, 1] with two greyish colours."""

    def make(g: Generator, n: int) -> Tensor:
        p = pattern(g, n)[:, None]
        low, high = _grey_colours(g, n)
        return _finish(g, low + (high - low) * p)

    return make


def _blob_mask(g: Generator, n: int, max_blobs: int = 3) -> Tensor:
    """Union ``[n, H, W]`` of 1 to ``max_blobs`` soft ellipses, radius 9-18 px, inside the image."""
    y, x = _grid()
    y, x = y[:, None], x[:, None]
    shape = (n, max_blobs, 1, 1)

    def u(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=g)

    cx, cy = u(10.0, SIZE - 10.0), u(10.0, SIZE - 10.0)
    radius, aspect, soft = u(9.0, 18.0), u(0.7, 1.4), u(0.5, 3.0)
    dist = torch.sqrt(((x - cx) / aspect) ** 2 + ((y - cy) * aspect) ** 2)
    masks = torch.sigmoid((radius - dist) / soft)
    count = torch.randint(1, max_blobs + 1, (n, 1, 1, 1), generator=g)
    active = torch.arange(max_blobs).view(1, -1, 1, 1) < count
    return (masks * active).amax(dim=1)


def _colour(channel: int) -> Callable[[Generator, int], Tensor]:
    """Image maker for blobs whose ``channel`` exceeds the other two by >= 0.3.

    The blob colour has the dominant channel at 0.6-1.0 and the others at 0-45% of it; the
    background is a grey, low-saturation smooth texture like those of the texture classes.
    """

    def make(g: Generator, n: int) -> Tensor:
        grey = _uniform(g, n, 0.2, 0.75)[:, None]
        texture = _smooth_noise(g, n)[:, None] * _uniform(g, n, 0.03, 0.15)[:, None]
        tint = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * TINT
        background = grey + texture + tint
        level = _uniform(g, n, 0.6, 1.0)[:, None]
        colour = level * torch.rand(n, 3, 1, 1, generator=g) * 0.45
        colour[:, channel] = level[:, 0]
        mask = _blob_mask(g, n)[:, None]
        return _finish(g, background * (1 - mask) + colour * mask)

    return make


_MAKERS: tuple[Callable[[Generator, int], Tensor], ...] = (
    _texture(_stripes(0.0)),
    _texture(_stripes(45.0)),
    _texture(_stripes(90.0)),
    _texture(_stripes(135.0)),
    _texture(_checkerboard),
    _texture(_curves),
    _texture(_dots),
    _colour(0),
    _colour(1),
    _colour(2),
)


def generate_class(cls: int, n: int, generator: Generator) -> Tensor:
    """``n`` images ``[n, 3, 64, 64]`` float32 in [0, 1] of class index ``cls``.

    Draws all randomness from ``generator`` (a CPU `torch.Generator`), so the output is a pure
    function of the generator state.
    """
    if not 0 <= cls < len(CLASSES):
        raise ValueError(f"class index {cls} out of range 0..{len(CLASSES) - 1}")
    if n == 0:
        return torch.empty(0, 3, SIZE, SIZE)
    return _MAKERS[cls](generator, n).float().contiguous()


def sample(n: int, generator: Generator) -> tuple[Tensor, Tensor]:
    """A class-balanced, shuffled batch drawn from ``generator``: ``(images, labels)``.

    Labels are ``arange(n) % 10`` shuffled, so every class gets ``n // 10`` or one more image.
    """
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=generator)]
    images = torch.empty(n, 3, SIZE, SIZE)
    for cls in range(len(CLASSES)):
        index = torch.nonzero(labels == cls).flatten()
        images[index] = generate_class(cls, index.numel(), generator)
    return images, labels


def generate(n: int, seed: int, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """``n`` images ``[n, 3, 64, 64]`` in [0, 1] and int64 labels ``[n]``; same seed, same data.

    Generation always runs on the CPU, so the data do not depend on ``device``; the result is
    then moved there.
    """
    generator = torch.Generator().manual_seed(seed)
    images, labels = sample(n, generator)
    return images.to(device), labels.to(device)


MAX_IMAGES = 10_000_000
_SPREAD = 10_000_019  # a prime above MAX_IMAGES


def _stream(seed: int, offset: int) -> int:
    """A generator seed for one draw of dataset `seed`: torch's CPU generator keeps 32 bits of
    its seed, so the draws of one dataset (images at offsets below MAX_IMAGES, label blocks at
    2**31 and above) are given distinct 32-bit seeds, and datasets of nearby seeds disjoint
    ranges of them."""
    return (seed * _SPREAD + offset) % (1 << 32)


def label(seed: int, index: int) -> int:
    """The class of image ``index`` of the dataset drawn from ``seed`` (see `image`)."""
    block = torch.Generator().manual_seed(_stream(seed, (1 << 31) + index // len(CLASSES)))
    return int(torch.randperm(len(CLASSES), generator=block)[index % len(CLASSES)])


def image(seed: int, index: int) -> Tensor:
    """Image ``index`` of the dataset drawn from ``seed``: ``[3, 64, 64]`` in [0, 1].

    A pure function of ``(seed, index)`` (each image has its own generator), so a dataset of any
    size can be read in any order, by several workers, and resumed anywhere. Its class is
    `label(seed, index)`: the classes run through a shuffled permutation every ten images, so
    every block of ten holds each class once. ``index`` must be below `MAX_IMAGES`.
    """
    own = torch.Generator().manual_seed(_stream(seed, index))
    return generate_class(label(seed, index), 1, own)[0]
