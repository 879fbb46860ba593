"""fvis against torch-lucent, and both against the floor, measured in one run.

For each case — one channel of a mid layer, one channel of an early layer, and sweeps of 64
channels of each — on torchvision architectures with random weights at 224 px, each tool
renders with an FFT, colour-decorrelated parameterization and lucid's standard transform stack.
fvis packs a sweep into batches (8 items on a CPU, 64 on a GPU); lucent renders one channel
after the other, as its API does.

The floor is the bare forward of the network cut at the layer plus the backward to the input,
at fvis's batch size: for the network as given (`floor`), and for the network as fvis runs it
by default (`fvis's network`: BatchNorms folded into the convolutions, channels-last on a CPU),
which shows what fvis adds on top of its own network (parameterization, transforms, objective,
Adam).

A second table measures fvis's device options one at a time against its defaults, on the mid
and early googlenet channels: the evidence for which of them are on by default.

Each measurement runs in its own process, so its peak memory is its own (max RSS on a CPU,
`torch.cuda.max_memory_allocated` on a GPU); seconds per step are the difference between a
long and a short run (the fastest of three each) divided by the difference in steps, so
set-up and compile time are left out.

    python benchmarks/bench.py            # writes benchmarks/results.md and prints the tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fvis.sweep import MAX_BATCH

# name: (architecture, layer, channels rendered)
CASES = {
    "googlenet mid (inception4a)": ("googlenet", "inception4a", 1),
    "googlenet early (conv2)": ("googlenet", "conv2", 1),
    "googlenet mid, sweep of 64": ("googlenet", "inception4a", 64),
    "googlenet early, sweep of 64": ("googlenet", "conv2", 64),
    "resnet50 mid (layer3)": ("resnet50", "layer3", 1),
    "resnet50 early (layer1)": ("resnet50", "layer1", 1),
    "resnet50 mid, sweep of 64": ("resnet50", "layer3", 64),
    "resnet50 early, sweep of 64": ("resnet50", "layer1", 64),
}
# fvis's optim settings measured against its defaults: (label, settings, CUDA only)
OPTIONS = [
    ("defaults", {}, False),
    ("fold_batchnorm: false", {"fold_batchnorm": False}, False),
    ("channels_last: false", {"channels_last": False}, False),
    ("channels_last: true", {"channels_last": True}, False),
    ("compile: true", {"compile": True}, False),
    ("cudnn_benchmark: true", {"cudnn_benchmark": True}, True),
    ("precision: bf16", {"precision": "bf16"}, True),
    ("precision: fp16", {"precision": "fp16"}, True),
]
OPTION_CASES = ["googlenet mid (inception4a)", "googlenet early (conv2)"]
SHORT, LONG = 3, 13
REPEATS = 3  # the fastest of three runs of each length: other processes only ever add time
# lucent renders a sweep one channel at a time, so its time per channel is the same for any
# sweep length: two channels measure it.
LUCENT_SWEEP = 2
SIZE = 224
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SWEEP_BATCH = MAX_BATCH[DEVICE.type]  # what `fvis sweep` takes when memory allows
TOOLS = ("floor", "fvis's network", "fvis", "lucent")
Run = Callable[[int], None]


def _batch(channels: int, tool: str) -> int:
    """Images optimized together: fvis and its floors batch a sweep, lucent does not."""
    if tool == "lucent":
        return min(channels, LUCENT_SWEEP)
    return min(channels, SWEEP_BATCH)


def _kwargs(arch: str) -> dict:
    return {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}


def _model(arch: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, **_kwargs(arch))
    return model.eval().requires_grad_(False).to(DEVICE)  # gradients to the input only


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def fvis_case(arch: str, layer: str, batch: int, options: dict | None = None) -> Run:
    """fvis's render loop on a plan built once (so a compiled network compiles once)."""
    from fvis.build import build_plan
    from fvis.config import Config
    from fvis.render import Renderer

    terms = [{"kind": "channel", "layer": layer, "channel": c, "batch": c} for c in range(batch)]
    config = Config.model_validate(
        {
            "device": DEVICE.type,
            "model": {
                "source": "torchvision",
                "name": arch,
                "weights": None,
                "kwargs": _kwargs(arch),
            },
            "objective": {"kind": "sum", "terms": terms},
            "param": {"kind": "fft", "size": SIZE, "batch": batch},
            "optim": {"redirected_relu": 0, **(options or {})},
        }
    )
    plan = build_plan(config, Path.cwd())

    def run(steps: int) -> None:
        optim = config.optim.model_copy(update={"steps": steps, "thresholds": [steps]})
        Renderer(dataclasses.replace(plan, schedule=optim.schedule)).run()
        _sync()

    return run


def lucent_case(arch: str, layer: str, batch: int) -> Run:
    from lucent.optvis import param, render, transform

    model = _model(arch)

    def run(steps: int) -> None:
        for channel in range(batch):  # one channel after the other
            render.render_vis(
                model,
                f"{layer}:{channel}",
                param_f=lambda: param.image(SIZE, fft=True, decorrelate=True),
                transforms=transform.standard_transforms,
                thresholds=(steps,),
                preprocess=False,
                progress=False,
                show_image=False,
            )
        _sync()

    return run


def floor_case(arch: str, layer: str, batch: int, as_fvis_runs_it: bool = False) -> Run:
    from fvis.fusion import fold_batchnorms
    from fvis.hooks import Capture

    model = _model(arch)
    if as_fvis_runs_it:
        fold_batchnorms(model)
        if DEVICE.type == "cpu":  # optim.channels_last: auto
            model = model.to(memory_format=torch.channels_last)

    def run(steps: int) -> None:
        with Capture(model, {layer}) as capture:
            for _ in range(steps):
                x = torch.rand(batch, 3, SIZE, SIZE, device=DEVICE, requires_grad=True)
                capture.run(x)[layer][:, 0].mean().backward()
        _sync()

    return run


def one(tool: str, case: str, option: str | None = None) -> dict[str, float]:
    """Seconds per step per image and peak memory of one tool on one case (in this process)."""
    arch, layer, channels = CASES[case]
    batch = _batch(channels, tool)
    if tool == "fvis":
        settings = {label: settings for label, settings, _ in OPTIONS}
        run = fvis_case(arch, layer, batch, settings[option] if option else None)
    elif tool == "lucent":
        run = lucent_case(arch, layer, batch)
    else:
        run = floor_case(arch, layer, batch, as_fvis_runs_it=tool == "fvis's network")
    run(1)  # warm-up (and compilation)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    short = min(_timed(run, SHORT) for _ in range(REPEATS))
    long = min(_timed(run, LONG) for _ in range(REPEATS))
    if DEVICE.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": (long - short) / (LONG - SHORT) / batch, "peak_mb": peak}


def _timed(run: Run, steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return time.perf_counter() - start


def _measure(*args: str) -> dict[str, float]:
    """`one(*args)` in a fresh process."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{' / '.join(args)} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="cases to run")
    parser.add_argument("--no-options", action="store_true", help="skip the options table")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    rows = []
    for case in args.cases:
        figures = {tool: _measure(tool, case) for tool in TOOLS}
        rows.append(_row(case, figures))
        print(rows[-1], flush=True)
    options = []
    for case in [] if args.no_options else OPTION_CASES:
        base = None
        for label, _, cuda_only in OPTIONS:
            if cuda_only and DEVICE.type != "cuda":
                options.append(f"| {case} | {label} | CUDA only | |")
                continue
            seconds = _measure("fvis", case, label)["seconds"]
            base = base or seconds
            options.append(f"| {case} | {label} | {seconds:.4f} | {base / seconds:.2f}x |")
            print(options[-1], flush=True)
    text = _document(rows, options)
    args.out.write_text(text)
    print(text)


def _row(case: str, f: dict[str, dict[str, float]]) -> str:
    fl, ff, fv, lu = (f[tool]["seconds"] for tool in TOOLS)
    return (
        f"| {case} | {fl:.4f} | {ff:.4f} | {fv:.4f} | {lu:.4f} | **{lu / fv:.2f}x** | "
        f"{fv / fl:.2f}x | {fv / ff:.2f}x | {f['fvis']['peak_mb']:.0f} | "
        f"{f['lucent']['peak_mb']:.0f} |"
    )


def _machine() -> str:
    if DEVICE.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU only"


def _document(rows: list[str], options: list[str]) -> str:
    memory = "peak GPU memory" if DEVICE.type == "cuda" else "peak memory (max RSS)"
    lines = [
        "# fvis vs torch-lucent",
        "",
        f"Machine: {_machine()}. Random weights, {SIZE} px, FFT + decorrelated colour, lucid's"
        f" standard transforms; seconds per step per image from the difference of {LONG}- and"
        f" {SHORT}-step runs (the fastest of {REPEATS} each). fvis renders a sweep"
        f" {SWEEP_BATCH} channels per batch, lucent one channel at a time; {memory} in MB."
        " Reproduce with `make bench`.",
        "",
        "| case | floor | fvis's network | fvis | lucent | fvis speed-up | fvis / floor "
        "| fvis / fvis's network | fvis MB | lucent MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if options:
        lines += [
            "",
            "## fvis's device options, one at a time",
            "",
            "On a CPU, `channels_last: true` is the default (`auto`): its row and the"
            " `defaults` row measure the same thing, and their difference shows how much"
            " timings on the machine vary between runs.",
            "",
            "| case | optim setting | fvis s/step | speed-up over the defaults |",
            "|---|---|---|---|",
            *options,
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
