"""Ray against the local backend: items (and images) per second, Ray's overhead per task,
scaling.

One sweep (the built-in model's conv3, `--over objective.channel=0:N`, a few items per
optimization) and one pass over data (`fvis examples`' running top-K of every unit of the
built-in model's layers over N generated images) are run three ways each, in a fresh process on
the same machine: the local backend with one thread, Ray with one worker, Ray with two (one
thread each: Ray gives a task of one CPU one thread). The overhead per task is the difference of
Ray's one worker and the local backend, divided by the tasks; the scaling efficiency is two
workers' rate over twice one worker's.

    python benchmarks/cluster.py             # writes benchmarks/cluster.md and prints the tables
    python benchmarks/cluster.py --items 8 --steps 16 --images 1000   # a quick look
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

PASS = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from fvis import examples
from fvis.cli.common import data_scan
config = Path(sys.argv[1])
images, batch, workers = map(int, sys.argv[2:])
backend = None
if workers:
    import ray
    from fvis.cluster import RayBackend
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    backend = RayBackend()
layers = ["conv1", "conv2", "conv3", "conv4", "logits"]
def ranked(count):
    _, scan = data_scan(config, [], f"zoo:shapes:{count}", layers, batch, 0, backend)
    kept = examples.TopK(examples.layers(scan, None), 9)
    scan.run(kept)
    return kept
ranked(batch * 4 * max(workers, 1))  # every process and worker warm
start = time.perf_counter()
ranked(images)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""
PASS_BATCH = 64


def measure(script: str, *args: object) -> float:
    """Seconds of `script` with `args` in a fresh process (it times itself: start-up and a
    first small run, which warms the process and every worker, excluded)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def table(unit: str, count: int, seconds: dict[str, float], digits: int) -> list[str]:
    """Rows of each way's seconds, rate (to `digits` decimals) and speed against the local
    backend."""
    local = seconds["local, 1 thread"]
    return [
        f"| backend | seconds | {unit}/s | vs local |",
        "|---|---|---|---|",
        *(
            f"| {name} | {s:.1f} | {count / s:.{digits}f} | {local / s:.2f}x |"
            for name, s in seconds.items()
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "cluster.md")
    args = parser.parse_args()
    ways = {"local, 1 thread": 0, "Ray, 1 worker": 1, "Ray, 2 workers": 2}
    sweep = {w: measure(RUN, CONFIG, args.items, args.steps, BATCH, n) for w, n in ways.items()}
    scan = {w: measure(PASS, CONFIG, args.images, PASS_BATCH, n) for w, n in ways.items()}
    tasks = -(-args.items // BATCH)
    shards = -(-args.images // (PASS_BATCH * max(1, -(-args.images // PASS_BATCH // 4))))
    local, one, two = sweep.values()
    pass_local, pass_one, pass_two = scan.values()
    text = "\n".join(
        [
            "# Ray against the local backend",
            "",
            f"Measured {datetime.date.today()} on {machine()}; `python benchmarks/cluster.py` "
            "(`make bench-cluster`): each way in a fresh process, one thread per worker; Ray's "
            "start-up excluded.",
            "",
            f"## A sweep: {args.items} channels of the built-in model's conv3, {args.steps} "
            f"steps, {BATCH} items per optimization ({tasks} tasks)",
            "",
            *table("items", args.items, sweep, 2),
            "",
            f"Ray's overhead per task: {(one - local) / tasks:+.2f} s (one worker against the "
            f"local backend, over {tasks} tasks). Scaling efficiency from one worker to two: "
            f"{(args.items / two) / (2 * args.items / one):.0%}.",
            "",
            f"## A pass over data: the running top-9 of all 186 units of the built-in model's "
            f"conv1-conv4 and logits over {args.images:,} generated images, {PASS_BATCH} a batch "
            f"(`fvis examples`' pass, without its sheets; {shards} shards on one worker, twice "
            "as many on two)",
            "",
            *table("images", args.images, scan, 0),
            "",
            f"Ray's overhead per shard: {(pass_one - pass_local) / shards:+.2f} s (one worker "
            f"against the local backend, over {shards} shards). Scaling efficiency from one "
            f"worker to two: {(args.images / pass_two) / (2 * args.images / pass_one):.0%}.",
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
