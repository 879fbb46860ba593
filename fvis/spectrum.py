"""Fourier spectra of image folders: MACO's magnitude templates (`fvis spectrum`).

A spectrum file holds the mean cross-power R_ab(k) = Re E[X_a(k) conj(X_b(k))] of the images'
mean-removed colour channels (orthonormal real FFT, [C, C, S, S//2+1]). The cross terms matter:
a parameterization in a decorrelated colour space y = A x needs the power of each y channel,
E|Y_i|^2 = sum_ab A_ia A_ib R_ab, which the per-channel powers alone do not give.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import Tensor

from fvis.io import IMAGE_SUFFIXES, image_files, read_image, tensors_bytes, write_atomic

FORMAT = "fvis-spectrum-1"


def cross_power(images: Tensor) -> Tensor:
    """Mean cross-power Re E[X_a conj(X_b)] [C, C, H, W//2+1] of images [N, C, H, W]."""
    x = images - images.mean((2, 3), keepdim=True)
    spectra = torch.fft.rfft2(x, norm="ortho")
    return torch.einsum("nahw,nbhw->abhw", spectra, spectra.conj()).real / len(images)


def folder_spectrum(folder: Path, size: int) -> tuple[Tensor, int]:
    """The mean cross-power of every image in a folder, and how many there were; each image is
    read as RGB, its shorter side resized to `size` px (bicubic), its centre cropped square."""
    files = image_files(folder)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    total = torch.zeros(3, 3, size, size // 2 + 1)
    for path in files:
        square = read_image(
            path, "RGB", (size, size), fit="crop", resample=Image.Resampling.BICUBIC
        )
        total += cross_power(square[None])
    return total / len(files), len(files)


def save_spectrum(path: Path, power: Tensor, count: int) -> None:
    """Write a spectrum file (.safetensors with its size and image count as metadata)."""
    meta = {"format": FORMAT, "size": str(power.shape[-2]), "images": str(count)}
    write_atomic(path, tensors_bytes({"cross_power": power.contiguous()}, meta))


def load_spectrum(path: Path) -> Tensor:
    """The cross-power [C, C, S, S//2+1] of a spectrum file."""
    if not path.is_file():
        raise ValueError(f"{path}: no such spectrum file (make one with `fvis spectrum FOLDER`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != FORMAT:
                raise ValueError(f"{path}: not a spectrum file written by `fvis spectrum`")
            return f.get_tensor("cross_power").float()
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None


def resample(half: Tensor, size: tuple[int, int], source: tuple[int, int]) -> Tensor:
    """A half spectrum [..., H0, W0//2+1] of images of size `source`, sampled at the frequencies
    of `size` (bilinear in cycles per pixel; with the orthonormal FFT the power of a coefficient
    does not depend on the image size)."""
    if tuple(size) == tuple(source):
        return half
    h0, w0 = source
    lead = half.shape[:-2]
    centred = torch.fft.fftshift(half.reshape(-1, 1, *half.shape[-2:]), dim=-2)
    h, w = size
    # source pixel positions of the target frequencies, in grid_sample's [-1, 1] coordinates
    rows = (torch.fft.fftfreq(h) * h0 + h0 // 2) / max(h0 - 1, 1) * 2 - 1
    cols = torch.fft.rfftfreq(w) * w0 / max(w0 // 2, 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), -1)[None]
    grid = grid.expand(centred.shape[0], -1, -1, -1).to(half)
    out = F.grid_sample(centred, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(*lead, h, w // 2 + 1)


def basis_magnitude(
    path: Path, size: tuple[int, int], channels: int, color: Tensor | None
) -> Tensor:
    """Per-channel magnitude sqrt(E|Y_i|^2) [C, H, W//2+1] of a spectrum file in the basis
    space y = A x: A = color^-1 (decorrelated), the identity, or the channel mean (grey)."""
    power = load_spectrum(path)
    c = power.shape[0]
    if color is not None:
        a = torch.linalg.inv(color.float())
    elif channels == c:
        a = torch.eye(c)
    elif channels == 1:
        a = torch.full((1, c), 1.0 / c)
    else:
        raise ValueError(f"{path}: a {c}-channel spectrum cannot serve a {channels}-channel image")
    if a.shape[1] != c:
        raise ValueError(f"{path}: a {c}-channel spectrum cannot serve a {channels}-channel image")
    basis = torch.einsum("ia,ib,abhw->ihw", a, a, power).clamp(min=0)
    side = power.shape[-2]
    return resample(basis, size, (side, side)).clamp(min=0).sqrt()
