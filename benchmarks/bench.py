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

On a CPU each measurement runs in its own process, so that its peak memory (max RSS) is its
own; on a GPU the peak (`torch.cuda.max_memory_allocated`) is reset before each measurement,
and all of them but `compile: true`'s run in one process, which spares dozens of start-ups.
Seconds per step are the difference between a long and a short run (the fastest of three
each) divided by the difference in steps, so set-up and compile time are left out.

On a GPU a fourth table times sweeps at batches of 8 to 128 images: the evidence for the
largest batch `fvis sweep` takes there (`fvis.sweep.MAX_BATCH`).

Each device's tables go under their own heading in results.md (`## On a CPU`, `## On a GPU`),
rewritten after every row, so that an interrupted run keeps what it measured and a run on one
device leaves the other's tables as they were.

A third table measures start-up: whole processes as a user runs them, each fresh, timed from
start to exit, with the peak memory the kernel reports for the process (max RSS, interpreter
start and exit included, which the in-process figures above leave out): a 1-step `fvis render`
of the built-in model (fvis only: lucent has no loader for it), and a 1-step render of one
inception4a channel by `fvis render` and by lucent's equivalent script.

    python benchmarks/bench.py               # this device's tables and the start-up table
    python benchmarks/bench.py --startup     # only the start-up table, replaced in results.md
    python benchmarks/bench.py --no-startup  # this device's tables only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from fvis.config import Config
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
# A GPU is used well only by a batch: its options are measured on sweeps too.
GPU_OPTION_CASES = [*OPTION_CASES, "googlenet mid, sweep of 64", "resnet50 mid, sweep of 64"]
# The sweep-batch table (GPU only): seconds per image of these cases at these batches.
BATCH_CASES = ["googlenet mid (inception4a)", "resnet50 mid (layer3)"]
BATCHES = (8, 16, 32, 64, 128)
COMPILE_TIMEOUT = 300  # seconds a `compile: true` measurement may take, compilation included
SHORT, LONG = 3, 13
REPEATS = 3  # the fastest of three runs of each length: other processes only ever add time
# lucent renders a sweep one channel at a time, so its time per channel is the same for any
# sweep length: two channels measure it.
LUCENT_SWEEP = 2
SIZE = 224
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DEVICE_HEADING = "## On a GPU" if DEVICE.type == "cuda" else "## On a CPU"
SWEEP_BATCH = MAX_BATCH[DEVICE.type]  # what `fvis sweep` takes when memory allows
TOOLS = ("floor", "fvis's network", "fvis", "lucent")
Run = Callable[[int], None]

# The start-up table: the median of STARTUP_RUNS fresh processes of each kind, run in turns.
STARTUP_RUNS = 5
STARTUP_STEPS = 1
STARTUP_CASE = "googlenet mid (inception4a)"
STARTUP_HEADING = "## Start-up and whole-process memory"
ZOO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
# lucent's equivalent of `fvis render` on STARTUP_CASE: the model of `_model`, rendered by
# render_vis as in `lucent_case` (it returns the images; nothing is written).
LUCENT_SCRIPT = """\
import sys

import torch
import torchvision
from lucent.optvis import param, render, transform

arch, layer, size, steps, device = sys.argv[1:]
kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
torch.manual_seed(0)
model = torchvision.models.get_model(arch, weights=None, **kwargs)
model = model.eval().requires_grad_(False).to(device)
render.render_vis(
    model,
    f"{layer}:0",
    param_f=lambda: param.image(int(size), fft=True, decorrelate=True),
    transforms=transform.standard_transforms,
    thresholds=(int(steps),),
    preprocess=False,
    progress=False,
    show_image=False,
)
"""


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


def fvis_config(arch: str, layer: str, channel: int, options: dict | None = None) -> dict:
    """The config of fvis's render of one channel of `layer`."""
    return {
        "device": DEVICE.type,
        "model": {"source": "torchvision", "name": arch, "weights": None, "kwargs": _kwargs(arch)},
        "objective": {"kind": "channel", "layer": layer, "channel": channel},
        "param": {"kind": "fft", "size": SIZE},
        "optim": {"redirected_relu": 0, **(options or {})},
    }


class _Item(NamedTuple):
    """One image of a sweep, as `fvis.build.build_plan` takes it."""

    key: str
    config: Config


def fvis_case(arch: str, layer: str, batch: int, options: dict | None = None) -> Run:
    """fvis's render loop on a plan built once (so a compiled network compiles once): channels
    0..batch-1 of `layer` as the batch items of one sweep optimization, as `fvis sweep` packs
    them."""
    from fvis.build import build_plan
    from fvis.render import Renderer

    configs = [Config.model_validate(fvis_config(arch, layer, c, options)) for c in range(batch)]
    items = [_Item(str(c), config) for c, config in enumerate(configs)]
    plan = build_plan(configs[0], Path.cwd(), items if batch > 1 else ())

    def run(steps: int) -> None:
        optim = configs[0].optim.model_copy(update={"steps": steps, "thresholds": [steps]})
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


def one(tool: str, case: str, option: str = "defaults", batch: str = "") -> dict[str, float]:
    """Seconds per step per image and peak memory of one tool on one case (in this process),
    with one of fvis's OPTIONS, and at `batch` images per optimization if given."""
    arch, layer, channels = CASES[case]
    size = int(batch) if batch else _batch(channels, tool)
    if tool == "fvis":
        settings = {label: settings for label, settings, _ in OPTIONS}
        run = fvis_case(arch, layer, size, settings[option])
    elif tool == "lucent":
        run = lucent_case(arch, layer, size)
    else:
        run = floor_case(arch, layer, size, as_fvis_runs_it=tool == "fvis's network")
    run(1)  # warm-up (and compilation)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    short = min(_timed(run, SHORT) for _ in range(REPEATS))
    long = min(_timed(run, LONG) for _ in range(REPEATS))
    if DEVICE.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        del run
        torch.cuda.empty_cache()  # the next measurement in this process starts from nothing
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": (long - short) / (LONG - SHORT) / size, "peak_mb": peak}


def _timed(run: Run, steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return time.perf_counter() - start


def _measure(*args: str) -> dict[str, float]:
    """`one(*args)`: in a fresh process on a CPU (max RSS is per process) and for
    `compile: true` (which may take minutes, cut at COMPILE_TIMEOUT); else in this one."""
    if DEVICE.type == "cuda" and "compile: true" not in args:
        return one(*args)
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--one", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMPILE_TIMEOUT if "compile: true" in args else None,
        )
    except subprocess.TimeoutExpired:
        return {"seconds": math.nan, "peak_mb": math.nan}
    if done.returncode:
        raise SystemExit(f"{' / '.join(args)} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def startup_processes(folder: Path, steps: int = STARTUP_STEPS) -> dict[str, list[str]]:
    """The command lines of the start-up table (run folders and the config go in `folder`)."""
    arch, layer, _ = CASES[STARTUP_CASE]
    config = folder / f"{arch}-{layer}.yaml"  # JSON is YAML
    config.write_text(json.dumps(fvis_config(arch, layer, 0, {"steps": steps})))
    python = sys.executable
    render = [python, "-m", "fvis", "render", "--force", "--quiet"]  # what `fvis` runs
    zoo = [str(ZOO_CONFIG), "--set", f"optim.steps={steps}", "--out", str(folder / "zoo")]
    lucent = [LUCENT_SCRIPT, arch, layer, str(SIZE), str(steps), DEVICE.type]
    return {
        "import torch": [python, "-c", "import torch"],
        "import torch, torchvision": [python, "-c", "import torch, torchvision"],
        "fvis zoo": [*render, *zoo],
        "fvis case": [*render, str(config), "--out", str(folder / "case")],
        "lucent case": [python, "-c", *lucent],
    }


def process(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and max RSS in MB of one fresh process (the kernel's figure, from wait4)."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip()[-2000:]
            raise SystemExit(f"{' '.join(argv[:4])}... failed:\n{tail}")
    kilobytes = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS
    return seconds, kilobytes / 1024


def startup(runs: int = STARTUP_RUNS, steps: int = STARTUP_STEPS) -> dict[str, dict[str, float]]:
    """Median wall seconds and max RSS of each start-up process, `runs` of each, in turns (so
    that other load on the machine weighs on every kind alike)."""
    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        processes = startup_processes(Path(folder), steps)
        for _ in range(runs):
            for name, argv in processes.items():
                samples.setdefault(name, []).append(process(argv))
                print(f"{name}: {samples[name][-1][0]:.2f} s, {samples[name][-1][1]:.0f} MB")
    return {
        name: {
            "seconds": statistics.median(s for s, _ in values),
            "peak_mb": statistics.median(mb for _, mb in values),
        }
        for name, values in samples.items()
    }


def startup_section(f: dict[str, dict[str, float]], runs: int = STARTUP_RUNS) -> list[str]:
    """The start-up table, with its date and machine."""
    arch, layer, _ = CASES[STARTUP_CASE]
    zoo, case, lucent = f["fvis zoo"], f["fvis case"], f["lucent case"]
    torch_only, torchvision = f["import torch"], f["import torch, torchvision"]
    steps = f"{STARTUP_STEPS} step" + ("s" if STARTUP_STEPS > 1 else "")
    return [
        STARTUP_HEADING,
        "",
        f"{datetime.date.today().isoformat()}. Machine: {machine()}. Whole processes, each"
        " fresh: wall seconds from start to exit and max RSS in MB (the peak resident memory"
        " the kernel reports for the process, interpreter start and exit included; the"
        " tables above measure memory inside a process that has run many steps). The median"
        f" of {runs} processes of each kind, run in turns. fvis: `fvis render CONFIG --force"
        " --quiet` (it writes grid.png, the images, run.json and config.yaml); lucent: a"
        " script that builds the same model and calls `render_vis` with the same"
        " parameterization and transforms (it writes nothing). Reproduce with"
        " `python benchmarks/bench.py --startup`.",
        "",
        "| process | fvis s | lucent s | fvis max RSS MB | lucent max RSS MB |",
        "|---|---|---|---|---|",
        f"| built-in `shapes` model, {steps} (configs/quickstart.yaml) | {zoo['seconds']:.2f}"
        f" | n/a | {zoo['peak_mb']:.0f} | n/a |",
        f"| {arch} {layer}, one channel, {SIZE} px, random weights, {steps} |"
        f" {case['seconds']:.2f} | {lucent['seconds']:.2f} | {case['peak_mb']:.0f} |"
        f" {lucent['peak_mb']:.0f} |",
        "",
        "lucent cannot load the built-in model: `render_vis` takes a model object, and building"
        " fvis's zoo model takes fvis. For scale, in the same run: `python -c 'import torch'`"
        f" takes {torch_only['seconds']:.2f} s and {torch_only['peak_mb']:.0f} MB,"
        f" `import torch, torchvision` {torchvision['seconds']:.2f} s and"
        f" {torchvision['peak_mb']:.0f} MB.",
    ]


def replace_section(text: str, section: list[str]) -> str:
    """`text` (a results.md) with its start-up section replaced by `section`, or with
    `section` appended when it has none; the other tables stay as they are."""
    before, found, after = text.partition(section[0] + "\n")
    rest = after.partition("\n## ")[2] if found else ""
    body = "\n".join(section) + "\n"
    if not found:
        return text.rstrip("\n") + "\n\n" + body
    return before + body + ("\n## " + rest if rest else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="cases to run")
    parser.add_argument("--no-options", action="store_true", help="skip the options table")
    parser.add_argument(
        "--startup",
        action="store_true",
        help="only the start-up table (whole processes), replaced in --out; the others kept",
    )
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up table")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    if not args.startup:
        device_tables(args.cases, not args.no_options, args.out)
    if args.startup or not args.no_startup:
        section = startup_section(startup())
        _write(args.out, section)
        print("\n".join(section))


def device_tables(cases: list[str], options: bool, out: Path) -> None:
    """This device's tables, its section of `out` rewritten after each row."""
    option_cases = GPU_OPTION_CASES if DEVICE.type == "cuda" else OPTION_CASES
    order = [(case, label) for case in option_cases for label, _, _ in OPTIONS]
    rows: list[str] = []
    batches: list[str] = []
    settings: dict[tuple[str, str], str] = {}

    def write(line: str) -> None:
        table = [settings[key] for key in order if key in settings]
        _write(out, device_section(rows, table, batches))
        print(line, flush=True)

    for case in cases:
        rows.append(_row(case, {tool: _measure(tool, case) for tool in TOOLS}))
        write(rows[-1])
    for case in BATCH_CASES if DEVICE.type == "cuda" else []:
        for batch in BATCHES:
            figures = _measure("fvis", case, "defaults", str(batch))
            batches.append(
                f"| {case} | {batch} | {figures['seconds']:.3g} | {figures['peak_mb']:.0f} |"
            )
            write(batches[-1])
    # The settings in turn, each on every case, so that compile (the slowest) comes last.
    defaults: dict[str, float] = {}
    for label, _, cuda_only in OPTIONS if options else []:
        for case in option_cases:
            if cuda_only and DEVICE.type != "cuda":
                settings[case, label] = f"| {case} | {label} | CUDA only | |"
                continue
            seconds = _measure("fvis", case, label)["seconds"]
            defaults.setdefault(case, seconds)  # "defaults" is OPTIONS' first label
            if math.isnan(seconds):
                settings[case, label] = f"| {case} | {label} | over {COMPILE_TIMEOUT} s | |"
            else:
                speed_up = defaults[case] / seconds
                settings[case, label] = f"| {case} | {label} | {seconds:.3g} | {speed_up:.2f}x |"
            write(settings[case, label])


def _write(out: Path, section: list[str]) -> None:
    """`out` with `section` in place of its own (see replace_section), written atomically."""
    previous = out.read_text() if out.is_file() else "\n".join(INTRO) + "\n"
    temporary = out.with_suffix(".tmp")
    temporary.write_text(replace_section(previous, section))
    temporary.replace(out)


def _row(case: str, f: dict[str, dict[str, float]]) -> str:
    fl, ff, fv, lu = (f[tool]["seconds"] for tool in TOOLS)
    return (
        f"| {case} | {fl:.3g} | {ff:.3g} | {fv:.3g} | {lu:.3g} | **{lu / fv:.2f}x** | "
        f"{fv / fl:.2f}x | {fv / ff:.2f}x | {f['fvis']['peak_mb']:.0f} | "
        f"{f['lucent']['peak_mb']:.0f} |"
    )


def machine() -> str:
    """The device the figures come from: the GPU, or the CPU's model name and threads."""
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


INTRO = [
    "# fvis vs torch-lucent",
    "",
    f"Random weights, {SIZE} px, FFT + decorrelated colour, lucid's standard transforms;"
    f" seconds per step per image from the difference of {LONG}- and {SHORT}-step runs (the"
    f" fastest of {REPEATS} each). fvis renders a sweep in batches, lucent one channel at a"
    " time. Each device's tables are under its own heading. Reproduce with `make bench`.",
]


def device_section(rows: list[str], options: list[str], batches: list[str]) -> list[str]:
    """This device's tables under DEVICE_HEADING: tools, sweep batches, device options."""
    memory = "peak GPU memory" if DEVICE.type == "cuda" else "peak memory (max RSS)"
    lines = [
        DEVICE_HEADING,
        "",
        f"{datetime.date.today().isoformat()}. Machine: {machine()}. A sweep goes"
        f" {SWEEP_BATCH} channels per batch; {memory} in MB.",
        "",
        "| case | floor | fvis's network | fvis | lucent | fvis speed-up | fvis / floor "
        "| fvis / fvis's network | fvis MB | lucent MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if batches:
        lines += [
            "",
            "### Sweep batch",
            "",
            "fvis's seconds per step per image when it optimizes this many images at once.",
            "",
            "| case | batch | fvis s/step/image | fvis MB |",
            "|---|---|---|---|",
            *batches,
        ]
    if options:
        cpu = DEVICE.type == "cpu"
        lines += [
            "",
            "### fvis's device options, one at a time",
            "",
            f"`channels_last: auto` means {str(cpu).lower()} on a {'CPU' if cpu else 'GPU'}:"
            f" the `channels_last: {str(cpu).lower()}` row and the `defaults` row measure the"
            " same thing, and their difference shows how much timings on the machine vary"
            " between runs.",
            "",
            "| case | optim setting | fvis s/step | speed-up over the defaults |",
            "|---|---|---|---|",
            *options,
        ]
    return lines


if __name__ == "__main__":
    main()
