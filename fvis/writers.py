"""Writing a run: labelled PNG grid, one PNG per image, curves.png, run.json and the resolved
config.

Every file is written with `fvis.io.write_atomic` (to a temporary name in its folder, then
renamed into place), so a reader never sees half a file.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw, ImageFont

import fvis
from fvis import curves
from fvis.config import Config
from fvis.errors import UserError
from fvis.extras import param_files
from fvis.io import png_bytes, read_image, to_json, to_pil, write_atomic
from fvis.models import torchvision_version
from fvis.render import Plan, Result

LABEL_HEIGHT = 16
LABEL_WIDTH = 40
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


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


def write_run(run_dir: Path, config: Config, plan: Plan, result: Result) -> list[str]:
    """grid.png, image_<i>.png per final image, curves.png (unless output.curves is off or the
    run has no trace yet), config.yaml (the resolved `config`) and run.json, written last so
    that it never describes files not yet there; returns file names.

    A grid too large for memory is a UserError naming grid.png (the caller decides whether that
    fails a run); a file that cannot be written is one from `write_atomic`.
    """
    snaps = result.snapshots[1:] or result.snapshots
    batch = snaps[0].images.shape[0]
    rows = [[s.images[b] for s in snaps] for b in range(batch)]
    try:
        sheet = grid(
            rows,
            [f"step {s.step}" for s in snaps],
            [f"#{b}" for b in range(batch)],
            config.output.cell,
            alpha=config.param.alpha,
        )
        files = {"grid.png": png_bytes(sheet)}
    except MemoryError:
        h, w = snaps[0].images.shape[-2:]
        k = max(1, -(-config.output.cell // max(h, w)))  # as `grid` scales
        width = LABEL_WIDTH + len(snaps) * (w * k + 2)
        height = LABEL_HEIGHT + batch * (h * k + 2)
        raise UserError(
            f"{run_dir / 'grid.png'}: out of memory making a grid of {width}x{height} pixels "
            f"(try a smaller output.cell than {config.output.cell})"
        ) from None
    for b in range(batch):
        files[f"image_{b}.png"] = png_bytes(to_pil(snaps[-1].images[b], config.param.alpha))
    files.update(param_files(plan.param, snaps[-1].images))
    if config.output.curves and result.trace_steps:
        title = f"{config.name or run_dir.name}: {plan.objective.name}"
        files[curves.FILE] = curve_png(title, result)
    resolved = config.model_dump(mode="json")
    files["config.yaml"] = yaml.safe_dump(resolved, sort_keys=False).encode()
    for name, data in files.items():
        write_atomic(run_dir / name, data)
    write_metadata(run_dir, config, plan, result, sorted(files))
    return [*files, "run.json"]


def curve_png(title: str, result: Result) -> bytes:
    """curves.png of a run's trace: the objective's mean over the batch (each item's thin
    beside it) and, below, each term's, unless every term is the objective itself."""
    steps = result.trace_steps
    means = {
        name: (steps, [sum(row) / len(row) for row in rows]) for name, rows in result.trace.items()
    }
    objective = means.pop("objective")
    terms = {} if all(line == objective for line in means.values()) else means
    rows = result.trace["objective"]  # [logged step][batch item]
    batch = len(rows[0])
    thin = {f"#{b}": (steps, [row[b] for row in rows]) for b in range(batch)} if batch > 1 else {}
    label = "objective (mean)" if thin else "objective"
    return curves.png(title, {label: objective}, thin, terms)


def write_metadata(
    run_dir: Path, config: Config, plan: Plan, result: Result, files: list[str]
) -> None:
    """run.json alone, listing `files` (besides itself): with `write_run`'s other files, or by
    itself where a failed run can record no more than its status and error."""
    resolved = config.model_dump(mode="json")
    write_atomic(run_dir / "run.json", to_json(_metadata(config, plan, result, resolved, files)))


def versions() -> dict[str, str]:
    """The versions a result depends on, as every metadata file records them."""
    return {
        "fvis": fvis.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision_version(),
        "python": platform.python_version(),
    }


def _metadata(
    config: Config, plan: Plan, result: Result, resolved: dict[str, Any], files: list[str]
) -> dict[str, Any]:
    steps = max(result.steps_done, 1)
    return {
        "name": config.name,
        "status": result.status,
        **({"error": result.failure} if result.failure else {}),
        "versions": versions(),
        "device": str(plan.device),
        "config_dir": str(plan.base.resolve()),
        "seed": config.seed,
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
        tile = read_image(file, "RGB", (cell, cell), resample=Image.Resampling.NEAREST)
        sheet.paste(to_pil(tile), (x, y))
        draw.text((x + 2, y + cell + 2), label[-(cell // 6) :], fill=INK, font=font)
    return sheet
