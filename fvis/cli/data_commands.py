"""The data side: examples, stats and probe train, each one pass of a network over a data source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fvis.cli.common import (
    AddressOption,
    BackendOption,
    BatchOption,
    ConfigArg,
    DataOption,
    LayersOption,
    QuietOption,
    ReplaceOption,
    ResumeOption,
    SetOption,
    WorkersOption,
    app,
    data_scan,
    described,
    image_progress,
    new_file,
    note_skipped,
    parse_data,
    prior_app,
    probe_app,
    ray_backend,
    step_progress,
    user_errors,
)
from fvis.display import note, say, show
from fvis.errors import SpecError, UserError


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
    backend: BackendOption = "local",
    address: AddressOption = None,
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
    with user_errors():
        runner = ray_backend(backend, address)
    loaded, scan = data_scan(config, overrides, data, layers, batch, workers, runner, **options)
    cfg = loaded.config
    folder = out_dir or cfg.output.dir / f"{cfg.name}-examples"
    with user_errors(loaded.source):
        found = dataset_examples.layers(scan, wanted)
        with runs.locked(folder):
            runs.claim_pass(folder, force, resume, runs.EXAMPLES)
            found = dataset_examples.measure(scan, found)
            for layer in [] if quiet else found:
                note(layer.summary())
            with image_progress(f"examples {cfg.name}", len(scan.images), quiet) as progress:
                written = dataset_examples.run(scan, found, top, folder, resume, progress)
    note_skipped(written.outcome.skipped)
    if not quiet:
        note(f"{cfg.name}: {written.read} of {written.seen} images ranked")
    say(str(written.index))


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
    backend: BackendOption = "local",
    address: AddressOption = None,
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

    with user_errors():
        runner = ray_backend(backend, address)
    loaded, scan = data_scan(config, overrides, data, layers, batch, workers, runner)
    cfg = loaded.config
    target = out_path or cfg.output.dir / f"{cfg.name}-stats.safetensors"
    checkpoint = activation_stats.checkpoint_for(target)
    with user_errors(), new_file(target, force):
        if checkpoint.is_file() and not resume:
            note(f"note: {checkpoint}: an interrupted pass, started over (--resume goes on)")
        with image_progress("stats", len(scan.images), quiet) as progress:
            result, outcome = activation_stats.gather(scan, checkpoint, resume, progress)
        activation_stats.write(target, result, **described(scan))
        checkpoint.unlink(missing_ok=True)
    note_skipped(outcome.skipped)
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
    backend: BackendOption = "local",
    address: AddressOption = None,
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

    with user_errors():
        runner = ray_backend(backend, address)
    loaded, scan = data_scan(config, overrides, data, layers, batch, workers, runner)
    cfg = loaded.config
    target = out_path or cfg.output.dir / f"{cfg.name}-probe.safetensors"
    with user_errors(), new_file(target, force):
        with image_progress("probe", len(scan.images), quiet) as progress:
            pooled, outcome = probe.gather(scan, progress)
        probes = probe.train(pooled, scan.images.classes, holdout, cfg.seed, l2, epochs)
        extra = {"holdout": holdout, "seed": cfg.seed, "l2": l2}
        probe.write(target, probes, **described(scan), **extra)
    note_skipped(outcome.skipped)
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


@prior_app.command("train")
def prior_train(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="The images: zoo:NAME[:COUNT[:SEED]], imagefolder:PATH or a folder (its "
            "paths from the current folder).",
            show_default=False,
        ),
    ],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="The prior file to write (.safetensors).")
    ] = Path("prior.safetensors"),
    force: ReplaceOption = False,
    resume: ResumeOption = False,
    steps: Annotated[int, typer.Option(min=1, max=10_000_000, help="Training steps.")] = 1500,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the weights and the draws.")] = 0,
    size: Annotated[
        int, typer.Option(min=8, max=4096, help="Side the images are fitted to, in pixels.")
    ] = 64,
    crop: Annotated[
        int, typer.Option(min=8, max=4096, help="Side of the crops trained on, in pixels.")
    ] = 32,
    channels: Annotated[
        int, typer.Option(min=1, max=3, help="Image channels: 3 (RGB) or 1 (grey).")
    ] = 3,
    quiet: QuietOption = False,
) -> None:
    """Train a learned prior: a denoiser of a data source's images.

    A small residual CNN learns to remove Gaussian noise (standard deviation 0.02 to 0.25)
    from random crops of the images; the objective kind `prior` (file: FILE) then pulls a
    render toward what it leaves unchanged (regularization by denoising). A few minutes on a
    CPU for 64 px images; the same seed gives the same file on one machine. Interrupted
    (Ctrl-C), it keeps a checkpoint beside FILE: --resume goes on.
    """
    from fvis import prior  # lazy: start-up time
    from fvis.data import open_source  # lazy: start-up time

    settings = prior.Settings(steps=steps, seed=seed, size=size, crop=crop)
    with user_errors():
        if channels == 2:
            raise UserError("--channels: 3 (RGB) or 1 (grey)")
        if crop > size:
            raise UserError(f"--crop {crop}: larger than the images (--size {size})")
        spec = parse_data(data)
        try:
            images = open_source(spec, Path.cwd(), (size, size), channels)
        except SpecError as exc:
            raise UserError(f"--data {data}: {exc.message}") from None
        with new_file(out_path, force), step_progress("prior", steps, quiet, "loss") as progress:
            trained = prior.train(
                images,
                settings,
                out_path,
                resume,
                None if progress is None else lambda done, total, loss: progress(done, loss),
                {"data": spec.model_dump(mode="json"), "channels": channels},
            )
    if not quiet:
        note(
            f"{out_path}: loss {trained.loss:.4g}, denoising gain {trained.gain_db:.2f} dB on "
            f"held-out crops, {trained.seconds:.0f} s"
        )
    say(str(out_path))
