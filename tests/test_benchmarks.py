"""The benchmark scripts still run against fvis's API: each one's core on a tiny case (their
figures come from `make bench` and `make drift`, never from the test suite)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

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
