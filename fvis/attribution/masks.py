"""Feature masks: which pixels perturbation methods switch on and off together.

A mask is [1, 1, H, W] of integer feature ids 0..n-1, shared by every input and channel.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fvis.attribution.inputs import looked_up, read_file
from fvis.config.attribution import GridMask, ImageMask, Mask
from fvis.errors import SpecError, YamlPath
from fvis.io import resolve


def feature_mask(spec: Mask, size: tuple[int, int], base: Path, loc: YamlPath) -> torch.Tensor:
    """The mask a spec means at this image size."""
    if isinstance(spec, GridMask):
        return grid_mask(spec.size, size)
    if isinstance(spec, ImageMask):
        return image_mask(resolve(base, spec.path), size, loc)
    raise AssertionError(f"unhandled mask {spec!r}")


def grid_mask(cell: int, size: tuple[int, int]) -> torch.Tensor:
    """Square superpixels: feature id = row of the cell * cells per row + column of the cell."""
    h, w = size
    rows = torch.arange(h) // cell
    cols = torch.arange(w) // cell
    per_row = -(-w // cell)
    return (rows[:, None] * per_row + cols[None, :])[None, None]


def image_mask(path: Path, size: tuple[int, int], loc: YamlPath) -> torch.Tensor:
    """Every distinct colour of a mask image is one feature; resized with nearest sampling."""
    where = (*loc, "path")
    if not looked_up(path, Path.is_file, where):
        raise SpecError(where, f"no such file: {path}")
    image = read_file(path, 3, where)
    image = F.interpolate(image, size=size, mode="nearest")
    colours = (image[0] * 255).round().long()
    code = (colours[0] * 256 + colours[1]) * 256 + colours[2]
    _, ids = torch.unique(code, return_inverse=True)
    return ids[None, None]
