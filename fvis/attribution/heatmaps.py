"""Heatmaps over the inputs: colour scales, overlays and the labelled grid of a run.

Scale: each method's maps share one scale s = the 99th percentile of |m| over every pixel of
every input (so rows compare, and a few extreme pixels do not wash the rest out); values beyond
s are clipped. Signed maps use a diverging map symmetric about 0 (blue -s, white 0, red +s);
absolute maps show |m| on a sequential map (dark purple 0, red, yellow s). The colour is
blended over a low-contrast grey copy of the input with opacity 0.9 * min(|m| / s, 1), so
pixels without attribution show the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

from fvis.io import to_pil

PERCENTILE = 99.0
OPACITY = 0.9
DIVERGING = ((0.17, 0.35, 0.80), (1.0, 1.0, 1.0), (0.84, 0.15, 0.12))
SEQUENTIAL = ((0.12, 0.03, 0.28), (0.85, 0.22, 0.18), (1.0, 0.92, 0.35))
HEADER, FOOTER, LABEL_WIDTH, PAD = 30, 30, 72, 2
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class Scale:
    """A method's colour scale: signed (-s..s) or absolute (0..s)."""

    signed: bool
    value: float

    def label(self) -> str:
        return f"±{self.value:.2g}" if self.signed else f"0..{self.value:.2g}"


def scale_of(maps: torch.Tensor, display: str) -> Scale:
    """The shared scale of a method's maps [B, H, W]; `display` auto: signed if any m < 0."""
    signed = bool((maps < 0).any()) if display == "auto" else display == "signed"
    magnitudes = maps.detach().abs().flatten().float()
    k = max(1, math.ceil(PERCENTILE / 100 * magnitudes.numel()))
    value = float(magnitudes.kthvalue(k).values)
    return Scale(signed, value if value > 0 else 1.0)


def colour(t: torch.Tensor, anchors: Sequence[tuple[float, float, float]]) -> torch.Tensor:
    """[H, W] in [0, 1] -> [3, H, W]: piecewise-linear between evenly spaced anchor colours."""
    stops = torch.tensor(anchors).T  # [3, n]
    position = t.clamp(0, 1) * (stops.shape[1] - 1)
    low = position.floor().long().clamp(max=stops.shape[1] - 2)
    frac = position - low
    return stops[:, low] * (1 - frac) + stops[:, low + 1] * frac


def overlay(image: torch.Tensor, m: torch.Tensor, scale: Scale) -> torch.Tensor:
    """[3, H, W]: the map's colours blended over a grey copy of the image [C, H, W]."""
    grey = (
        image.mean(0)
        if image.shape[0] != 3
        else (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])
    )
    base = (0.3 + 0.4 * grey).expand(3, -1, -1)
    t = (m / scale.value).clamp(-1, 1)
    tint = colour((t + 1) / 2, DIVERGING) if scale.signed else colour(t.abs(), SEQUENTIAL)
    alpha = OPACITY * t.abs()
    return (1 - alpha) * base + alpha * tint


def ramp(scale: Scale, width: int, height: int) -> torch.Tensor:
    """[3, height, width]: the colour bar of a scale, from -s (or 0) on the left to s."""
    t = torch.linspace(0, 1, width).expand(height, width)
    return colour(t, DIVERGING) if scale.signed else colour(t, SEQUENTIAL)


def grid_image(
    images: torch.Tensor,
    row_labels: Sequence[tuple[str, str]],
    columns: Sequence[tuple[str, torch.Tensor | None, Scale | None]],
    cell: int,
) -> Image.Image:
    """Rows = inputs; columns = the input, then (name, maps [B, H, W], scale) per method.

    Each header gives the method and its scale; a colour bar under each column shows it.
    """
    h, w = images.shape[-2:]
    k = max(1, -(-cell // max(h, w)))
    ch, cw = h * k, w * k
    n_cols = 1 + len(columns)
    sheet = Image.new(
        "RGB",
        (LABEL_WIDTH + n_cols * (cw + PAD), HEADER + len(images) * (ch + PAD) + FOOTER),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()

    def x_of(col: int) -> int:
        return LABEL_WIDTH + col * (cw + PAD)

    def paste(tile: torch.Tensor, col: int, row: int) -> None:
        picture = to_pil(tile).convert("RGB").resize((cw, ch), Image.Resampling.NEAREST)
        sheet.paste(picture, (x_of(col), HEADER + row * (ch + PAD)))

    def text(xy: tuple[int, int], value: str, width: int) -> None:
        while value and draw.textlength(value, font=font) > width - 2:
            value = value[:-1]
        draw.text(xy, value, fill=INK, font=font)

    text((x_of(0) + 2, 2), "input", cw)
    for col, (name, _, scale) in enumerate(columns, start=1):
        text((x_of(col) + 2, 2), name, cw)
        text((x_of(col) + 2, 15), scale.label() if scale else "(no map)", cw)
    for row, image in enumerate(images):
        y = HEADER + row * (ch + PAD)
        text((2, y + ch // 2 - 12), row_labels[row][0], LABEL_WIDTH)
        text((2, y + ch // 2 + 2), row_labels[row][1], LABEL_WIDTH)
        paste(image, 0, row)
        for col, (_, maps, scale) in enumerate(columns, start=1):
            if maps is None or scale is None:
                paste(overlay(image, torch.zeros(h, w), Scale(True, 1.0)), col, row)
            else:
                paste(overlay(image, maps[row], scale), col, row)
    y = HEADER + len(images) * (ch + PAD) + 4
    for col, (_, _, scale) in enumerate(columns, start=1):
        if scale is None:
            continue
        bar = to_pil(ramp(scale, cw, 10))
        sheet.paste(bar, (x_of(col), y))
        low = f"-{scale.value:.2g}" if scale.signed else "0"
        draw.text((x_of(col), y + 12), low, fill=INK, font=font)
        high = f"{scale.value:.2g}"
        draw.text(
            (x_of(col) + cw - draw.textlength(high, font=font), y + 12), high, fill=INK, font=font
        )
    return sheet
