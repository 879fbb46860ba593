"""The time of an activation atlas: `fvis atlas` of the built-in model's conv4, as a user runs it.

The command runs in its own process (start-up included) with the defaults the docs use: 5,000
`zoo:shapes` images, one vector per image, a 20 x 20 grid. atlas.json gives the seconds of each
stage (the pass over the data, the t-SNE layout, the renders of the occupied cells) and the
measures the issue asks for (the share of renders classified as their cell's class, the mean
distances between stripe and colour cells).

    python benchmarks/atlas.py                    # writes benchmarks/atlas.md and prints the line
    python benchmarks/atlas.py --count 500 --grid 8   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine  # the machine line every benchmark report opens with

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "quickstart.yaml"
LAYER = "conv4"


def command(count: int, grid: int, out: Path) -> list[str]:
    """`fvis atlas` on `count` zoo images into `out`, as the docs run it."""
    return [
        sys.executable, "-m", "fvis", "atlas", str(CONFIG),
        "--data", f"zoo:shapes:{count}", "--layer", LAYER, "--grid", str(grid),
        "--out", str(out), "--quiet",
    ]  # fmt: skip


def measure(count: int, grid: int) -> dict[str, Any]:
    """Wall seconds of one run, its stages' seconds and its measures (from atlas.json)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "atlas"
        start = time.perf_counter()
        subprocess.run(command(count, grid, out), cwd=ROOT, check=True, capture_output=True)
        wall = time.perf_counter() - start
        index = json.loads((out / "atlas.json").read_text())
    return {
        "wall": wall,
        "stages": index["seconds"],
        "cells": len(index["cells"]),
        "measures": index["measures"],
    }


def line(count: int, grid: int, found: dict[str, Any]) -> str:
    """The benchmark line: the table row of one run."""
    stages = found["stages"]
    classed = found["measures"].get("render_class") or {}
    distances = found["measures"].get("distances") or {}
    share = f"{classed['share']:.0%} of {classed['cells']}" if "share" in classed else "-"
    pair = (distances.get("stripe_to_stripe"), distances.get("stripe_to_colour"))
    near = "-" if None in pair else f"{pair[0]:.2f} / {pair[1]:.2f}"
    return (
        f"| {grid}x{grid} | {count:,} | {found['cells']} | {found['wall']:.1f} "
        f"| {stages.get('pass', 0):.1f} | {stages.get('layout', 0):.1f} "
        f"| {stages.get('renders', 0):.1f} | {share} | {near} |"
    )


HEADER = [
    "| grid | images | cells rendered | wall, s | pass, s | t-SNE, s | renders, s "
    "| renders of their cell's class | stripe-stripe / stripe-colour distance (cells) |",
    "|---|---|---|---|---|---|---|---|---|",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--grid", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "atlas.md")
    args = parser.parse_args()
    row = line(args.count, args.grid, measure(args.count, args.grid))
    print(row, file=sys.stderr)
    text = "\n".join(
        [
            "# The time of an activation atlas",
            "",
            f"Measured {datetime.date.today()} on {machine()}; `python benchmarks/atlas.py` "
            f"(`make bench-atlas`): `fvis atlas configs/quickstart.yaml --data "
            f"zoo:shapes:{args.count} --layer {LAYER} --grid {args.grid}` in its own process, "
            "start-up included; the stages' seconds come from its atlas.json.",
            "",
            *HEADER,
            row,
            "",
            "Wall time is the whole command; the pass reads the images and keeps one vector "
            "each, t-SNE lays them out, the renders are the occupied cells' directions "
            "(batched, as a sweep). The last two columns are the measures of "
            "docs/groups-and-atlases.md.",
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
