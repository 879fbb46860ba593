"""Rendering a file of directions in a layer's activation space: one image per row, as a sweep.

Neuron groups (`fvis groups`) and activation atlases (`fvis atlas`) end in a matrix [N, C] of
directions, saved as safetensors. Each row is rendered with `dot_cossim` (lucid's dot product
times cosine, the objective of "Activation Atlas", Carter et al. 2019), as `fvis sweep` renders
the config with `--set objective=...` over `objective.vector.index`: batched, and resumable
(rows already in the folder are kept). `Rows.command(k)` is the `fvis render` line that renders
row k alone, as a normal config with one override.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fvis.sweep import Backend, run_sweep

INDEX_PATH = "objective.vector.index"


@dataclass(frozen=True)
class Rows:
    """The rows `key` of the safetensors file `vectors` as directions at `layer`, rendered with
    the config at `config` and its `overrides`."""

    config: Path
    overrides: tuple[str, ...]
    layer: str
    vectors: Path
    key: str

    @property
    def objective(self) -> str:
        """The `--set` that makes the config's objective row 0 of the file (as flow YAML)."""
        vector = {"file": str(self.vectors.resolve()), "key": self.key, "index": 0}
        node = {"kind": "dot_cossim", "layer": self.layer, "vector": vector}
        return f"objective={json.dumps(node)}"

    def sets(self) -> list[str]:
        """The overrides of every row's render: the user's, one image, the objective."""
        return [*self.overrides, "param.batch=1", self.objective]

    def command(self, row: int) -> str:
        """The shell line that renders row `row` alone."""
        sets = [*self.sets(), f"{INDEX_PATH}={row}"]
        words = ["fvis", "render", str(self.config), *(w for s in sets for w in ("--set", s))]
        return shlex.join(words)

    def metadata(self) -> dict[str, Any]:
        """What a folder's JSON records so that any row can be rendered again."""
        return {
            "config": str(self.config),
            "overrides": list(self.overrides),
            "layer": self.layer,
            "vectors": str(self.vectors),
            "key": self.key,
            "objective": "dot_cossim",
            "render_row_0": self.command(0),
        }


def render_rows(
    rows: Rows,
    count: int,
    folder: Path,
    batch: int | None = None,
    progress: Callable[[str], None] | None = None,
    backend: Backend | None = None,
) -> list[Path]:
    """Render rows 0..count-1 into the sweep folder `folder` (those already there are kept),
    on `backend` (None: here); returns each row's PNG, in row order."""
    over = [f"{INDEX_PATH}=0:{count}"]
    _, index = run_sweep(rows.config, rows.sets(), over, folder, batch, progress, backend=backend)
    return [folder / index[f"{INDEX_PATH}={k}"]["file"] for k in range(count)]
