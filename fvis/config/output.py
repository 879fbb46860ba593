"""The `output:` node: where and how results are written."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
)

from fvis.config.base import FilePath, Node


class OutputSpec(Node):
    """Where and how results are written."""

    dir: FilePath = Field(Path("outputs"), description="Folder holding one folder per run name.")
    cell: int = Field(
        128, ge=16, le=2048, description="Smallest grid cell in pixels (nearest upscaling)."
    )
    transparency: bool = Field(
        False,
        description="Also write transparency_<i>.png: each final image with an opacity map from "
        "the absolute image gradients accumulated over the optimization (MACO's attribution).",
    )
    curves: bool = Field(
        True,
        description="Also write curves.png (render and sweep folders): the objective and each "
        "term over the optimization steps. Costs matplotlib's import, about 0.7 s, once per "
        "process; false imports nothing.",
    )
