"""The cures for high-frequency noise side by side (`make parameterizations`).

Renders configs/parameterizations.yaml once per variant (every `param.kind`, and the pixel
parameterization with each frequency penalty, filter and gradient preconditioner), each in its
own process, then writes one grid (rows: variants, columns: batch items) and prints a Markdown
table of the final objective, the high-frequency power share of the images
(`fvis.zoo.quality.high_frequency_share`) and the time per step, as in
docs/parameterizations.md. Run with `python -m fvis.zoo.parameterizations [OUT_DIR] [GRID]`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from fvis.io import png_bytes, read_image, to_pil, write_atomic
from fvis.zoo.data import sample
from fvis.zoo.quality import high_frequency_share

CONFIG = Path(__file__).parents[2] / "configs" / "parameterizations.yaml"

VARIANTS: dict[str, list[str]] = {
    "pixel": ["param.kind=pixel"],
    "fft": ["param.kind=fft"],
    "laplacian": ["param.kind=laplacian"],
    "lowres": ["param.kind=lowres"],
    "cppn": ["param.kind=cppn"],
    "maco": ["param.kind=maco"],
    "maco + shapes spectrum": ["param.kind=maco", "param.spectrum=shapes.spectrum.safetensors"],
    "pixel + blur transform": ["param.kind=pixel", "transforms=[{kind: standard}, {kind: blur}]"],
    "pixel + bilateral": ["param.kind=pixel", "transforms=[{kind: standard}, {kind: bilateral}]"],
    "pixel + blur penalty": ["param.kind=pixel", "regularizers=[{kind: blur, weight: 0.05}]"],
    "pixel + grad_blur": ["param.kind=pixel", "optim.grad_blur=1"],
    "pixel + grad_pyramid": ["param.kind=pixel", "optim.grad_pyramid=4"],
    "fft + prior": ["param.kind=fft", "regularizers=[{kind: prior, weight: 0.25}]"],
    "pixel + prior": ["param.kind=pixel", "regularizers=[{kind: prior, weight: 0.25}]"],
    "fft + prior, control network": [
        "param.kind=fft",
        "regularizers=[{kind: prior, weight: 0.25}]",
        "model.control=shuffled",
    ],
}


def folder_name(variant: str) -> str:
    return variant.replace(" + ", "+").replace(" ", "-")


def render_all(out_dir: Path) -> None:
    """Render every variant into out_dir/<variant>/, one process each."""
    for variant, sets in VARIANTS.items():
        args = [sys.executable, "-m", "fvis", "render", str(CONFIG), "--quiet", "--force"]
        for item in sets:
            args += ["--set", item]
        args += ["--out", str(out_dir / folder_name(variant))]
        subprocess.run(args, check=True)


def table(out_dir: Path) -> tuple[list[str], list[list[torch.Tensor]]]:
    """Markdown table lines and the final images of every variant."""
    lines = [
        "| variant | objective (mean of 3) | high-frequency share | ms / step |",
        "|---|---|---|---|",
    ]
    rows = []
    for variant in VARIANTS:
        run_dir = out_dir / folder_name(variant)
        run = json.loads((run_dir / "run.json").read_text())
        images = [
            read_image(run_dir / f"image_{b}.png") for b in range(len(run["final"]["objective"]))
        ]
        objective = sum(run["final"]["objective"]) / len(images)
        share = sum(high_frequency_share(x) for x in images) / len(images)
        ms = 1000 * run["seconds_per_step"]
        lines.append(f"| {variant} | {objective:.2f} | {share:.3f} | {ms:.0f} |")
        rows.append(images)
    return lines, rows


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0]) if argv else Path("outputs/parameterizations")
    render_all(out_dir)
    lines, rows = table(out_dir)
    print("\n".join(lines))
    print(f"\n{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if len(argv) > 1:
        # a 256-colour palette keeps the committed picture small and looks the same
        picture = sheet(rows, list(VARIANTS)).quantize(256, dither=Image.Dither.NONE)
        write_atomic(Path(argv[1]), png_bytes(picture))


def machine() -> str:
    """The CPU's model name (Linux) or architecture, and its core count."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} cores)"


def sheet(rows: list[list[torch.Tensor]], labels: list[str], pad: int = 2) -> Image.Image:
    """Images at their own size in rows, each row labelled on the left."""
    h, w = rows[0][0].shape[-2:]
    left = 150
    out = Image.new("RGB", (left + len(rows[0]) * (w + pad), len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        y = i * (h + pad)
        draw.text((4, y + h // 2 - 6), label, fill=(0, 0, 0), font=font)
        for j, image in enumerate(row):
            out.paste(to_pil(image), (left + j * (w + pad), y))
    return out


def write_samples(folder: str, count: int, seed: int = 1) -> None:
    """`count` images of the shapes dataset as PNGs (input for `fvis spectrum`)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    images, _ = sample(count, torch.Generator().manual_seed(seed))
    for i, image in enumerate(images):
        write_atomic(path / f"{i:04d}.png", png_bytes(to_pil(image)))


if __name__ == "__main__":
    main(sys.argv[1:])
