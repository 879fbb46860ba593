"""How far the regression renders move between CPU code paths, and what float64 costs.

PyTorch's kernels (ATen), oneDNN and MKL each pick a code path per processor; the environment
variables of `PATHS` make this machine take the paths another processor would. Each path renders
every regression config in its own process, in float32 (`optim.float64=false`) and as the
configs say (float64 for most); the table compares each path's renders with this processor's
own: MAD and SSIM per image (as `fvis compare` computes them), the largest relative difference
of the final objective and term values, and whether the PNG bytes are identical. A second table
times float32 against float64 per step on the built-in model and on resnet18 at 224 px.

    python benchmarks/drift.py        # or: make drift
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "regression" / "configs"

# Must match the Makefile's CPU_CODE_PATHS and tests/test_regression.py's CPU_CODE_PATHS.
PATHS = {
    "native": {},
    "generic kernels": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "MKL compatible": {"MKL_CBWR": "COMPATIBLE"},
    "MKL AVX2": {"MKL_CBWR": "AVX2"},
}
MODES = {"float32": ["--set", "optim.float64=false"], "as configured": []}

TIMED = {
    "shapes, 64 px, batch 3": [],
    "resnet18 layer3, 224 px": [
        "--set",
        "model={source: torchvision, name: resnet18, weights: null}",
        "--set",
        "objective={kind: channel, layer: layer3, channel: 0}",
        "--set",
        "param={size: 224}",
        "--set",
        "optim.steps=24",
    ],
}


def render_all(out: Path, env: dict[str, str], extra: list[str], configs: Path = CONFIGS) -> None:
    renders = sorted(str(path) for path in configs.glob("*.yaml"))
    command = [sys.executable, "-m", "fvis", "render", *renders, "--out", str(out), "-q", *extra]
    subprocess.run(command, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)


def drift_rows(runs: Path) -> list[str]:
    from fvis.compare import final_values, load_json, mad, ssim
    from fvis.io import read_image

    rows = []
    for mode in MODES:
        native = runs / "native" / mode
        for path in list(PATHS)[1:]:
            for run in sorted(native.iterdir()):
                other = runs / path / mode / run.name
                a = final_values(load_json(run / "run.json"))
                b = final_values(load_json(other / "run.json"))
                rel = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-6) for k in a)
                for png in sorted(run.glob("image_*.png")):
                    x, y = read_image(png), read_image(other / png.name)
                    same = "yes" if png.read_bytes() == (other / png.name).read_bytes() else "no"
                    rows.append(
                        f"| {mode} | {path} | {run.name}/{png.name} | {mad(x, y):.4f} | "
                        f"{ssim(x, y):.4f} | {rel:.1e} | {same} |"
                    )
    return rows


def timing_rows(work: Path) -> list[str]:
    rows = []
    for case, extra in TIMED.items():
        per_step = {}
        for double in ("false", "true"):
            out = work / "timed" / f"{case[:6]}-{double}"
            command = [
                sys.executable, "-m", "fvis", "render", str(ROOT / "configs" / "quickstart.yaml"),
                "--out", str(out), "-q", *extra, "--set", f"optim.float64={double}",
            ]  # fmt: skip
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            per_step[double] = json.loads((out / "run.json").read_text())["seconds_per_step"]
        ratio = per_step["true"] / per_step["false"]
        rows.append(
            f"| {case} | {per_step['false'] * 1e3:.1f} | {per_step['true'] * 1e3:.1f} | "
            f"{ratio:.2f}x |"
        )
    return rows


def processor() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    print(f"{processor()}, torch {torch.__version__}, ATen capability {capability}\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for path, env in PATHS.items():
            for mode, extra in MODES.items():
                render_all(work / path / mode, env, extra)
        print("| renders | code path vs native | image | MAD | SSIM | largest value diff | "
              "same bytes |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        print("\n".join(drift_rows(work)))
        print("\n| case | float32 ms/step | float64 ms/step | cost |\n|---|---|---|---|")
        print("\n".join(timing_rows(work)))


if __name__ == "__main__":
    main()
