"""What the commands share: the Typer app, its sub-apps, the options several commands take,
the one-line user errors, progress bars and the data side's scan. Torch is imported lazily."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import BaseModel

from fvis.config import (
    Config,
    Loaded,
    Source,
    TorchvisionModelSpec,
    ZooModelSpec,
    load_config,
)
from fvis.display import err, note
from fvis.errors import SpecError, UserError
from fvis.factories import entry_points

if TYPE_CHECKING:
    from rich.progress import Progress

    from fvis.cluster import RayBackend
    from fvis.config.data import DataSpec
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


prior_app = typer.Typer(
    help="Learned priors: train a denoiser of a data source's images.", no_args_is_help=True
)


app.add_typer(prior_app, name="prior")


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


BackendOption = Annotated[
    str,
    typer.Option(
        "--backend",
        help="Where the work runs: local (this process) or ray (tasks on a Ray cluster: "
        "--address, else a local one; pip install 'fvis[ray]').",
        metavar="local|ray",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The Ray cluster to join (host:port, or auto for the one this machine is part "
        "of); default: a cluster of this machine's CPUs, for this command.",
        show_default=False,
    ),
]


def ray_backend(backend: str, address: str | None) -> RayBackend | None:
    """The backend --backend and --address name (for renders and passes over data): None
    for local."""
    if backend not in ("local", "ray"):
        fail(f"--backend {backend}: expected local or ray")
    if address and backend != "ray":
        fail("--address names a Ray cluster: pass --backend ray as well")
    if backend == "local":
        return None
    from fvis.cluster import RayBackend  # lazy: start-up time

    return RayBackend(address)


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


def load(path: Path, overrides: list[str] | None) -> Loaded:
    with user_errors():
        return load_config(path, overrides or [])


@contextmanager
def step_progress(
    name: str, steps: int, quiet: bool, measure: str = "objective"
) -> Iterator[Callable[[int, float], None] | None]:
    """A rich progress bar (step, the `measure` reached, speed) on stderr, or nothing when
    quiet."""
    if quiet:
        yield None
        return
    with progress_bar(measure + " {task.fields[score]}") as bar:
        task = bar.add_task(name, total=steps, score="-", rate="")

        def report(step: int, score: float) -> None:
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(
                task, completed=step, score=f"{score:.4g}", rate=f"{step / elapsed:.1f} steps/s"
            )

        yield report


def progress_bar(middle: str) -> Progress:
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


def warn(loaded: Loaded, warnings: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Print build warnings located like errors: `file:line: yaml.path: warning: ...`, after
    a notice for each place where the build ran the user's code (a build that failed says only
    why: one line)."""
    note_user_code(loaded.config, loaded.source)
    for loc, message in warnings:
        note(f"{loaded.source.where(loc)}: warning: {message}")


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


def data_scan(
    config: Path,
    overrides: list[str] | None,
    data: str | None,
    layers: list[str] | None,
    batch: int,
    workers: int | None,
    runner: RayBackend | None = None,
    **options: object,
) -> tuple[Loaded, Scan]:
    """A config's model set to read `layers` over a data source (--data, its paths from the
    current folder, else the config's `data:`, its paths from the config's folder), here or
    on `runner`'s cluster; `options` (the command's own) join what a checkpoint must match to
    be resumed (the backend does not: a pass goes on wherever it is resumed)."""
    import os  # lazy: start-up time

    from fvis.data import open_source  # lazy: start-up time
    from fvis.models import build_network, resolve_device  # lazy: start-up time
    from fvis.scan import Recipe, Scan, layer_specs  # lazy: start-up time

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
        names = layer_list(layers, cfg)
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
            Recipe(cfg.model, config.parent.resolve(), cfg.device),
            runner,
        )
    note_user_code(cfg.model, source, ("model",))
    return loaded, scan


def parse_data(text: str) -> DataSpec:
    """A --data SOURCE given without a config (its paths from the current folder)."""
    from pydantic import ValidationError  # lazy: start-up time

    from fvis.config.data import DATA  # lazy: start-up time

    try:
        return DATA.validate_python(text)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise UserError(f"--data {text}: {message}") from None


def layer_list(given: list[str] | None, config: Config) -> list[str]:
    """The layers named by --layers (comma-separated, repeatable), or the zoo model's."""
    from fvis import zoo  # lazy: start-up time

    names = [name.strip() for item in given or [] for name in item.split(",") if name.strip()]
    if names:
        return list(dict.fromkeys(names))
    if isinstance(config.model, ZooModelSpec):
        return list(zoo.get(config.model.name).layer_names)
    raise UserError("--layers: name the layers to read (`fvis layers CONFIG` lists them)")


@contextmanager
def image_progress(
    name: str, total: int, quiet: bool
) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar of images read (with images/s) on stderr, or nothing when quiet."""
    if quiet:
        yield None
        return
    with progress_bar("{task.percentage:>3.0f}%") as bar:
        task = bar.add_task(name, total=total, rate="")

        def advance(done: int, read: int) -> None:
            rate = read / (bar.tasks[task].elapsed or 1e-9)
            bar.update(task, completed=done, rate=f"{rate:.0f} images/s")

        yield advance


@contextmanager
def item_progress(name: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar of items rendered (with items/s) on stderr, started with the first
    items done (a command with nothing to render, or refused, shows none); nothing when
    quiet."""
    if quiet:
        yield None
        return
    import time  # lazy: start-up time

    bar = progress_bar("{task.percentage:>3.0f}%")
    tasks: list[Any] = []
    start = time.monotonic()

    def advance(done: int, total: int) -> None:
        if not tasks:
            bar.start()
            tasks.append(bar.add_task(name, total=total, rate=""))
        rate = done / max(time.monotonic() - start, 1e-9)
        bar.update(tasks[0], completed=done, total=total, rate=f"{rate:.2f} items/s")

    try:
        yield advance
    finally:
        if tasks:
            bar.stop()


def note_skipped(skipped: tuple[str, ...]) -> None:
    """A note on images a pass could not read (the first named)."""
    if skipped:
        note(f"note: {len(skipped)} unreadable images left out; the first: {skipped[0]}")


def note_user_code(config: BaseModel, source: Source, under: tuple[str, ...] = ()) -> None:
    """A notice line for each 'module:function' of the user's code a config (or its part at
    `under`) imports and runs: model factories, architectures, plugin objectives. Checkpoints
    cannot run code; these do."""
    for loc, target in entry_points(config, under):
        note(f"{source.where(loc)}: note: runs your code ({target}); use only code you trust")


def model_target(target: str):  # type: ignore[no-untyped-def]
    """(base folder, model spec) from a config path or a 'source:name' shorthand."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        loaded = load(path, None)
        note_user_code(loaded.config.model, loaded.source, ("model",))
        return path.parent, loaded.config.model
    source, _, name = target.partition(":")
    if source == "zoo" and name:
        return Path.cwd(), ZooModelSpec(name=name)
    if source == "torchvision" and name:
        return Path.cwd(), TorchvisionModelSpec(source="torchvision", name=name, weights=None)
    fail(f"{target}: expected a config file, zoo:NAME or torchvision:NAME")


ReplaceOption = Annotated[bool, typer.Option("--force", "-f", help="Replace an existing file.")]


@contextmanager
def new_file(path: Path, force: bool) -> Iterator[None]:
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


def described(scan: Scan) -> dict[str, object]:
    """What a stats or probe file records of the pass that made it: model, data, layers."""
    return {key: scan.identity[key] for key in ("model", "data", "layers")}


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


@contextmanager
def stop_on(renderer: Renderer) -> Iterator[None]:
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


def main() -> None:
    """Entry point of the `fvis` console script and `python -m fvis`."""
    app()
