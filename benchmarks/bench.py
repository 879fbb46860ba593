"""fvis against torch-lucent, and both against the floor, measured in one run.

For each case — (a) one channel of a mid layer, (b) one channel of an early layer, (c) a sweep
of 64 channels of the mid layer — on torchvision architectures with random weights at 224 px,
each tool renders with an FFT, colour-decorrelated parameterization and lucid's standard
transform stack. The floor is the bare forward of the network cut at the layer plus the
backward to the input, at the same batch size. Each measurement runs in its own process, so
its peak memory (max RSS) is its own; seconds per step are the difference between a long and
a short run, divided by the difference in steps, so set-up cost is left out.

    python benchmarks/bench.py            # writes benchmarks/results.md and prints the table
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

CASES = {
    # name: (architecture, layer, channels rendered together by fvis, lucent's layer name)
    "googlenet mid (inception4a)": ("googlenet", "inception4a", 1),
    "googlenet early (conv2)": ("googlenet", "conv2", 1),
    "googlenet sweep of 64 (inception4a)": ("googlenet", "inception4a", 16),
    "resnet50 mid (layer3)": ("resnet50", "layer3", 1),
    "resnet50 early (layer1)": ("resnet50", "layer1", 1),
    "resnet50 sweep of 64 (layer3)": ("resnet50", "layer3", 16),
}
SHORT, LONG = 3, 13
# lucent renders a sweep one channel at a time, so its time per channel is the same for any
# sweep length: two channels measure it.
LUCENT_SWEEP = 2
SIZE = 224


def _model(arch: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    return torchvision.models.get_model(arch, weights=None, **kwargs).eval()


def _timed(run, steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return time.perf_counter() - start


def fvis_case(arch: str, layer: str, batch: int) -> callable:
    from fvis.build import build_plan
    from fvis.config import Config
    from fvis.render import Renderer

    terms = [{"kind": "channel", "layer": layer, "channel": c, "batch": c} for c in range(batch)]

    def run(steps: int) -> None:
        config = Config.model_validate(
            {
                "device": "cpu",
                "model": {
                    "source": "torchvision",
                    "name": arch,
                    "weights": None,
                    "kwargs": {"aux_logits": False, "init_weights": True}
                    if arch == "googlenet"
                    else {},
                },
                "objective": {"kind": "sum", "terms": terms},
                "param": {"kind": "fft", "size": SIZE, "batch": batch},
                "optim": {"steps": steps, "thresholds": [steps], "redirected_relu": 0},
            }
        )
        Renderer(build_plan(config, Path.cwd())).run()

    return run


def lucent_case(arch: str, layer: str, batch: int) -> callable:
    from lucent.optvis import param, render, transform

    model = _model(arch)

    def run(steps: int) -> None:
        for channel in range(min(batch, LUCENT_SWEEP)):  # one channel after the other
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

    return run


def floor_case(arch: str, layer: str, batch: int) -> callable:
    from fvis.hooks import Capture

    model = _model(arch).requires_grad_(False)  # the floor: gradients to the input only

    def run(steps: int) -> None:
        with Capture(model, {layer}) as capture:
            for _ in range(steps):
                x = torch.rand(batch, 3, SIZE, SIZE, requires_grad=True)
                capture.run(x)[layer][:, 0].mean().backward()

    return run


def one(tool: str, case: str) -> dict[str, float]:
    """Seconds per step per image and peak RSS of one tool on one case (in this process)."""
    arch, layer, batch = CASES[case]
    run = {"fvis": fvis_case, "lucent": lucent_case, "floor": floor_case}[tool](arch, layer, batch)
    run(1)  # warm-up
    short, long = _timed(run, SHORT), _timed(run, LONG)
    images = min(batch, LUCENT_SWEEP) if tool == "lucent" else batch
    per_step = (long - short) / (LONG - SHORT) / images
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": per_step, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", nargs=2, metavar=("TOOL", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="cases to run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    rows = []
    for case in args.cases:
        figures = {}
        for tool in ("floor", "fvis", "lucent"):
            done = subprocess.run(
                [sys.executable, __file__, "--one", tool, case],
                capture_output=True,
                text=True,
                check=True,
            )
            figures[tool] = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((case, figures))
        print(_row(case, figures), flush=True)
    table = _table(rows)
    args.out.write_text(table)
    print(table)


def _row(case: str, f: dict[str, dict[str, float]]) -> str:
    fv, lu, fl = f["fvis"]["seconds"], f["lucent"]["seconds"], f["floor"]["seconds"]
    return (
        f"| {case} | {fl:.4f} | {fv:.4f} | {lu:.4f} | {lu / fv:.2f}x | {fv / fl:.2f}x | "
        f"{f['fvis']['peak_mb']:.0f} | {f['lucent']['peak_mb']:.0f} |"
    )


def _table(rows: list) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    head = [
        "# fvis vs torch-lucent",
        "",
        f"Machine: {cpu}, {threads} threads, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}."
        f" Random weights, {SIZE} px, FFT + decorrelated colour, lucid's standard transforms;"
        f" seconds per step per image from the difference of {LONG}- and {SHORT}-step runs.",
        "Reproduce with `make bench`.",
        "",
        "| case | floor s/step | fvis s/step | lucent s/step | fvis speed-up | fvis / floor "
        "| fvis peak MB | lucent peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + [_row(case, f) for case, f in rows]) + "\n"


if __name__ == "__main__":
    main()
