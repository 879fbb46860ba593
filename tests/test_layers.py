"""The import layers contract (pyproject.toml's [tool.importlinter]) holds, and catches an
upward import, naming it: checked with import-linter's `lint-imports` (a dev dependency)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(folder: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` run in `folder` on its pyproject.toml: the `fvis` it checks is the one in
    `folder` (lint-imports puts the working folder first on the import path)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def copy_project(tmp_path: Path) -> Path:
    """The package and its pyproject.toml (the contract) in a temporary folder."""
    shutil.copytree(ROOT / "fvis", tmp_path / "fvis", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_layers() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


def test_an_upward_import_fails_naming_it(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    ground_floor = project / "fvis" / "io.py"
    text = ground_floor.read_text()
    line = text.count("\n") + 1
    ground_floor.write_text(text + "import fvis.cli  # an upward import: io is the ground floor\n")
    done = lint_imports(project)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fvis.io is not allowed to import fvis.cli" in done.stdout
    assert f"fvis.io -> fvis.cli (l.{line})" in done.stdout


def test_function_local_imports_are_marked_lazy() -> None:
    """An import inside a function hides a dependency (and is how import circles are held
    shut): allowed only as a deliberate lazy import for start-up time, marked `# lazy:`."""
    unmarked = []
    for path in sorted((ROOT / "fvis").rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for function in ast.walk(ast.parse(text)):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                is_import = isinstance(node, ast.Import | ast.ImportFrom)
                if is_import and "# lazy:" not in lines[node.lineno - 1]:
                    unmarked.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unmarked, unmarked
