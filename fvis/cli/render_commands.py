"""Rendering and its neighbours: render, sweep, validate, objectives, attribute, schema, layers,
compare, spectrum and cppn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fvis.cli.common import (
    AddressOption,
    BackendOption,
    ConfigArg,
    ForceOption,
    OutOption,
    SetOption,
    app,
    fail,
    item_progress,
    load,
    model_target,
    note_user_code,
    ray_backend,
    step_progress,
    stop_on,
    user_errors,
    warn,
)
from fvis.config import (
    Config,
    objective_kinds,
)
from fvis.display import note, out, say, show
from fvis.errors import UserError


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
    loaded = load(config, overrides)
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
    from fvis import control as prior_control  # lazy: start-up time
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
            warn(loaded, plan.warnings)  # the run starts: a refusal above is one line
            with step_progress(str(cfg.name), cfg.optim.steps, quiet) as report, stop_on(renderer):
                result = runs.render_run(run_dir, cfg, plan, renderer, report, fresh=not resume)
            if result.status == "complete" and prior_control.wanted(cfg):
                with step_progress(f"{cfg.name} control", cfg.optim.steps, quiet) as report:
                    compared = prior_control.run(run_dir, cfg, base, renderer, report)
                if not quiet:
                    note(prior_control.summary(run_dir / prior_control.FILE, compared))
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
    backend: BackendOption = "local",
    address: AddressOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Render one image per value of a config path, batched.

    For instance every channel of a layer. Writes one PNG per item, sheet.png and sweep.json;
    items already there are skipped; a progress bar counts the items rendered. With --backend
    ray, each optimization is a task on a Ray cluster and this process writes what they send
    back.
    """
    from fvis.sweep import SHEET, run_sweep  # lazy: start-up time

    loaded = load(config, overrides)
    with user_errors(), item_progress(f"sweep {loaded.config.name}", quiet) as advance:
        runner = ray_backend(backend, address)
        folder, _ = run_sweep(
            config,
            overrides or [],
            over,
            out_dir,
            batch,
            None if quiet else note,
            on_built=lambda: note_user_code(loaded.config, loaded.source),
            backend=runner,
            advance=advance,
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
    loaded = load(config, overrides)
    if deep:
        from fvis.build import build_plan  # lazy: start-up time

        with user_errors(loaded.source):
            warn(loaded, build_plan(loaded.config, config.parent).warnings)
    say(f"{config}: ok")


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
            note_user_code(cfg, source)
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

    base, spec = model_target(target)
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
