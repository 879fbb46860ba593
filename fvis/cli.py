"""The `fvis` command line: parse, call, print. Torch is imported lazily, so help is instant."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from pydantic import BaseModel
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
from fvis.display import err, note, out, say, show
from fvis.errors import SpecError, UserError
from fvis.factories import entry_points

if TYPE_CHECKING:
    from rich.progress import Progress

    from fvis.render import Renderer
    from fvis.scan import Scan

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
probe_app = typer.Typer(
    help="Linear probes: train one on a layer's activations over data.", no_args_is_help=True
)
app.add_typer(probe_app, name="probe")

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
    typer.Option("--out", "-o", help="Run folder (default: output.dir/NAME).", show_default=False),
]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        "-f",
        help="Replace an existing run folder: the files fvis wrote in it are removed first "
        "(a folder without run.json is never cleared).",
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a user error (one line per problem) and exit with `code`."""
    for line in message.splitlines():
        note(line)
    raise typer.Exit(code)


@contextmanager
def user_errors(source: Source | None = None) -> Iterator[None]:
    """Report user mistakes as one-line errors with exit code 2, never as a traceback.

    `source` locates errors raised while building from a config (file, line, YAML path).
    """
    try:
        yield
    except SpecError as exc:
        fail(source.error(exc) if source else exc.message, exc.exit_code)
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a render loop: nothing half-done to keep
        fail("interrupted", code=130)


def _load(path: Path, overrides: list[str] | None) -> Loaded:
    with user_errors():
        return load_config(path, overrides or [])


@app.command()
def render(
    configs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="The YAML config files, rendered in turn (with --resume: at most one, by "
            "default the run's own config).",
            metavar="CONFIG",
            show_default=False,
        ),
    ] = None,
    overrides: SetOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder (default: output.dir/NAME); with several configs, the folder that "
            "holds each one's run folder, DIR/NAME.",
            show_default=False,
        ),
    ] = None,
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
    """Render one or more configs, each into its own run folder.

    Each config renders into its own run folder, output.dir/NAME (NAME: the config's `name`, by
    default its file's stem): grid.png, image_<i>.png, config.yaml and run.json. Several configs
    (a shell glob) render in turn in one process; --set applies to each. A config that fails
    prints its error and the others still render; the exit code is the worst one (2: a config
    or usage error, 1: a failed render, 0: all rendered). Ctrl-C stops the whole command and
    keeps what was rendered.
    """
    paths = list(configs or [])
    if resume and len(paths) > 1:
        fail("render: --resume continues one run: give at most one CONFIG")
    if len(paths) <= 1:
        _render_one(paths[0] if paths else None, overrides, out_dir, force, quiet, resume)
        return
    worst = 0
    taken: dict[Path, Path] = {}
    for path in paths:
        try:
            _render_one(path, overrides, out_dir, force, quiet, None, taken)
        except typer.Exit as exc:
            if exc.exit_code not in (0, 1, 2):  # interrupted: stop here, keep what was rendered
                raise
            worst = max(worst, exc.exit_code)
    if worst:
        raise typer.Exit(worst)


def _render_one(
    config: Path | None,
    overrides: list[str] | None,
    out_dir: Path | None,
    force: bool,
    quiet: bool,
    resume: Path | None,
    taken: dict[Path, Path] | None = None,
) -> None:
    """Render one config; exits (typer.Exit) with its code unless it rendered completely.

    `taken` (several configs in one command) maps each run folder already used to its config:
    one config's folder is then out_dir/NAME, and two configs never share a folder.
    """
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
    if taken is None:
        run_dir = resume or out_dir or cfg.output.dir / str(cfg.name)
    else:
        run_dir = (out_dir or cfg.output.dir) / str(cfg.name)
        other = taken.setdefault(run_dir.resolve(), config)
        if other != config:
            fail(
                f"{config}: run folder {run_dir} is also {other}'s in this command; give one "
                "of them another `name:`"
            )
    from fvis.build import build_plan  # lazy: start-up time
    from fvis.render import Renderer  # lazy: start-up time

    with user_errors(loaded.source):
        plan = build_plan(cfg, base)
        renderer = Renderer(plan)
        # The folder is this process's from here on; whether it may be used is decided under
        # the lock, so two commands never both take it.
        with runs.locked(run_dir):
            if resume:
                runs.restore(renderer, resume, cfg)
            else:
                runs.claim(run_dir, force)
            _warn(loaded, plan.warnings)  # the run starts: a refusal above is one line
            with _progress(str(cfg.name), cfg.optim.steps, quiet) as report, _stop_on(renderer):
                result = runs.render_run(run_dir, cfg, plan, renderer, report, fresh=not resume)
    final = result.final.objective
    summary = (
        f"{cfg.name}: {result.status}, {result.steps_done} steps in {result.seconds:.1f}s on "
        f"{plan.device}, objective {result.initial.objective[0]:.4g} -> {final[0]:.4g}"
        + (f" (item 0 of {len(final)})" if len(final) > 1 else "")
    )
    if not quiet or result.status != "complete":
        note(summary)
    if (run_dir / "grid.png").is_file():
        say(str(run_dir / "grid.png"))
    if result.failure:
        fail(f"{cfg.name}: {result.failure}", code=1)
    if result.stopped_by:
        note(f"resume with: fvis render --resume {run_dir}")
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
    with _bar("objective {task.fields[score]}") as bar:
        task = bar.add_task(name, total=steps, score="-", rate="")

        def report(step: int, score: float) -> None:
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(
                task, completed=step, score=f"{score:.4g}", rate=f"{step / elapsed:.1f} steps/s"
            )

        yield report


def _bar(middle: str) -> Progress:
    """fvis's progress bar on stderr: name, bar, done/total, `middle` (a task template), the
    task's `rate` field, elapsed and remaining time."""
    from rich.progress import (  # lazy: start-up time
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(middle),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )


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
    """Render one image per value of a config path, batched.

    For instance every channel of a layer. Writes one PNG per item, sheet.png and sweep.json;
    items already there are skipped.
    """
    from fvis.sweep import SHEET, run_sweep  # lazy: start-up time

    loaded = _load(config, overrides)
    with user_errors():
        folder, _ = run_sweep(
            config,
            overrides or [],
            over,
            out_dir,
            batch,
            None if quiet else note,
            on_built=lambda: _user_code(loaded.config, loaded.source),
        )
    say(str(folder / SHEET))


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
    """Check a config file without rendering.

    Exits 2 with every error found, each as file:line: yaml.path: message.
    """
    loaded = _load(config, overrides)
    if deep:
        from fvis.build import build_plan  # lazy: start-up time

        with user_errors(loaded.source):
            _warn(loaded, build_plan(loaded.config, config.parent).warnings)
    say(f"{config}: ok")


def _warn(loaded: Loaded, warnings: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Print build warnings located like errors: `file:line: yaml.path: warning: ...`, after
    a notice for each place where the build ran the user's code (a build that failed says only
    why: one line)."""
    _user_code(loaded.config, loaded.source)
    for loc, message in warnings:
        note(f"{loaded.source.where(loc)}: warning: {message}")


@app.command()
def objectives() -> None:
    """List every objective kind with its parameters.

    For each kind: what it computes, its parameters (every kind also takes weight and batch) and
    its form in an expression. In a terminal wide enough, a table; otherwise (piped, or a narrow
    terminal) one line per kind: those four fields, separated by tabs.
    """
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
    show(table, wrap=(1, 2, 3), titled=False)


@app.command()
def attribute(
    config: ConfigArg,
    overrides: SetOption = None,
    out_dir: OutOption = None,
    force: ForceOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per method.")] = False,
) -> None:
    """Attribute a model's decisions to input pixels with Captum.

    Runs the config's Captum methods and writes grid.png, attributions.safetensors and
    attribution.json (metrics, timings, versions).
    """
    from fvis.config.attribution import load_attribution  # lazy: start-up time

    with user_errors():
        cfg, source = load_attribution(config, overrides or [])
    from fvis import runs  # lazy: start-up time
    from fvis.attribution.run import build, run, write  # lazy: start-up time

    run_dir = out_dir or cfg.output.dir / str(cfg.name)
    with user_errors(source):
        plan = build(cfg, config.parent)
        with runs.locked(run_dir):
            runs.claim(run_dir, force)
            _user_code(cfg, source)
            outcome = run(plan, None if quiet else note)
            try:
                write(run_dir, outcome)
            except UserError as exc:  # a full disk: the run happened, its results are lost
                fail(f"{cfg.name}: {exc}", code=1)
    if not quiet:
        note(
            f"{cfg.name}: {len(outcome.results)} methods on {len(plan.images.names)} inputs in "
            f"{outcome.seconds:.1f}s on {plan.device}"
        )
    say(str(run_dir / "grid.png"))
    if outcome.failures:  # the other methods' results are written: report, then exit 1
        fail("\n".join(source.error(f.error) for f in outcome.failures), code=1)


@app.command()
def schema(
    attribution: Annotated[
        bool,
        typer.Option(
            "--attribution", help="The schema of `fvis attribute` configs instead of render's."
        ),
    ] = False,
) -> None:
    """Print the JSON schema of configs, for editors.

    Editors use it for completion and validation (fvis.schema.json, written by `make schema`).
    """
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
            metavar="MODEL",
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
    """List every hookable layer of a model with its output shape.

    One dry forward at the model's input size (or --size). In a terminal wide enough for the
    longest names, a table; otherwise (piped, or a narrow terminal) one line per layer: its name,
    type and output shape, separated by tabs (`fvis layers MODEL | cut -f1` lists the names).
    """
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
    show(table, titled=False)


# ----------------------------------------------------------------------------- the data side

DataOption = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="The images: zoo:NAME[:COUNT[:SEED]] (a zoo model's generated data), a folder "
        "(recursive; 'photos/**/*.jpg' for a pattern) or imagefolder:ROOT (default: the "
        "config's data:).",
        metavar="SOURCE",
        show_default=False,
    ),
]
LayersOption = Annotated[
    list[str] | None,
    typer.Option(
        "--layers",
        "--layer",
        "-l",
        help="Layers to read, comma-separated or repeated: names from `fvis layers CONFIG` or "
        "the config's hooks (default: every layer the zoo model lists).",
        metavar="L[,L...]",
        show_default=False,
    ),
]
BatchOption = Annotated[
    int, typer.Option("--batch", min=1, max=4096, help="Images per forward pass.")
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        max=64,
        help="Worker processes reading images (0: in this process; default: half the CPUs, "
        "1 to 4).",
        show_default=False,
    ),
]
ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume", help="Go on from where an interrupted run of the same command stopped."
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _scan(
    config: Path,
    overrides: list[str] | None,
    data: str | None,
    layers: list[str] | None,
    batch: int,
    workers: int | None,
    **options: object,
) -> tuple[Loaded, Scan]:
    """A config's model set to read `layers` over a data source (--data, its paths from the
    current folder, else the config's `data:`, its paths from the config's folder); `options`
    (the command's own) join what a checkpoint must match to be resumed."""
    import os  # lazy: start-up time

    from fvis.data import open_source  # lazy: start-up time
    from fvis.models import build_network, resolve_device  # lazy: start-up time
    from fvis.scan import Scan, layer_specs  # lazy: start-up time

    with user_errors():
        loaded = load_config(config, overrides or [], {"data": ("--data", data)} if data else None)
    cfg, source = loaded.config, loaded.source
    with user_errors(source):
        if cfg.data is None:
            raise UserError(
                f"{config}: no images to read: pass --data SOURCE (e.g. --data zoo:shapes:2000) "
                "or give the config a data: node"
            )
        network = build_network(cfg.model, config.parent)
        base = Path.cwd() if data else config.parent  # a flag's path is the shell's
        images = open_source(cfg.data, base, network.prep.size, network.prep.channels)
        names = _layer_list(layers, cfg)
        specs = layer_specs(network, names, cfg.hooks, "--layers")
        identity = {
            "model": cfg.model.model_dump(mode="json"),
            "hooks": cfg.hooks,
            "data": cfg.data.model_dump(mode="json"),
            "from": str(base.resolve()),
            "layers": specs,
            "batch": batch,
            **options,
        }
        auto = min(4, max(1, (os.cpu_count() or 2) // 2))
        scan = Scan(
            network,
            specs,
            images,
            batch,
            auto if workers is None else workers,
            resolve_device(cfg.device),
            identity,
        )
    _user_code(cfg.model, source, ("model",))
    return loaded, scan


def _layer_list(given: list[str] | None, config: Config) -> list[str]:
    """The layers named by --layers (comma-separated, repeatable), or the zoo model's."""
    from fvis import zoo  # lazy: start-up time

    names = [name.strip() for item in given or [] for name in item.split(",") if name.strip()]
    if names:
        return list(dict.fromkeys(names))
    if isinstance(config.model, ZooModelSpec):
        return list(zoo.get(config.model.name).layer_names)
    raise UserError("--layers: name the layers to read (`fvis layers CONFIG` lists them)")


@contextmanager
def _image_progress(
    name: str, total: int, quiet: bool
) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar of images read (with images/s) on stderr, or nothing when quiet."""
    if quiet:
        yield None
        return
    with _bar("{task.percentage:>3.0f}%") as bar:
        task = bar.add_task(name, total=total, rate="")

        def advance(done: int, read: int) -> None:
            rate = read / (bar.tasks[task].elapsed or 1e-9)
            bar.update(task, completed=done, rate=f"{rate:.0f} images/s")

        yield advance


def _skipped(skipped: tuple[str, ...]) -> None:
    """A note on images a pass could not read (the first named)."""
    if skipped:
        note(f"note: {len(skipped)} unreadable images left out; the first: {skipped[0]}")


@app.command()
def examples(
    config: ConfigArg,
    data: DataOption = None,
    layers: LayersOption = None,
    channels: Annotated[
        str | None,
        typer.Option(
            "--channels",
            "-c",
            help="Units to rank in every layer: indices and START:STOP ranges, e.g. 0:8,12 "
            "(default: all).",
            metavar="C[,START:STOP...]",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int,
        typer.Option("--top", "-k", min=1, max=100, help="Images per ranking (K)."),
    ] = 9,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Examples folder (default: output.dir/NAME-examples).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            "-f",
            help="Replace a previous examples folder: the files fvis examples wrote in it are "
            "removed first.",
        ),
    ] = False,
    resume: ResumeOption = False,
    batch: BatchOption = 64,
    workers: WorkersOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Find the images that excite each unit most and least.

    One pass over the images keeps, per unit (channel, neuron, class logit) of each layer, the
    top-K and bottom-K images by its mean over positions and by its maximum (with where it
    lies), and crops of the top ones around the maximum, sized to the unit's receptive field
    (measured by gradient). Writes examples.json (the index), examples.safetensors and a sheet
    per unit, LAYER/unit_NNNN.png. Interrupted (Ctrl-C), the pass keeps a checkpoint in the
    folder: --resume goes on.
    """
    from fvis import examples as dataset_examples  # lazy: start-up time
    from fvis import runs  # lazy: start-up time

    with user_errors():
        wanted = dataset_examples.parse_channels(channels)
    options = {"channels": None if wanted is None else list(wanted), "top": top}
    loaded, scan = _scan(config, overrides, data, layers, batch, workers, **options)
    cfg = loaded.config
    folder = out_dir or cfg.output.dir / f"{cfg.name}-examples"
    with user_errors(loaded.source):
        found = dataset_examples.layers(scan, wanted)
        with runs.locked(folder):
            runs.claim_pass(folder, force, resume, runs.EXAMPLES)
            found = dataset_examples.measure(scan, found)
            for layer in [] if quiet else found:
                note(layer.summary())
            with _image_progress(f"examples {cfg.name}", len(scan.images), quiet) as progress:
                written = dataset_examples.run(scan, found, top, folder, resume, progress)
    _skipped(written.outcome.skipped)
    if not quiet:
        note(f"{cfg.name}: {written.read} of {written.seen} images ranked")
    say(str(written.index))


def _user_code(config: BaseModel, source: Source, under: tuple[str, ...] = ()) -> None:
    """A notice line for each 'module:function' of the user's code a config (or its part at
    `under`) imports and runs: model factories, architectures, plugin objectives. Checkpoints
    cannot run code; these do."""
    for loc, target in entry_points(config, under):
        note(f"{source.where(loc)}: note: runs your code ({target}); use only code you trust")


def _model_target(target: str):  # type: ignore[no-untyped-def]
    """(base folder, model spec) from a config path or a 'source:name' shorthand."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        loaded = _load(path, None)
        _user_code(loaded.config.model, loaded.source, ("model",))
        return path.parent, loaded.config.model
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
    """Compare renders with goldens: exit 0 if they match, 1 if not.

    Images are compared by mean absolute difference and SSIM, objective values by relative
    tolerance; a missing image, run or value, or an image of another size, is a regression.
    In a terminal wide enough, tables; otherwise (piped, or a narrow terminal) a `# title` line
    per table and one line per row, its cells separated by tabs. Then a FAIL line per problem and
    a summary line.
    """
    from fvis.compare import Thresholds, tables  # lazy: start-up time
    from fvis.compare import compare as run_compare  # lazy: start-up time

    with user_errors():
        report = run_compare(
            run_dir, golden_dir, Thresholds(max_mad, min_ssim, rtol, exact), diff_dir
        )
    for table in tables(report):
        show(table, wrap=(len(table.columns) - 1,))  # the verdict may wrap
    for problem in report.problems:
        out.print(f"FAIL: {problem}", style="bold red", markup=False, soft_wrap=True)
    say(report.summary())
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
    """Write the mean Fourier spectrum of a folder of images.

    A magnitude template for `param.kind: maco` (`param.spectrum: FILE`).
    """
    from fvis.spectrum import folder_spectrum, save_spectrum  # lazy: start-up time

    if not folder.is_dir():
        fail(f"{folder}: not a folder")
    with user_errors():
        try:
            power, count = folder_spectrum(folder, size)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        save_spectrum(out_path, power, count)
    note(f"{count} images at {size}x{size} px")
    say(str(out_path))


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
    """Render a CPPN run's images again at another size.

    From the same weights (a run's cppn.safetensors), at any resolution.
    """
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
        say(str(path))


# ----------------------------------------------------------------------------- stats and probes

ReplaceOption = Annotated[bool, typer.Option("--force", "-f", help="Replace an existing file.")]


@contextmanager
def _new_file(path: Path, force: bool) -> Iterator[None]:
    """For the block, the folder of a file about to be written (created with its missing
    parents, and removed again where the block fails and leaves them empty); refused at once
    where a file is (unless `force`), where a folder is, or with a suffix other than
    .safetensors (configs read a file by its suffix)."""
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path}: the file must end in .safetensors (configs read it by its suffix)"
        )
    if path.is_dir():
        raise UserError(f"{path}: a folder; name the file to write with --out FILE")
    if path.exists() and not force:
        raise UserError(f"{path}: exists; pass --force to replace it, or --out FILE")
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot create the folder ({exc.strerror})") from None
    try:
        yield
    except BaseException:
        for folder in missing:  # innermost first; one holding a checkpoint stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _described(scan: Scan) -> dict[str, object]:
    """What a stats or probe file records of the pass that made it: model, data, layers."""
    return {key: scan.identity[key] for key in ("model", "data", "layers")}


@app.command()
def stats(
    config: ConfigArg,
    data: DataOption = None,
    layers: LayersOption = None,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The file to write (default: output.dir/NAME-stats.safetensors).",
            show_default=False,
        ),
    ] = None,
    force: ReplaceOption = False,
    resume: ResumeOption = False,
    batch: BatchOption = 64,
    workers: WorkersOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Write per-layer activation statistics over a data source.

    One pass over the images; every position of every image is one sample of a layer's channel
    vector. Per layer: LAYER.mean and LAYER.std of each channel, LAYER.covariance (divided by
    N), LAYER.whiten (its pseudo-inverse square root: a direction objective's transform:),
    LAYER.class_means and LAYER.class_counts (each class's mean activation vector); and the
    images' colour decorrelation matrix, color_correlation (param.decorrelate). Interrupted
    (Ctrl-C), the pass keeps its progress in a hidden file beside FILE: --resume goes on.
    """
    from fvis import stats as activation_stats  # lazy: start-up time

    loaded, scan = _scan(config, overrides, data, layers, batch, workers)
    cfg = loaded.config
    target = out_path or cfg.output.dir / f"{cfg.name}-stats.safetensors"
    checkpoint = activation_stats.checkpoint_for(target)
    with user_errors(), _new_file(target, force):
        if checkpoint.is_file() and not resume:
            note(f"note: {checkpoint}: an interrupted pass, started over (--resume goes on)")
        with _image_progress("stats", len(scan.images), quiet) as progress:
            result, outcome = activation_stats.gather(scan, checkpoint, resume, progress)
        activation_stats.write(target, result, **_described(scan))
        checkpoint.unlink(missing_ok=True)
    _skipped(outcome.skipped)
    for line in result.notes:
        note(line)
    table = Table(title=f"{target}: {result.images} images")
    for column in ("layer", "channels", "positions", "rank", "mean std"):
        table.add_column(column)
    for name, layer in result.layers.items():
        shape = (len(layer.mean), layer.positions, layer.rank)
        table.add_row(name, *map(str, shape), f"{layer.std.mean():.4g}")
    show(table)
    say(str(target))


@probe_app.command("train")
def probe_train(
    config: ConfigArg,
    data: DataOption = None,
    layers: LayersOption = None,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The file to write (default: output.dir/NAME-probe.safetensors).",
            show_default=False,
        ),
    ] = None,
    force: ReplaceOption = False,
    holdout: Annotated[
        float,
        typer.Option(
            "--holdout",
            min=0.0,
            max=0.9,
            help="Fraction of the labelled images held out to measure accuracy (drawn with "
            "the config's seed).",
        ),
    ] = 0.2,
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs",
            min=1,
            max=100_000,
            help="Most L-BFGS iterations (each over every training image at once).",
        ),
    ] = 500,
    l2: Annotated[
        float,
        typer.Option(
            "--l2",
            min=0.0,
            help="Weight decay: l2/2 x the squared weights (on standardized features) joins "
            "the loss.",
        ),
    ] = 1e-3,
    batch: BatchOption = 64,
    workers: WorkersOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train a linear probe per layer on its pooled activations.

    Which class an image is, by multinomial logistic regression on the layer's activations
    averaged over positions (one vector per image), trained full-batch by L-BFGS on the
    labelled images (class = sub-folder or zoo label; unlabelled ones are left out); its
    accuracy is measured on a held-out fraction. Writes LAYER.weight [K, C] and LAYER.bias [K],
    which apply to raw pooled activations: weights for activation_weights and facet (key:
    LAYER.weight, index: CLASS). No --resume: an interrupted run starts over.
    """
    from fvis import probe  # lazy: start-up time

    loaded, scan = _scan(config, overrides, data, layers, batch, workers)
    cfg = loaded.config
    target = out_path or cfg.output.dir / f"{cfg.name}-probe.safetensors"
    with user_errors(), _new_file(target, force):
        with _image_progress("probe", len(scan.images), quiet) as progress:
            pooled, outcome = probe.gather(scan, progress)
        probes = probe.train(pooled, scan.images.classes, holdout, cfg.seed, l2, epochs)
        extra = {"holdout": holdout, "seed": cfg.seed, "l2": l2}
        probe.write(target, probes, **_described(scan), **extra)
    _skipped(outcome.skipped)
    for line in probes.notes:
        note(line)
    title = (
        f"{target}: {len(probes.classes)} classes, {probes.train_images} training and "
        f"{probes.heldout_images} held-out images"
    )
    table = Table(title=title)
    for column in ("layer", "channels", "train", "held-out", "iterations"):
        table.add_column(column)
    for name, layer in probes.layers.items():
        held = "-" if layer.heldout is None else f"{100 * layer.heldout:.1f} %"
        channels = str(layer.fit.weight.shape[1])
        iterations = str(layer.fit.iterations)
        table.add_row(name, channels, f"{100 * layer.train:.1f} %", held, iterations)
    show(table)
    say(str(target))


# ----------------------------------------------------------------------------- groups and atlases

LayerOption = Annotated[
    str,
    typer.Option(
        "--layer",
        "-l",
        help="The layer: a name from `fvis layers CONFIG` or the config's hooks.",
        metavar="L",
        show_default=False,
    ),
]
ImageOption = Annotated[
    Path | None,
    typer.Option("--image", "-i", help="The image to read.", metavar="IMG", show_default=False),
]


@app.command()
def groups(
    config: ConfigArg,
    layer: LayerOption,
    image: ImageOption = None,
    count: Annotated[
        int, typer.Option("--groups", "-k", min=1, max=12, help="Number of groups (K).")
    ] = 4,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Factor positions sampled over these images (zoo:NAME[:COUNT[:SEED]], a folder "
            "or imagefolder:ROOT) instead of the image's alone; --image then shows where the "
            "groups lie on it.",
            metavar="SOURCE",
            show_default=False,
        ),
    ] = None,
    per_image: Annotated[
        int,
        typer.Option("--per-image", min=1, max=4096, help="Positions sampled per image (--data)."),
    ] = 4,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Groups folder (default: output.dir/NAME-groups).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Replace a previous groups folder (the files fvis wrote in it)."
        ),
    ] = False,
    resume: ResumeOption = False,
    batch: BatchOption = 64,
    workers: WorkersOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Factor a layer into groups of channels that fire together.

    Non-negative matrix factorization of the layer's activations on an image (positions x
    channels), or on positions sampled over a dataset (--data), into K groups: each group's
    channel weights are rendered as a direction (batched, as a sweep), and groups.png shows the
    image with each group's map in its own colour beside the renders. Writes groups.png,
    groups.safetensors (channels [K, C], maps [K, h, w], sampled vectors) and groups.json.
    """
    from fvis import groups as neuron_groups  # lazy: start-up time
    from fvis import runs  # lazy: start-up time
    from fvis.models import build_network  # lazy: start-up time
    from fvis.scan import layer_specs  # lazy: start-up time

    if image is None and data is None:
        fail("fvis groups: pass --image IMG (the groups of one image), --data SOURCE, or both")
    scan: Scan | None = None
    if data is not None:
        options = {"per_image": per_image, "groups": count}
        loaded, scan = _scan(config, overrides, data, [layer], batch, workers, **options)
        network, spec = scan.network, scan.layers[layer]
    else:
        loaded = _load(config, overrides)
        with user_errors(loaded.source):
            network = build_network(loaded.config.model, config.parent)
            spec = layer_specs(network, [layer], loaded.config.hooks, "--layer")[layer]
        _user_code(loaded.config.model, loaded.source, ("model",))
    cfg = loaded.config
    folder = out_dir or cfg.output.dir / f"{cfg.name}-groups"
    settings = neuron_groups.Settings(
        layer, count, config, tuple(overrides or []), per_image, cfg.seed, data
    )
    with user_errors(loaded.source), runs.locked(folder):
        runs.claim_pass(folder, force, resume, neuron_groups.KIND)
        total = len(scan.images) if scan else 0
        with _image_progress(f"groups {cfg.name}", total, quiet or not scan) as progress:
            written = neuron_groups.run(
                network, spec, settings, folder, scan, image, resume, progress,
                None if quiet else note,
            )  # fmt: skip
    if written.outcome is not None:
        _skipped(written.outcome.skipped)
    factors, index = written.factors, written.index
    if not quiet:
        note(f"{cfg.name}: {count} groups of {layer}, reconstruction error {factors.error:.3f}")
    say(str(folder / neuron_groups.PICTURE))
    say(str(index))


@app.command()
def grid(
    config: ConfigArg,
    layer: LayerOption,
    image: Annotated[
        Path,
        typer.Option(
            "--image",
            "-i",
            help="The image whose activations are rendered (fitted to the model's input).",
            metavar="IMG",
            show_default=False,
        ),
    ],
    cells: Annotated[
        int | None,
        typer.Option(
            "--cells",
            "-n",
            help="Cells a side: the layer averaged into N x N cells (N x fewer along a side "
            "with fewer positions; at most 1,024 cells). Default: every position of a layer "
            "of at most 8x8, else 8 x 8 cells.",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    align: Annotated[
        float | None,
        typer.Option(
            "--align",
            help="Weight of the penalty on the activation difference of neighbouring cells "
            "(left/right, up/down); 0: none (default: 3).",
            metavar="W",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Grid folder (default: output.dir/NAME-grid).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            "-f",
            help="Replace a previous grid folder (the files fvis grid wrote in it).",
        ),
    ] = False,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Render what a layer sees at every place of an image.

    The layer's activations on IMG are averaged into cells, and every cell's activation vector
    is rendered as a direction (dot x cosine), all cells in one optimization whose items share
    part of their parameters (param.shared, default 0.5; --set param.shared=X) and pay for
    differing from their neighbours (--align), so the renders line up ("The Building Blocks of
    Interpretability", Olah et al. 2018). Writes grid.png (the image, its cells outlined,
    beside the renders in the layer's layout), grid.safetensors (the cells' vectors and the
    layout), grid.json, and the render's run folder, render/.
    """
    from fvis import grid as activation_grid  # lazy: start-up time
    from fvis import runs  # lazy: start-up time
    from fvis.build import build_plan  # lazy: start-up time
    from fvis.models import build_network  # lazy: start-up time
    from fvis.render import Renderer  # lazy: start-up time
    from fvis.scan import layer_specs  # lazy: start-up time

    align = activation_grid.ALIGN if align is None else align
    if not align >= 0:
        fail(f"--align {align}: expected 0 or more")
    start = time.perf_counter()
    loaded = _load(config, overrides)
    cfg = loaded.config
    with user_errors(loaded.source):
        network = build_network(cfg.model, config.parent)
        spec = layer_specs(network, [layer], cfg.hooks, "--layer")[layer]
        found = activation_grid.measure(network, layer, spec, image, cells)
    _user_code(cfg.model, loaded.source, ("model",))
    rows, cols = found.shape
    if found.pooled and not quiet:
        h, w = found.acts.shape[1:]
        note(f"{layer} is {h}x{w} on the image: averaged into {rows}x{cols} cells (--cells N)")
    folder = out_dir or cfg.output.dir / f"{cfg.name}-grid"
    record = activation_grid.Record(config, list(overrides or []), [], image, align)
    with user_errors(loaded.source), runs.locked(folder):
        runs.claim(folder, force, activation_grid.KIND)
        tensors = activation_grid.save_tensors(folder, found)
        record.render_overrides = activation_grid.render_overrides(
            cfg, record.overrides, tensors, found, align
        )
        render = _load(config, record.render_overrides)
        record.seconds["activations"] = round(time.perf_counter() - start, 3)
        run_dir = folder / activation_grid.RENDER
        with user_errors(render.source), runs.locked(run_dir):
            plan = build_plan(render.config, config.parent)
            renderer = Renderer(plan)
            runs.claim(run_dir, False)
            for loc, message in plan.warnings:
                note(f"{render.source.where(loc)}: warning: {message}")
            start = time.perf_counter()
            steps = render.config.optim.steps
            with _progress(f"grid {cfg.name}", steps, quiet) as report, _stop_on(renderer):
                result = runs.render_run(run_dir, render.config, plan, renderer, report)
            record.seconds["render"] = round(time.perf_counter() - start, 3)
            if result.failure:
                fail(f"{cfg.name}: {result.failure}", code=1)
            if result.stopped_by:
                note(f"{cfg.name}: interrupted; run the command again with --force")
                raise typer.Exit(128 + result.stopped_by)
            index = activation_grid.finish(folder, found, plan, render.config, result, record)
    if not quiet:
        note(
            f"{cfg.name}: {rows}x{cols} cells of {layer}, {result.steps_done} steps in "
            f"{result.seconds:.1f}s on {plan.device}"
        )
    say(str(folder / activation_grid.PICTURE))
    say(str(index))


@app.command()
def atlas(
    config: ConfigArg,
    layer: LayerOption,
    data: DataOption = None,
    grid: Annotated[
        int, typer.Option("--grid", help="Cells a side: an N x N grid (2 to 64).", metavar="N")
    ] = 20,
    per_image: Annotated[
        int,
        typer.Option(
            "--per-image",
            min=1,
            max=4096,
            help="Activation vectors kept per image: random positions, or with --class the "
            "positions that drive the class most.",
        ),
    ] = 1,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            min=10,
            max=100_000,
            help="Vectors laid out at most (t-SNE): a random subset of those kept, or with "
            "--class the strongest.",
        ),
    ] = 10_000,
    klass: Annotated[
        str | None,
        typer.Option(
            "--class",
            help="A class atlas: only positions whose activation drives this class's logit "
            "(attribution > 0); its index, or its name (the zoo model's, else the data's).",
            metavar="K",
            show_default=False,
        ),
    ] = None,
    logits: Annotated[
        str,
        typer.Option(
            "--logits",
            help="The layer of class scores [B, classes] that --class reads and the renders are "
            "classified by.",
            metavar="L",
        ),
    ] = "output",
    min_count: Annotated[
        int,
        typer.Option(
            "--min-count",
            min=1,
            max=100_000,
            help="Vectors a cell needs to be rendered; cells with fewer stay empty.",
        ),
    ] = 3,
    cell: Annotated[
        int, typer.Option("--cell", min=8, max=512, help="Pixels a side of a cell in atlas.png.")
    ] = 64,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", min=0, max=2**31 - 1, help="Seed of the sampled positions and the layout."
        ),
    ] = 0,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Atlas folder (default: output.dir/NAME-atlas).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Replace a previous atlas folder (the files fvis wrote in it)."
        ),
    ] = False,
    resume: ResumeOption = False,
    batch: BatchOption = 64,
    workers: WorkersOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Map a layer's activations over a dataset: an activation atlas.

    One pass keeps a few activation vectors per image (random positions, or with --class those
    that drive the class); t-SNE lays them out in 2-D, an N x N grid averages them per cell,
    and each cell with --min-count vectors or more is rendered as a direction (dot x cosine,
    batched, as a sweep). Writes atlas.png, atlas-labels.png (each cell's count and majority
    class), atlas.safetensors (directions, cells, the vectors and their layout) and atlas.json.
    Interrupted (Ctrl-C), the pass keeps a checkpoint and the renders done stay: --resume goes
    on.
    """
    from fvis import atlas as activation_atlas  # lazy: start-up time
    from fvis import runs  # lazy: start-up time
    from fvis.scan import layer_specs  # lazy: start-up time

    with user_errors():
        activation_atlas.check_options(grid, cell)
    options = {"per_image": per_image, "class": klass, "logits": logits, "seed": seed}
    loaded, scan = _scan(config, overrides, data, [layer], batch, workers, **options)
    cfg = loaded.config
    folder = out_dir or cfg.output.dir / f"{cfg.name}-atlas"
    with user_errors(loaded.source):
        names = activation_atlas.class_names(cfg.model, scan.images)
        target = activation_atlas.parse_class(klass, names)
        settings = activation_atlas.Settings(
            layer,
            grid=grid,
            per_image=per_image,
            samples=samples,
            target=target,
            logits=layer_specs(scan.network, [logits], cfg.hooks, "--logits")[logits],
            min_count=min_count,
            cell=cell,
            seed=seed,
            classes=names,
        )
        activation_atlas.check(scan, settings)
        with runs.locked(folder):
            runs.claim_pass(folder, force, resume, activation_atlas.KIND)
            with _image_progress(f"atlas {cfg.name}", len(scan.images), quiet) as progress:
                done = activation_atlas.collect(scan, settings, folder, resume, progress)
            _skipped(done.outcome.skipped)
            log = None if quiet else note
            written = activation_atlas.make(
                scan, settings, done, config, overrides or [], folder, log
            )
    for line in [] if quiet else written.summary(settings):
        note(f"{cfg.name}: {line}")
    say(str(written.picture))
    say(str(written.index))


# ----------------------------------------------------------------------------- the microscope


@app.command()
def microscope(
    config: ConfigArg,
    layers: LayersOption = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Dataset examples (and --groups, --atlas) over these images: "
            "zoo:NAME[:COUNT[:SEED]], a folder or imagefolder:ROOT (default: none).",
            metavar="SOURCE",
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            min=1,
            max=16,
            help="Renders per channel, seeds 0 to N-1 (2 or more: the page shows their "
            "diversity, mean pairwise 1 - SSIM).",
        ),
    ] = 1,
    top: Annotated[
        int, typer.Option("--top", "-k", min=1, max=100, help="Dataset examples per ranking.")
    ] = 9,
    groups: Annotated[
        int | None,
        typer.Option(
            "--groups",
            min=1,
            max=12,
            help="Neuron groups of each spatial layer over the data (needs --data).",
            metavar="K",
            show_default=False,
        ),
    ] = None,
    atlas: Annotated[
        int | None,
        typer.Option(
            "--atlas",
            min=2,
            max=64,
            help="An N x N activation atlas of each spatial layer over the data (needs --data).",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    attribution: Annotated[
        bool,
        typer.Option(
            "--attribution",
            help="Integrated-gradients maps of each unit on its top images (needs --data).",
        ),
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Site folder (default: output.dir/NAME-microscope).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            "-f",
            help="Render again a site made from another config (otherwise refused).",
        ),
    ] = False,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            min=1,
            max=4096,
            help="Channels per optimization (default: as many as fit, up to the device's best).",
            show_default=False,
        ),
    ] = None,
    workers: WorkersOption = None,
    overrides: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Render every channel of a model's layers into a static site.

    Each layer's channels are rendered as a sweep (every seed, batched); with --data, one pass
    finds every unit's dataset examples (--attribution: where its top images drive it;
    --groups, --atlas: each spatial layer's neuron groups and activation atlas). Then the
    site: index.html (the model and its layers), a page per layer (every channel, sortable by
    the objective reached) and a page per channel (its renders, curve, diversity, examples and
    the command that renders it). It opens from file:// (or `fvis serve SITE`). Run it again
    to add layers or seeds: what is there is kept.
    """
    import shlex  # lazy: start-up time
    import sys  # lazy: start-up time

    from fvis import microscope as site_builder  # lazy: start-up time
    from fvis.models import build_network  # lazy: start-up time

    if (groups or atlas or attribution) and data is None:
        fail("--groups, --atlas and --attribution read a dataset: pass --data SOURCE as well")
    loaded = _load(config, overrides)
    folder = out_dir or loaded.config.output.dir / f"{loaded.config.name}-microscope"
    with user_errors(loaded.source):
        given = _layer_list(layers, loaded.config)
    names = list(dict.fromkeys([*site_builder.built_layers(folder), *given]))
    scan: Scan | None = None
    if data is not None:
        loaded, scan = _scan(config, overrides, data, names, 64, workers)
        network = scan.network
    else:
        with user_errors(loaded.source):
            network = build_network(loaded.config.model, config.parent)
        _user_code(loaded.config.model, loaded.source, ("model",))
    cfg = loaded.config
    settings = site_builder.Settings(
        config,
        tuple(overrides or []),
        tuple(names),
        seeds=seeds,
        top=top,
        groups=groups,
        atlas=atlas,
        attribution=attribution,
        batch=batch,
        data=data,
        command=shlex.join(["fvis", *sys.argv[1:]]),
    )
    total = len(scan.images) if scan else 0
    with (
        user_errors(loaded.source),
        _image_progress(f"examples {cfg.name}", total, quiet or not scan) as progress,
    ):
        index = site_builder.run(
            settings, loaded, network, folder, scan, force, None if quiet else note, progress
        )
    say(str(index))


@app.command()
def serve(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A site folder that `fvis microscope --out SITE` wrote.",
            metavar="SITE",
            show_default=False,
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 listens on every interface.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")
    ] = 8000,
) -> None:
    """Serve a microscope's site over HTTP until Ctrl-C.

    Prints the address to open. The pages open from file:// just as well: a server is for a
    browser on another machine (with --host 0.0.0.0), or one that restricts local files.
    """
    from fvis import site  # lazy: start-up time

    with user_errors():
        site.serve(folder, host, port)


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


def main() -> None:
    """Entry point of the `fvis` console script and `python -m fvis`."""
    app()
