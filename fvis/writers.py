"""Writing a run: labelled PNG grid, one PNG per image, run.json and the resolved config.

Every file is written to a temporary name in its folder and renamed into place, so a reader
never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw, ImageFont

import fvis
from fvis.build import Plan
from fvis.errors import UserError
from fvis.extras import param_files
from fvis.render import Result

NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+,\s*)*-?[\d.eE+-]+)\s*\]")
UMASK = os.umask(0)
os.umask(UMASK)
LABEL_HEIGHT = 16
LABEL_WIDTH = 40
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def prepare_run_dir(path: Path, force: bool) -> Path:
    """Create the run folder; an existing non-empty one is an error unless `force`."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"{path}: run folder exists; pass --force to overwrite it or --out DIR")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the run folder ({exc.strerror})") from None
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it into place; a failure
    (full disk, no permission) leaves the old file, or none, and no temporary behind."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_pil(image: torch.Tensor, alpha: bool = False) -> Image.Image:
    """[C, H, W] in [0, 1] -> an 8-bit image: 1 channel grey, 3 RGB, otherwise the first three
    channels (missing ones black). With `alpha`, the last channel is opacity: grey + alpha -> LA,
    RGB + alpha -> RGBA."""
    x = (image.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)
    if alpha and x.shape[0] in (2, 4):
        mode = "LA" if x.shape[0] == 2 else "RGBA"
        return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy(), mode=mode)
    if x.shape[0] == 1:
        return Image.fromarray(x[0].numpy(), mode="L")
    if x.shape[0] < 3:
        x = torch.cat([x, torch.zeros(3 - x.shape[0], *x.shape[1:], dtype=torch.uint8)])
    return Image.fromarray(x[:3].permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def over_checkerboard(image: Image.Image, square: int = 8) -> Image.Image:
    """An image with alpha shown over a light/dark grey checkerboard (transparency visible)."""
    board = Image.new("RGB", image.size, (204, 204, 204))
    draw = ImageDraw.Draw(board)
    for y in range(0, image.size[1], square):
        for x in range((y // square % 2) * square, image.size[0], 2 * square):
            draw.rectangle((x, y, x + square - 1, y + square - 1), fill=(153, 153, 153))
    board.paste(image.convert("RGBA"), (0, 0), image.convert("RGBA"))
    return board


def grid(
    rows: list[list[torch.Tensor]],
    col_labels: list[str],
    row_labels: list[str],
    cell: int,
    alpha: bool = False,
) -> Image.Image:
    """A labelled grid of images, each upscaled (nearest) to at least `cell` pixels; with
    `alpha`, each shown over a checkerboard."""
    h, w = rows[0][0].shape[-2:]
    k = max(1, -(-cell // max(h, w)))
    ch, cw = h * k, w * k
    pad = 2
    sheet = Image.new(
        "RGB",
        (LABEL_WIDTH + len(col_labels) * (cw + pad), LABEL_HEIGHT + len(rows) * (ch + pad)),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, label in enumerate(col_labels):
        draw.text((LABEL_WIDTH + j * (cw + pad) + 2, 2), label, fill=INK, font=font)
    for i, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        y = LABEL_HEIGHT + i * (ch + pad)
        draw.text((2, y + ch // 2 - 6), label, fill=INK, font=font)
        for j, image in enumerate(row):
            tile = to_pil(image, alpha).resize((cw, ch), Image.Resampling.NEAREST)
            tile = over_checkerboard(tile) if alpha else tile.convert("RGB")
            sheet.paste(tile, (LABEL_WIDTH + j * (cw + pad), y))
    return sheet


def write_run(run_dir: Path, plan: Plan, result: Result) -> list[str]:
    """grid.png, image_<i>.png per final image, config.yaml and run.json; returns file names."""
    snaps = result.snapshots[1:] or result.snapshots
    batch = snaps[0].images.shape[0]
    rows = [[s.images[b] for s in snaps] for b in range(batch)]
    sheet = grid(
        rows,
        [f"step {s.step}" for s in snaps],
        [f"#{b}" for b in range(batch)],
        plan.config.output.cell,
        alpha=plan.config.param.alpha,
    )
    files = {"grid.png": png_bytes(sheet)}
    for b in range(batch):
        files[f"image_{b}.png"] = png_bytes(to_pil(snaps[-1].images[b], plan.config.param.alpha))
    files.update(param_files(plan, snaps[-1].images))
    resolved = plan.config.model_dump(mode="json")
    files["config.yaml"] = yaml.safe_dump(resolved, sort_keys=False).encode()
    files["run.json"] = to_json(_metadata(plan, result, resolved, sorted(files)))
    for name, data in files.items():
        write_atomic(run_dir / name, data)
    return list(files)


def to_json(data: Any) -> bytes:
    """Indented JSON with lists of numbers kept on one line, so long histories stay readable."""
    text = json.dumps(data, indent=2)
    return NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text).encode()


def _metadata(
    plan: Plan, result: Result, resolved: dict[str, Any], files: list[str]
) -> dict[str, Any]:
    import torchvision

    steps = max(result.steps_done, 1)
    return {
        "name": plan.config.name,
        "status": result.status,
        **({"error": result.failure} if result.failure else {}),
        "versions": {
            "fvis": fvis.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        "device": str(plan.device),
        "config_dir": str(plan.base.resolve()),
        "seed": plan.config.seed,
        "objective": plan.objective.name,
        "steps": result.steps_done,
        "wall_seconds": round(result.seconds, 4),
        "seconds_per_step": round(result.seconds / steps, 6),
        "preprocessing": {
            k: v for k, v in vars(plan.network.prep).items() if k != "color_correlation"
        },
        "history": {
            "steps": result.trace_steps,
            "mean_objective": [sum(v) / len(v) for v in result.trace.get("objective", [])],
            "per_item": result.trace,
        },
        "snapshots": [
            {"step": s.step, "objective": s.objective, "terms": s.terms} for s in result.snapshots
        ],
        "initial": {"objective": result.initial.objective, "terms": result.initial.terms},
        "final": {"objective": result.final.objective, "terms": result.final.terms},
        "files": [*files, "run.json"],
        "config": resolved,
    }


def contact_sheet(
    files: list[Path], labels: list[str], cell: int = 96, columns: int = 8
) -> Image.Image:
    """PNG files in rows of `columns`, each upscaled (nearest) to `cell` px and captioned."""
    caption = LABEL_HEIGHT
    rows = -(-len(files) // columns)
    width = min(columns, len(files)) * (cell + 2)
    sheet = Image.new("RGB", (width, rows * (cell + caption + 2)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, (file, label) in enumerate(zip(files, labels, strict=True)):
        x, y = (n % columns) * (cell + 2), (n // columns) * (cell + caption + 2)
        with Image.open(file) as image:
            sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.text((x + 2, y + cell + 2), label[-(cell // 6) :], fill=INK, font=font)
    return sheet
