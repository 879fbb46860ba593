"""The `fvis` command line: parse, call, print. Torch is imported lazily, so help is instant."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from fvis.config import (
    Config,
    Loaded,
    Source,
    TorchvisionModelSpec,
    ZooModelSpec,
    load_config,
    objective_kinds,
)
from fvis.errors import SpecError, UserError

if TYPE_CHECKING:
    from fvis.render import Renderer

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

OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Run folder (default: output.dir/name).", show_default=False),
]
ForceOption = Annotated[
    bool, typer.Option("--force", "-f", help="Overwrite an existing run folder.")
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
    except KeyboardInterrupt:  # Ctrl-C outside a render loop: nothing half-done to keep
        fail("interrupted", code=130)


def _load(path: Path, overrides: list[str] | None) -> Loaded:
    with user_errors():
        return load_config(path, overrides or [])


@app.command()
def render(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="The YAML config file (with --resume: default the run's own config).",
            metavar="CONFIG",
            show_default=False,
        ),
    ] = None,
    overrides: SetOption = None,
    out_dir: OutOption = None,
    force: ForceOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue an interrupted or crashed run from its last checkpoint (on the CPU, "
            "it ends in the same image as an uninterrupted run).",
            metavar="RUN_DIR",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Render a feature visualization: writes grid.png, image_<i>.png and run.json."""
    from fvis import runs  # lazy: start-up time

    base = config.parent if config else Path()
    if resume:
        with user_errors():
            saved, base = runs.resume_source(resume)
        config = config or saved
    if config is None:
        fail("render: give a CONFIG file (or --resume RUN_DIR)")
    loaded = _load(config, overrides)
    cfg = loaded.config
    run_dir = resume or out_dir or cfg.output.dir / str(cfg.name)
    from fvis.build import build_plan  # lazy: start-up time
    from fvis.render import Renderer  # lazy: start-up time
    from fvis.writers import prepare_run_dir  # lazy: start-up time

    with user_errors(loaded.source):
        plan = build_plan(cfg, base)
        _warn(loaded, plan.warnings)
        renderer = Renderer(plan)
        if resume:
            runs.restore(renderer, resume)
        else:
            prepare_run_dir(run_dir, force)
        with _progress(str(cfg.name), cfg.optim.steps, quiet) as report, _stop_on(renderer):
            renderer.run(report, lambda r: runs.save_progress(run_dir, cfg, plan, r))
        result = runs.finish(run_dir, cfg, plan, renderer)
    final = result.final.objective
    summary = (
        f"{cfg.name}: {result.status}, {result.steps_done} steps in {result.seconds:.1f}s on "
        f"{plan.device}, objective {result.initial.objective[0]:.4g} -> {final[0]:.4g}"
        + (f" (item 0 of {len(final)})" if len(final) > 1 else "")
    )
    if not quiet or result.status != "complete":
        err.print(summary, markup=False)
    out.print(str(run_dir / "grid.png"), markup=False)
    if result.failure:
        fail(f"{cfg.name}: {result.failure}", code=1)
    if result.stopped_by:
        err.print(f"resume with: fvis render --resume {run_dir}", markup=False)
        raise typer.Exit(128 + result.stopped_by)


@contextmanager
def _stop_on(renderer: Renderer) -> Iterator[None]:
    """Within the block, the first Ctrl-C or SIGTERM asks the render to stop after its current
    step (and save); a second Ctrl-C stops at once."""

    def handler(signum: int, frame: object) -> None:
        if renderer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        renderer.request_stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _progress(name: str, steps: int, quiet: bool) -> Iterator[Callable[[int, float], None] | None]:
    """A rich progress bar (step, objective, speed) on stderr, or nothing when quiet."""
    if quiet:
        yield None
        return
    from rich.progress import (  # lazy: start-up time
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
def sweep(
    config: ConfigArg,
    over: Annotated[
        list[str],
        typer.Option(
            "--over",
            help="A config path and its values: path=START:STOP[:STEP], path=a,b,c or "
            "path=value; repeat for the product of several.",
            metavar="PATH=VALUES",
            show_default=False,
        ),
    ],
    overrides: SetOption = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            min=1,
            help="Items optimized together (default: as many as fit in half the free memory, "
            "at most 8 on a CPU and 64 on a GPU; halved when the GPU runs out of memory).",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Sweep folder (default: output.dir/NAME-sweep).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Render one image per value (e.g. every channel of a layer), many per optimization:
    writes one PNG per item, sheet.png and sweep.json; items already there are skipped."""
    from fvis.sweep import SHEET, run_sweep  # lazy: start-up time

    report = None if quiet else (lambda line: err.print(line, markup=False))
    with user_errors():
        folder, _ = run_sweep(config, overrides or [], over, out_dir, batch, report)
    out.print(str(folder / SHEET), markup=False)


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
        from fvis.build import build_plan  # lazy: start-up time

        with user_errors(loaded.source):
            _warn(loaded, build_plan(loaded.config, config.parent).warnings)
    out.print(f"{config}: ok")


def _warn(loaded: Loaded, warnings: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Print build warnings located like errors: `file:line: yaml.path: warning: ...`."""
    for loc, message in warnings:
        err.print(f"{loaded.source.where(loc)}: warning: {message}", markup=False, soft_wrap=True)


@app.command()
def objectives() -> None:
    """List every objective kind with what it computes, its parameters and its expression form."""
    table = Table(title="objective kinds (every kind also takes weight and batch)")
    for column in ("kind", "what it computes", "parameters", "in an expression"):
        table.add_column(column)
    for kind, node in objective_kinds().items():
        params = [
            name if info.is_required() else f"{name}={info.default!r}"
            for name, info in node.model_fields.items()
            if name not in ("kind", "weight", "batch")
        ]
        if node.model_config.get("extra") == "allow":
            params.append("any other key")
        call = f"{kind}({', '.join(node.positional)})" if node.positional else "operator"
        doc = (node.__doc__ or "").strip().splitlines()[0]
        table.add_row(kind, doc, ", ".join(params), call)
    out.print(table)


@app.command()
def attribute(
    config: ConfigArg,
    overrides: SetOption = None,
    out_dir: OutOption = None,
    force: ForceOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per method.")] = False,
) -> None:
    """Attribute decisions to input pixels with Captum's methods: writes grid.png,
    attributions.safetensors and attribution.json (metrics, timings, versions)."""
    from fvis.config.attribution import load_attribution  # lazy: start-up time

    with user_errors():
        cfg, source = load_attribution(config, overrides or [])
    from fvis.attribution.run import build, run, write  # lazy: start-up time
    from fvis.writers import prepare_run_dir  # lazy: start-up time

    run_dir = out_dir or cfg.output.dir / str(cfg.name)
    report = None if quiet else (lambda line: err.print(line, markup=False))
    with user_errors(source):
        plan = build(cfg, config.parent)
        prepare_run_dir(run_dir, force)
        outcome = run(plan, report)
        write(run_dir, outcome)
    if not quiet:
        err.print(
            f"{cfg.name}: {len(outcome.results)} methods on {len(plan.images.names)} inputs in "
            f"{outcome.seconds:.1f}s on {plan.device}",
            markup=False,
        )
    out.print(str(run_dir / "grid.png"), markup=False)


@app.command()
def schema(
    attribution: Annotated[
        bool,
        typer.Option(
            "--attribution", help="The schema of `fvis attribute` configs instead of render's."
        ),
    ] = False,
) -> None:
    """Print the config's JSON schema (for editor completion and validation)."""
    if attribution:
        from fvis.config.attribution import AttributionConfig  # lazy: start-up time

        out.print_json(json.dumps(AttributionConfig.model_json_schema()))
        return
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
    import torch  # lazy: start-up time

    from fvis.hooks import layer_table  # lazy: start-up time
    from fvis.models import build_network  # lazy: start-up time

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
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path.parent, _load(path, None).config.model
    source, _, name = target.partition(":")
    if source == "zoo" and name:
        return Path.cwd(), ZooModelSpec(name=name)
    if source == "torchvision" and name:
        return Path.cwd(), TorchvisionModelSpec(source="torchvision", name=name, weights=None)
    fail(f"{target}: expected a config file, zoo:NAME or torchvision:NAME")


@app.command()
def compare(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="The new render: a run folder, a sweep folder or a tree of run folders.",
            metavar="RUN_DIR",
            show_default=False,
        ),
    ],
    golden_dir: Annotated[
        Path,
        typer.Argument(
            help="The goldens, laid out like RUN_DIR: every PNG in it is compared.",
            metavar="GOLDEN_DIR",
            show_default=False,
        ),
    ],
    max_mad: Annotated[
        float,
        typer.Option(
            min=0, help="Largest mean absolute pixel difference (in [0, 1] units) that passes."
        ),
    ] = 0.01,
    min_ssim: Annotated[
        float, typer.Option(max=1, help="Smallest SSIM (1 = identical) that passes.")
    ] = 0.95,
    rtol: Annotated[
        float,
        typer.Option(
            min=0,
            help="Relative tolerance on the final objective and term values of run.json and "
            "sweep.json (values within 1e-6 always pass).",
        ),
    ] = 0.01,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact", help="Require byte-identical PNGs (same platform and versions only)."
        ),
    ] = False,
    diff_dir: Annotated[
        Path | None,
        typer.Option(
            "--diff-dir",
            help="Where diff images (golden | run | amplified difference) of failing images go "
            "(default: RUN_DIR/diff).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Compare a render with goldens: exit 0 when it matches, 1 on a regression.

    Images are compared by mean absolute difference and SSIM, objective values by relative
    tolerance; a missing image, run or value, or an image of another size, is a regression.
    """
    from fvis.compare import Thresholds, tables  # lazy: start-up time
    from fvis.compare import compare as run_compare  # lazy: start-up time

    with user_errors():
        report = run_compare(
            run_dir, golden_dir, Thresholds(max_mad, min_ssim, rtol, exact), diff_dir
        )
    for table in tables(report):
        out.print(table)
    for problem in report.problems:
        out.print(f"FAIL: {problem}", style="bold red", markup=False, soft_wrap=True)
    out.print(report.summary(), markup=False, soft_wrap=True)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def spectrum(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A folder of images (searched recursively).", metavar="FOLDER", show_default=False
        ),
    ],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="The spectrum file to write (.safetensors).")
    ] = Path("spectrum.safetensors"),
    size: Annotated[
        int,
        typer.Option(
            min=8, max=1024, help="Side the images are resized (shorter side) and cropped to."
        ),
    ] = 128,
) -> None:
    """Mean Fourier spectrum of a folder of images: a magnitude template for `param.kind: maco`
    (`param.spectrum: FILE`)."""
    from fvis.spectrum import folder_spectrum, save_spectrum  # lazy: start-up time

    if not folder.is_dir():
        fail(f"{folder}: not a folder")
    with user_errors():
        try:
            power, count = folder_spectrum(folder, size)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        save_spectrum(out_path, power, count)
    err.print(f"{count} images at {size}x{size} px", markup=False)
    out.print(str(out_path), markup=False)


@app.command()
def cppn(
    weights: Annotated[
        Path,
        typer.Argument(
            help="A run's cppn.safetensors (param.kind: cppn).",
            metavar="WEIGHTS",
            show_default=False,
        ),
    ],
    size: Annotated[
        str, typer.Option("--size", help="Size to render at: N, or HxW (height x width).")
    ] = "512",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for image_<i>.png (default: cppn-HxW beside WEIGHTS).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Render a CPPN run's images again at another size, from the same weights."""
    from fvis.extras import render_cppn  # lazy: start-up time

    h, sep, w = size.lower().partition("x")
    if not (h.isdigit() and (w.isdigit() or not sep)) or not 8 <= int(h) <= 8192:
        fail(f"--size {size}: expected N or HxW, each 8 to 8192")
    shape = (int(h), int(w or h))
    if not 8 <= shape[1] <= 8192:
        fail(f"--size {size}: expected N or HxW, each 8 to 8192")
    if not weights.is_file():
        fail(f"{weights}: no such file")
    target = out_dir or weights.parent / f"cppn-{shape[0]}x{shape[1]}"
    with user_errors():
        try:
            paths = render_cppn(weights, shape, target)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    for path in paths:
        out.print(str(path), markup=False)


@zoo_app.command("list")
def zoo_list() -> None:
    """Show the built-in models, their classes and layers."""
    from fvis import zoo  # lazy: start-up time

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
    from fvis.zoo import MODELS, sha256_file  # lazy: start-up time
    from fvis.zoo.train import train  # lazy: start-up time

    with user_errors():
        metrics = train(seed=seed, out=out_path, log=lambda line: err.print(line, markup=False))
    out.print_json(json.dumps(metrics))
    same = sha256_file(out_path) == MODELS["shapes"].sha256
    err.print(f"{out_path}: {'identical to' if same else 'differs from'} the shipped weights")


def main() -> None:
    """Entry point of the `fvis` console script and `python -m fvis`."""
    app()
