"""The microscope: a whole model's site, and a server for it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fvis.display import note, say

if TYPE_CHECKING:
    from fvis.scan import Scan

from fvis.cli.common import (
    AddressOption,
    BackendOption,
    ConfigArg,
    LayersOption,
    QuietOption,
    SetOption,
    WorkersOption,
    app,
    data_scan,
    fail,
    image_progress,
    layer_list,
    load,
    note_user_code,
    ray_backend,
    user_errors,
)


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
    backend: BackendOption = "local",
    address: AddressOption = None,
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
    loaded = load(config, overrides)
    folder = out_dir or loaded.config.output.dir / f"{loaded.config.name}-microscope"
    with user_errors(loaded.source):
        given = layer_list(layers, loaded.config)
    names = list(dict.fromkeys([*site_builder.built_layers(folder), *given]))
    with user_errors():
        runner = ray_backend(backend, address)
    scan: Scan | None = None
    if data is not None:
        loaded, scan = data_scan(config, overrides, data, names, 64, workers, runner)
        network = scan.network
    else:
        with user_errors(loaded.source):
            network = build_network(loaded.config.model, config.parent)
        note_user_code(loaded.config.model, loaded.source, ("model",))
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
        image_progress(f"examples {cfg.name}", total, quiet or not scan) as progress,
    ):
        index = site_builder.run(
            settings, loaded, network, folder, scan, force, None if quiet else note, progress,
            runner,
        )  # fmt: skip
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
