"""`fvis examples` against the bare forward pass over the same data, and its memory at two sizes.

The bare forward is the floor: the built-in network (its preprocessing included) run over the
same DataLoader at the same batch size, with the same workers, generating the same `zoo:shapes`
images, and nothing else. `fvis examples` adds the hooks on every layer the zoo model lists
(conv1 to logits, 186 units) and the running top-9 and bottom-9 of every unit by mean and by
maximum. Its pass is timed alone; writing the results (186 sheets, the index) is timed apart,
since it does not grow with the data.

Each measurement runs in its own process, so its peak memory (max RSS) is its own; at 2,000 and
20,000 images, equal peaks show that memory does not grow with the data.

    python benchmarks/data.py            # writes benchmarks/data.md and prints the table
    python benchmarks/data.py --sizes 500 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench import machine  # the machine line every benchmark report opens with

ROOT = Path(__file__).parent.parent
BATCH = 64
WORKERS = 1
TOP = 9


def _scan(count: int):  # type: ignore[no-untyped-def]
    """The pass `fvis examples` makes over `count` zoo images, on every zoo layer."""
    from fvis.config import ZooModelSpec
    from fvis.config.data import DATA
    from fvis.data import open_source
    from fvis.models import build_network
    from fvis.scan import Scan
    from fvis.zoo import SHAPES

    network = build_network(ZooModelSpec(), ROOT)
    images = open_source(DATA.validate_python(f"zoo:shapes:{count}"), ROOT, (64, 64), 3)
    layers = {name: name for name in SHAPES.layer_names}
    return Scan(network, layers, images, BATCH, WORKERS)


def forward(count: int) -> dict[str, float]:
    """The floor: the network alone over the same loader."""
    from fvis.data import batches

    scan = _scan(count)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches(scan.images, BATCH, WORKERS):
            scan.network(batch.images)
    return {"seconds": time.perf_counter() - start}


def examples(count: int) -> dict[str, float]:
    """`fvis examples`' pass, then its writing, into a temporary folder."""
    import tempfile

    from fvis import examples as dataset_examples

    scan = _scan(count)
    found = dataset_examples.measure(scan, dataset_examples.layers(scan, None))
    kept = dataset_examples.TopK(found, TOP)
    start = time.perf_counter()
    outcome = scan.run(kept)
    passed = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        dataset_examples.write(Path(folder), scan, found, kept, outcome.seen)
        written = time.perf_counter() - start
    return {"seconds": passed, "write": written}


def measure(kind: str, count: int) -> dict[str, float]:
    """One measurement in a fresh process: its figures and its peak memory (MB)."""
    code = (
        "import json, resource, sys; sys.path.insert(0, 'benchmarks'); import data; "
        f"out = data.{kind}({count}); "
        "out['rss'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
        "print(json.dumps(out))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def best(kind: str, count: int, repeats: int) -> dict[str, float]:
    """The fastest of `repeats` runs (the peak memory of the largest)."""
    runs = [measure(kind, count) for _ in range(repeats)]
    fastest = min(runs, key=lambda r: r["seconds"])
    return {**fastest, "rss": max(r["rss"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data.md")
    args = parser.parse_args()
    rows = []
    for count in args.sizes:
        floor = best("forward", count, args.repeats)
        ours = best("examples", count, args.repeats)
        rows.append(
            f"| {count:,} | {count / floor['seconds']:.0f} | {count / ours['seconds']:.0f} "
            f"| {floor['seconds'] / ours['seconds']:.2f} | {ours['write']:.1f} "
            f"| {floor['rss']:.0f} | {ours['rss']:.0f} |"
        )
        print(rows[-1], file=sys.stderr)
    table = [
        "| images | bare forward, images/s | fvis examples pass, images/s | ratio | writing "
        "(186 sheets), s | peak memory, forward (MB) | peak memory, examples (MB) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(
        [
            "# fvis examples against the bare forward pass",
            "",
            f"Measured {datetime.date.today()} on {machine()}; `python benchmarks/data.py` "
            f"(`make bench-data`): the built-in model over `zoo:shapes:N`, batch {BATCH}, "
            f"{WORKERS} loader worker, every zoo layer, top {TOP}; the fastest of "
            f"{args.repeats} runs, each in its own process.",
            "",
            *table,
            "",
            "The ratio is the examples pass's images/s over the bare forward's (1 = no cost). "
            "Both read the same generated images: generating them one by one (each a pure "
            "function of its seed and index) is the limit of both.",
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
