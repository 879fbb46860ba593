"""A layer's activation space as a whole: groups, grid and atlas."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fvis.display import note, say

if TYPE_CHECKING:
    from fvis.scan import Scan

from fvis.cli.common import (
    AddressOption,
    BackendOption,
    BatchOption,
    ConfigArg,
    DataOption,
    ImageOption,
    LayerOption,
    QuietOption,
    ResumeOption,
    SetOption,
    WorkersOption,
    app,
    data_scan,
    fail,
    image_progress,
    load,
    note_skipped,
    note_user_code,
    ray_backend,
    step_progress,
    stop_on,
    user_errors,
)


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
    backend: BackendOption = "local",
    address: AddressOption = None,
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
    with user_errors():
        runner = ray_backend(backend, address)
    scan: Scan | None = None
    if data is not None:
        options = {"per_image": per_image, "groups": count}
        loaded, scan = data_scan(
            config, overrides, data, [layer], batch, workers, runner, **options
        )
        network, spec = scan.network, scan.layers[layer]
    else:
        loaded = load(config, overrides)
        with user_errors(loaded.source):
            network = build_network(loaded.config.model, config.parent)
            spec = layer_specs(network, [layer], loaded.config.hooks, "--layer")[layer]
        note_user_code(loaded.config.model, loaded.source, ("model",))
    cfg = loaded.config
    folder = out_dir or cfg.output.dir / f"{cfg.name}-groups"
    settings = neuron_groups.Settings(
        layer, count, config, tuple(overrides or []), per_image, cfg.seed, data
    )
    with user_errors(loaded.source), runs.locked(folder):
        runs.claim_pass(folder, force, resume, neuron_groups.KIND)
        total = len(scan.images) if scan else 0
        with image_progress(f"groups {cfg.name}", total, quiet or not scan) as progress:
            written = neuron_groups.run(
                network, spec, settings, folder, scan, image, resume, progress,
                None if quiet else note, runner,
            )  # fmt: skip
    if written.outcome is not None:
        note_skipped(written.outcome.skipped)
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
    loaded = load(config, overrides)
    cfg = loaded.config
    with user_errors(loaded.source):
        network = build_network(cfg.model, config.parent)
        spec = layer_specs(network, [layer], cfg.hooks, "--layer")[layer]
        found = activation_grid.measure(network, layer, spec, image, cells)
    note_user_code(cfg.model, loaded.source, ("model",))
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
        render = load(config, record.render_overrides)
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
            with step_progress(f"grid {cfg.name}", steps, quiet) as report, stop_on(renderer):
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
    backend: BackendOption = "local",
    address: AddressOption = None,
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
    with user_errors():
        runner = ray_backend(backend, address)
    loaded, scan = data_scan(config, overrides, data, [layer], batch, workers, runner, **options)
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
            with image_progress(f"atlas {cfg.name}", len(scan.images), quiet) as progress:
                done = activation_atlas.collect(scan, settings, folder, resume, progress)
            note_skipped(done.outcome.skipped)
            log = None if quiet else note
            written = activation_atlas.make(
                scan, settings, done, config, overrides or [], folder, log, runner
            )
    for line in [] if quiet else written.summary(settings):
        note(f"{cfg.name}: {line}")
    say(str(written.picture))
    say(str(written.index))
