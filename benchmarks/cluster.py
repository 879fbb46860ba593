"""Sweeps on Ray against the local backend: items per second, Ray's overhead per task, scaling.

One sweep (the built-in model's conv3, `--over objective.channel=0:N`, a few items per
optimization) is run three ways, each in a fresh process on the same machine: the local backend
with one thread, Ray with one worker, Ray with two (one thread each: Ray gives a task of one CPU
one thread). The overhead per task is the difference of Ray's one worker and the local backend,
divided by the tasks; the scaling efficiency is two workers' rate over twice one worker's.

    python benchmarks/cluster.py             # writes benchmarks/cluster.md and prints the table
    python benchmarks/cluster.py --items 8 --steps 16   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from bench import machine  # the machine line every benchmark report opens with

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "objectives" / "channel.yaml"
BATCH = 4

RUN = """
import json, sys, tempfile, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from fvis.sweep import run_sweep
config = Path(sys.argv[1])
items, steps, batch, workers = map(int, sys.argv[2:])
backend = None
if workers:
    import ray
    from fvis.cluster import RayBackend
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    backend = RayBackend()
warm = Path(tempfile.mkdtemp())  # every process and worker warm: imports, first kernels
run_sweep(config, ["optim.steps=2"], [f"objective.channel=0:{2 * workers or 1}"], warm, 1,
          backend=backend)
with tempfile.TemporaryDirectory() as folder:
    start = time.perf_counter()
    run_sweep(config, [f"optim.steps={steps}"], [f"objective.channel=0:{items}"], Path(folder),
              batch, backend=backend)
    print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def measure(items: int, steps: int, workers: int) -> float:
    """Seconds of the sweep in a fresh process: local (workers 0) or on Ray's `workers` CPUs
    (start-up and a first tiny sweep, which warms the process and every worker, excluded)."""
    args = [str(CONFIG), str(items), str(steps), str(BATCH), str(workers)]
    done = subprocess.run(
        [sys.executable, "-c", RUN, *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "cluster.md")
    args = parser.parse_args()
    local = measure(args.items, args.steps, 0)
    one = measure(args.items, args.steps, 1)
    two = measure(args.items, args.steps, 2)
    tasks = -(-args.items // BATCH)
    overhead = (one - local) / tasks
    efficiency = (args.items / two) / (2 * args.items / one)
    rows = [
        "| backend | seconds | items/s | vs local |",
        "|---|---|---|---|",
        *(
            f"| {name} | {s:.1f} | {args.items / s:.2f} | {local / s:.2f}x |"
            for name, s in (
                ("local, 1 thread", local),
                ("Ray, 1 worker", one),
                ("Ray, 2 workers", two),
            )
        ),
    ]
    text = "\n".join(
        [
            "# Sweeps on Ray",
            "",
            f"Measured {datetime.date.today()} on {machine()}; `python benchmarks/cluster.py` "
            f"(`make bench-cluster`): a sweep of {args.items} channels of the built-in model's "
            f"conv3, {args.steps} steps, {BATCH} items per optimization ({tasks} tasks), each "
            "way in a fresh process, one thread per worker; Ray's start-up excluded.",
            "",
            *rows,
            "",
            f"Ray's overhead per task: {overhead:+.2f} s (one worker against the local backend, "
            f"over {tasks} tasks). Scaling efficiency from one worker to two: "
            f"{efficiency:.0%}.",
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
