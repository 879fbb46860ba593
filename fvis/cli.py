"""The `fvis` command line: parse, call, print. Torch is imported lazily, so help is instant."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from fvis.config import Config, Loaded, Source, load_config
from fvis.errors import SpecError, Terminated, UserError

app = typer.Typer(
    help="Feature visualization for PyTorch: render what a network's units respond to, "
    "from a YAML file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
zoo_app = typer.Typer(
    help="The built-in model zoo: list its models, retrain them.", no_args_is_help=True
)
app.add_typer(zoo_app, name="zoo")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ConfigArg = Annotated[
    Path, typer.Argument(help="The YAML config file.", metavar="CONFIG", show_default=False)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config value: dotted.path=value (value parsed as YAML), repeatable, "
        "e.g. --set optim.steps=64 --set param.size=96.",
        metavar="PATH=VALUE",
        show_default=False,
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a user error (one line per problem) and exit with `code`."""
    for line in message.splitlines():
        err.print(line, markup=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(source: Source | None = None) -> Iterator[None]:
    """Report user mistakes as one-line errors with exit code 2, never as a traceback.

    `source` locates errors raised while building from a config (file, line, YAML path).
    """
    try:
        yield
    except SpecError as exc:
        fail(source.error(exc) if source else exc.message)
    except UserError as exc:
        fail(str(exc))


def _load(path: Path, overrides: list[str] | None) -> Loaded:
    with user_errors():
        return load_config(path, overrides or [])


@app.command()
def render(
    config: ConfigArg,
    overrides: SetOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Run folder (default: output.dir/name).", show_default=False
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Overwrite an existing run folder.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Render a feature visualization: writes grid.png, image_<i>.png and run.json."""
    loaded = _load(config, overrides)
    cfg = loaded.config
    run_dir = out_dir or cfg.output.dir / str(cfg.name)
    from fvis.build import build_plan
    from fvis.render import render as run_render
    from fvis.writers import prepare_run_dir, write_run

    with user_errors(loaded.source), _sigterm_as_interrupt():
        plan = build_plan(cfg, config.parent)
        prepare_run_dir(run_dir, force)
        with _progress(str(cfg.name), cfg.optim.steps, quiet) as report:
            result = run_render(plan, report)
        write_run(run_dir, plan, result)
    final = result.final.objective
    summary = (
        f"{cfg.name}: {result.status}, {result.steps_done} steps in {result.seconds:.1f}s on "
        f"{plan.device}, objective {result.initial.objective[0]:.4g} -> {final[0]:.4g}"
        + (f" (item 0 of {len(final)})" if len(final) > 1 else "")
    )
    if not quiet or result.interrupted:
        err.print(summary, markup=False)
    out.print(str(run_dir / "grid.png"), markup=False)
    if result.interrupted:
        raise typer.Exit(getattr(result.interrupted, "exit_code", 130))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops a run like Ctrl-C does (raising `Terminated`)."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(name: str, steps: int, quiet: bool) -> Iterator[Callable[[int, float], None] | None]:
    """A rich progress bar (step, objective, speed) on stderr, or nothing when quiet."""
    if quiet:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("objective {task.fields[score]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(name, total=steps, score="-", rate="")

        def report(step: int, score: float) -> None:
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(
                task, completed=step, score=f"{score:.4g}", rate=f"{step / elapsed:.1f} steps/s"
            )

        yield report


@app.command()
def validate(
    config: ConfigArg,
    overrides: SetOption = None,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep", help="Also build the model and check layers and shapes (one dry forward)."
        ),
    ] = False,
) -> None:
    """Check a config file without rendering; exit 2 with every error found."""
    loaded = _load(config, overrides)
    if deep:
        from fvis.build import build_plan

        with user_errors(loaded.source):
            build_plan(loaded.config, config.parent)
    out.print(f"{config}: ok")


@app.command()
def schema() -> None:
    """Print the config's JSON schema (for editor completion and validation)."""
    out.print_json(json.dumps(Config.model_json_schema()))


@app.command()
def layers(
    target: Annotated[
        str,
        typer.Argument(
            help="A config file, or a model as zoo:NAME or torchvision:NAME (random weights).",
            show_default=False,
        ),
    ],
    size: Annotated[
        int | None,
        typer.Option(
            help="Image size of the dry forward (default: the model's input size).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List every hookable layer of a model with its output shape (one dry forward)."""
    import torch

    from fvis.hooks import layer_table
    from fvis.models import build_network

    base, spec = _model_target(target)
    with user_errors():
        network = build_network(spec, base)
        h, w = (size, size) if size else network.prep.size
        probe = torch.full((1, network.prep.channels, h, w), 0.5)
        rows = layer_table(network.model, network.gain * probe + network.bias)
    table = Table(title=f"{target}: layers for a {network.prep.channels}x{h}x{w} input")
    for column in ("layer", "type", "output shape"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    table.add_row("output", "(model output)", "")
    out.print(table)


def _model_target(target: str):  # type: ignore[no-untyped-def]
    """(base folder, model spec) from a config path or a 'source:name' shorthand."""
    from fvis.config import TorchvisionModelSpec, ZooModelSpec

    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path.parent, _load(path, None).config.model
    source, _, name = target.partition(":")
    if source == "zoo" and name:
        return Path.cwd(), ZooModelSpec(name=name)
    if source == "torchvision" and name:
        return Path.cwd(), TorchvisionModelSpec(source="torchvision", name=name, weights=None)
    fail(f"{target}: expected a config file, zoo:NAME or torchvision:NAME")


@zoo_app.command("list")
def zoo_list() -> None:
    """Show the built-in models, their classes and layers."""
    from fvis import zoo

    for model in zoo.MODELS.values():
        table = Table(title=f"{model.name}: {model.description}")
        table.add_column("layer")
        table.add_column("what it holds")
        for layer, about in model.layers:
            table.add_row(layer, about)
        out.print(table)
        out.print("classes: " + ", ".join(f"{i} {c}" for i, c in enumerate(model.classes)))


@zoo_app.command("train")
def zoo_train(
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the weights (.safetensors).")
    ] = Path("shapes.safetensors"),
    seed: Annotated[int, typer.Option(help="Training seed (the shipped weights use 0).")] = 0,
) -> None:
    """Retrain the built-in 'shapes' model from its generated data (a few minutes on CPU).

    With the default seed the weights are byte-identical to the shipped ones on the same
    platform and torch version (compare with `sha256sum`).
    """
    from fvis.zoo import MODELS, sha256_file
    from fvis.zoo.train import train

    metrics = train(seed=seed, out=out_path, log=lambda line: err.print(line, markup=False))
    out.print_json(json.dumps(metrics))
    same = sha256_file(out_path) == MODELS["shapes"].sha256
    err.print(f"{out_path}: {'identical to' if same else 'differs from'} the shipped weights")


def main() -> None:
    """Entry point of the `fvis` console script and `python -m fvis`."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
