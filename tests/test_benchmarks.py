"""The benchmark scripts still run against fvis's API: each one's core on a tiny case (their
figures come from `make bench` and `make drift`, never from the test suite)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

from fvis.config import Config

ROOT = Path(__file__).parent.parent


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_renders_a_case_with_fvis(workdir) -> None:
    bench = _script("bench")
    run = bench.fvis_case("googlenet", "conv2", 1)
    run(2)  # two steps of fvis's loop on a plan built once


def test_drift_compares_every_code_path(tmp_path: Path) -> None:
    drift = _script("drift")
    golden = ROOT / "tests" / "regression" / "goldens" / "class-logit"
    for path in drift.PATHS:
        for mode in drift.MODES:
            shutil.copytree(golden, tmp_path / path / mode / "class-logit")
    rows = drift.drift_rows(tmp_path)
    assert len(rows) == len(drift.MODES) * (len(drift.PATHS) - 1)
    assert all(row.endswith("| 0.0000 | 1.0000 | 0.0e+00 | yes |") for row in rows), rows


def test_bench_startup_table_replaces_only_its_own_section(tmp_path: Path) -> None:
    bench = _script("bench")
    processes = bench.startup_processes(tmp_path)
    config = Config.model_validate(
        json.loads((tmp_path / "googlenet-inception4a.yaml").read_text())
    )
    assert config.optim.steps == bench.STARTUP_STEPS
    assert all(argv[0] == sys.executable for argv in processes.values())
    seconds, megabytes = bench.process([sys.executable, "-c", "pass"])
    assert seconds > 0 and megabytes > 1
    figures = {name: {"seconds": 1.0, "peak_mb": 100.0} for name in processes}
    section = bench.startup_section(figures)
    others = "# fvis vs torch-lucent\n\n| a |\n\n## fvis's device options, one at a time\n\n| b |\n"
    once = bench.replace_section(others, section)
    assert once.startswith(others) and once.endswith("\n".join(section) + "\n")
    assert bench.replace_section(once, section) == once
    newer = bench.startup_section({name: {"seconds": 2.0, "peak_mb": 200.0} for name in figures})
    followed = bench.replace_section(once + "\n## later\n\nkept\n", newer)
    assert followed == others + "\n" + "\n".join(newer) + "\n\n## later\n\nkept\n"
