"""Files a run writes for its image parameterization: transparency maps and CPPN weights.

`transparency_<i>.png` (with `output.transparency`) shows each final image with an opacity map
from the absolute image gradients accumulated over the optimization, as MACO (Fel et al. 2023)
does: the pixels the objective leaned on most are opaque, the rest fade out.
`cppn.safetensors` (kind `cppn`) holds each item's CPPN weights: `fvis cppn` renders them at any
size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fvis.errors import UserError
from fvis.io import png_bytes, tensors_bytes, to_pil, write_atomic
from fvis.params import CPPNImage, ImageParam, load_cppn

OPACITY_QUANTILE = 0.99
"""The accumulated gradient at this quantile (per image) and above is fully opaque."""


def opacity(importance: torch.Tensor) -> torch.Tensor:
    """An accumulated |gradient| map [H, W] scaled into [0, 1] by its 99th percentile."""
    top = torch.quantile(importance.flatten().float(), OPACITY_QUANTILE)
    if top <= 0:
        return torch.zeros_like(importance)
    return (importance / top).clamp(0.0, 1.0)


def param_files(param: ImageParam, images: torch.Tensor) -> dict[str, bytes]:
    """The extra files of a run, by name: transparency maps of the final `images` (when the
    parameterization tracks its gradients' importance: output.transparency), CPPN weights."""
    files: dict[str, bytes] = {}
    importance = getattr(param, "importance", None)
    if importance is not None:
        c = param.channels
        for b in range(images.shape[0]):
            a = opacity(importance[b].detach().cpu())
            if param.alpha:
                a = a * images[b, c]
            tile = torch.cat([images[b, :c], a[None]])
            files[f"transparency_{b}.png"] = png_bytes(to_pil(tile, alpha=True))
    if isinstance(param, CPPNImage):
        tensors, meta = param.save()
        files["cppn.safetensors"] = tensors_bytes(tensors, meta)
    return files


def render_cppn(path: Path, size: tuple[int, int], out_dir: Path) -> list[Path]:
    """Render a run's cppn.safetensors at `size` into out_dir/image_<i>.png; returns the paths."""
    param = load_cppn(path, size)
    images = param.render_at(size)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot make the output folder ({exc.strerror})") from None
    paths = []
    for b, image in enumerate(images):
        target = out_dir / f"image_{b}.png"
        write_atomic(target, png_bytes(to_pil(image, param.alpha)))
        paths.append(target)
    return paths
