"""The built-in model zoo: list its models, retrain them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fvis.cli.common import (
    user_errors,
    zoo_app,
)
from fvis.display import note, out, say, show


@zoo_app.command("list")
def zoo_list() -> None:
    """Show the built-in models, their classes and layers.

    In a terminal wide enough, a table per model; otherwise (piped, or a narrow terminal) per
    model a `# NAME: description` line, one line per layer (its name and what it holds,
    separated by a tab) and a `classes:` line.
    """
    from fvis import zoo  # lazy: start-up time

    for model in zoo.MODELS.values():
        table = Table(title=f"{model.name}: {model.description}")
        table.add_column("layer")
        table.add_column("what it holds")
        for layer, about in model.layers:
            table.add_row(layer, about)
        show(table, wrap=(1,))
        say("classes: " + ", ".join(f"{i} {c}" for i, c in enumerate(model.classes)))


@zoo_app.command("train")
def zoo_train(
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the weights (.safetensors).")
    ] = Path("shapes.safetensors"),
    seed: Annotated[int, typer.Option(help="Training seed (the shipped weights use 0).")] = 0,
) -> None:
    """Retrain the built-in 'shapes' model from its generated data.

    A few minutes on a CPU. With the default seed the weights are byte-identical to the shipped
    ones on the same platform and torch version (compare with `sha256sum`).
    """
    from fvis.zoo import MODELS, sha256_file  # lazy: start-up time
    from fvis.zoo.train import train  # lazy: start-up time

    with user_errors():
        metrics = train(seed=seed, out=out_path, log=note)
    out.print_json(json.dumps(metrics))
    same = sha256_file(out_path) == MODELS["shapes"].sha256
    note(f"{out_path}: {'identical to' if same else 'differs from'} the shipped weights")
