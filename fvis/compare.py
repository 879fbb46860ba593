"""Regression checks: a run's images and recorded objective values against a golden run's.

A golden folder holds what a later render must reproduce: PNGs (matched by relative path) and
the `run.json` / `sweep.json` of each run (their `final` numbers are compared). It may hold one
run, a sweep, or a tree of several runs; every PNG and every run in it is checked, and a run on
either side without its counterpart is a failure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table
from rich.text import Text

from fvis.curves import FILE as CURVES
from fvis.errors import UserError
from fvis.io import png_bytes, read_image, write_atomic
from fvis.writers import grid

RUN_FILES = ("run.json", "sweep.json")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2  # (K1 L)^2 with L = 1, the dynamic range of [0, 1] images (Wang et al. 2004)
SSIM_C2 = 0.03**2  # (K2 L)^2
ABS_TOL = 1e-6  # values this close pass whatever their relative difference (zeros, tiny terms)
DIFF_CELL = 128


@dataclass(frozen=True)
class Thresholds:
    """When a run still matches its golden.

    The defaults suit renders made on the golden's platform and versions: they pass a PNG
    re-encoded by another Pillow or a few 8-bit levels of rounding, and fail on any change that
    moved the optimization. Across platforms the optimization amplifies last-bit float
    differences into visible drift; the README gives looser values for that case.
    """

    max_mad: float = 0.01
    min_ssim: float = 0.95
    rtol: float = 0.01
    exact: bool = False


@dataclass
class ImageCheck:
    """One golden PNG against the run's PNG at the same relative path."""

    path: str
    mad: float | None = None
    ssim: float | None = None
    identical: bool = False
    problem: str | None = None
    diff: Path | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None


@dataclass
class ValueCheck:
    """One number of a golden `final` block against the run's number at the same JSON path."""

    file: str
    key: str
    golden: float | None
    run: float | None
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None

    @property
    def relative(self) -> float | None:
        """|run - golden| / max(|run|, |golden|); 0 when both are 0."""
        if self.golden is None or self.run is None:
            return None
        scale = max(abs(self.golden), abs(self.run))
        return abs(self.run - self.golden) / scale if scale else 0.0


@dataclass
class Report:
    """Everything compared, with the failures; `passed` when nothing regressed."""

    run_dir: Path
    golden_dir: Path
    diff_dir: Path
    thresholds: Thresholds
    images: list[ImageCheck] = field(default_factory=list)
    values: list[ValueCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        images = all(c.passed for c in self.images)
        return not self.problems and images and all(v.passed for v in self.values)

    def summary(self) -> str:
        """One line: what was compared and, on failure, what differs and where the diffs are."""
        images = [c for c in self.images if not c.passed]
        values = [c for c in self.values if not c.passed]
        counts = f"{len(self.images)} images, {len(self.values)} values"
        if self.passed:
            return f"ok: {self.run_dir} matches {self.golden_dir} ({counts})"
        parts = [f"{len(images)} of {len(self.images)} images"] if images else []
        parts += [f"{len(values)} of {len(self.values)} values"] if values else []
        parts += [f"{len(self.problems)} missing runs or files"] if self.problems else []
        where = f"; diff images in {self.diff_dir}" if any(c.diff for c in images) else ""
        return f"regression: {', '.join(parts)} differ from {self.golden_dir}{where}"


# ----------------------------------------------------------------------------- metrics


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """A normalized 2-D Gaussian [size, size] (float64), the window SSIM averages over."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean structural similarity of two [C, H, W] images in [0, 1] (Wang et al. 2004).

    Local means, variances and covariance are Gaussian-weighted (11 px, sigma 1.5) over every
    window inside the image ('valid', no padding; under 11 px, the window is the smaller side);
    SSIM = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)),
    averaged over positions, then over channels. 1 means identical; it is symmetric in a and b.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"ssim needs two [C, H, W] images of one shape, got {a.shape}, {b.shape}")
    size = min(SSIM_WINDOW, a.shape[1], a.shape[2])
    window = gaussian_window(size)[None, None]
    x, y = a.double()[:, None], b.double()[:, None]  # channels as a batch of grey images

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = mean(x), mean(y)
    var_x = mean(x * x) - mu_x**2
    var_y = mean(y * y) - mu_y**2
    cov = mean(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return float((num / den).mean(dim=(1, 2, 3)).mean())


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two images in [0, 1], over every pixel and channel."""
    return float((a.double() - b.double()).abs().mean())


# ----------------------------------------------------------------------------- images


def load_png(path: Path) -> tuple[torch.Tensor, bytes]:
    """An image file as [C, H, W] float64 in [0, 1] (grey stays 1 channel, others become RGB),
    with the file's bytes for exact comparison."""
    data = path.read_bytes()
    return read_image(path, None, dtype=torch.float64, data=data), data


def check_image(
    rel: str, run: Path, golden: Path, thresholds: Thresholds, diff_dir: Path
) -> ImageCheck:
    """Compare one PNG with its golden; on failure write golden | run | difference to diff_dir."""
    check = ImageCheck(rel)
    diff_path = diff_dir / rel
    try:
        diff_path.unlink(missing_ok=True)  # a diff left by an earlier failing compare
    except OSError as exc:
        raise UserError(f"{diff_path}: cannot remove the old diff image ({exc.strerror})") from None
    if not run.is_file():
        check.problem = "missing in run"
        return check
    g, g_bytes = load_png(golden)
    r, r_bytes = load_png(run)
    check.identical = g_bytes == r_bytes
    if g.shape != r.shape:
        check.problem = f"size {_shape(r)} != golden {_shape(g)}"
    else:
        check.mad, check.ssim = mad(r, g), ssim(r, g)
        if thresholds.exact:
            if not check.identical:
                check.problem = "bytes differ (--exact)"
        else:
            failed = [
                *(["MAD"] if check.mad > thresholds.max_mad else []),
                *(["SSIM"] if check.ssim < thresholds.min_ssim else []),
            ]
            check.problem = ", ".join(failed) or None
    if check.problem:
        try:
            diff_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = diff_path.parent
            raise UserError(f"{where}: cannot write diff images ({exc.strerror})") from None
        write_atomic(diff_path, diff_png(g, r))
        check.diff = diff_path
    return check


def diff_png(golden: torch.Tensor, run: torch.Tensor) -> bytes:
    """PNG of golden | run | |run - golden| amplified so that the largest difference is white.

    Images of different shapes are padded with black to a common one first.
    """
    channels = max(golden.shape[0], run.shape[0])
    h = max(golden.shape[1], run.shape[1])
    w = max(golden.shape[2], run.shape[2])

    def fit(t: torch.Tensor) -> torch.Tensor:
        t = t.expand(channels, -1, -1) if t.shape[0] == 1 else t
        return F.pad(t, (0, w - t.shape[2], 0, h - t.shape[1]))

    g, r = fit(golden).float(), fit(run).float()
    diff = (r - g).abs()
    peak = float(diff.max())
    gain = 1 / peak if peak > 0 else 1.0
    labels = ["golden", "run", f"|diff| x{gain:.3g}"]
    return png_bytes(grid([[g, r, diff * gain]], labels, [""], DIFF_CELL))


def _shape(image: torch.Tensor) -> str:
    c, h, w = image.shape
    return f"{w}x{h}" + ("" if c == 3 else f"x{c}")


# ----------------------------------------------------------------------------- values


def recorded_values(data: Any) -> dict[str, float]:
    """The numbers a run.json or sweep.json records about its images, by JSON path.

    Every `final` block (a run's objective and terms per batch item), and each sweep item's
    `objective` and `terms` (`items[key].objective`); timings and versions are left out.
    """
    out = final_values(data)
    items = data.get("items") if isinstance(data, dict) else None
    entries = items.items() if isinstance(items, dict) else enumerate(items or [])
    for key, item in entries:
        if isinstance(item, dict):
            for name in ("objective", "terms"):
                if name in item:
                    out.update(_numbers(item[name], f"items[{key}].{name}"))
    return out


def final_values(data: Any, prefix: str = "") -> dict[str, float]:
    """Every number inside each `final` block of a run.json / sweep.json, by its JSON path.

    A run's are `final.objective[i]` and `final.terms[name][i]` per batch item; a sweep's
    `final` blocks are found wherever they are nested.
    """
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            path = _join(prefix, key)
            if key == "final":
                out.update(_numbers(value, path))
            else:
                out.update(final_values(value, path))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            out.update(final_values(item, f"{prefix}[{i}]"))
    return out


def _numbers(data: Any, prefix: str) -> Iterator[tuple[str, float]]:
    if isinstance(data, bool):
        return
    if isinstance(data, int | float):
        yield prefix, float(data)
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _numbers(value, _join(prefix, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _numbers(item, f"{prefix}[{i}]")


def _join(prefix: str, key: object) -> str:
    name = str(key)
    if name.isidentifier():
        return f"{prefix}.{name}" if prefix else name
    return f"{prefix}[{name}]"


def check_values(
    rel: str, golden: dict[str, float], run: dict[str, float], rtol: float
) -> list[ValueCheck]:
    """Each golden number against the run's, within `rtol` (or ABS_TOL); a number on one side
    only (a term added or removed, another batch size) is a failure."""
    checks = []
    for key in [*golden, *(k for k in run if k not in golden)]:
        check = ValueCheck(rel, key, golden.get(key), run.get(key))
        if check.run is None:
            check.problem = "missing in run"
        elif check.golden is None:
            check.problem = "not in golden"
        elif not _close(check.golden, check.run, rtol):
            check.problem = "rel. diff"
        checks.append(check)
    return checks


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=ABS_TOL)


def load_json(path: Path) -> Any:
    """A run.json / sweep.json, or a one-line user error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError:  # an integer of more digits than Python converts
        raise UserError(f"{path}: not valid JSON (a number with too many digits)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def run_file_values(path: Path) -> dict[str, float]:
    """The recorded values (`recorded_values`) of a run.json or sweep.json, checked first to
    have the structure fvis writes: a file that is not a run's is a one-line user error naming
    it, not a run whose values all went missing (a regression)."""
    data = load_json(path)
    problem = (sweep_problem if path.name == "sweep.json" else run_problem)(data)
    if problem:
        raise UserError(
            f"{path}: not a {path.name} written by fvis: {problem}; render it again, or compare "
            "another folder"
        )
    try:
        return recorded_values(data)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a {path.name} written by fvis") from None


def run_problem(data: Any) -> str | None:
    """What is wrong with a run.json's structure (an object whose `final` block holds the
    objective per batch item and the terms by name), or None."""
    if not isinstance(data, dict):
        return f"the top level is {_kind(data)}, not an object"
    final = data.get("final")
    if not isinstance(final, dict):
        return (
            "`final` is missing" if final is None else f"`final` is {_kind(final)}, not an object"
        )
    if not _numbers_list(final.get("objective")):
        return f"`final.objective` is {_kind(final.get('objective'), True)}"
    terms = final.get("terms", {})
    if not isinstance(terms, dict):
        return f"`final.terms` is {_kind(terms)}, not an object"
    for name, values in terms.items():
        if not _numbers_list(values):
            return f"`final.terms[{name}]` is {_kind(values, True)}"
    return None


def sweep_problem(data: Any) -> str | None:
    """What is wrong with a sweep.json's structure (an object whose `items` maps each item's key
    to its file and objective), or None."""
    if not isinstance(data, dict):
        return f"the top level is {_kind(data)}, not an object"
    items = data.get("items")
    if not isinstance(items, dict | list):
        return (
            "`items` is missing" if items is None else f"`items` is {_kind(items)}, not an object"
        )
    entries = items.items() if isinstance(items, dict) else enumerate(items)
    for key, item in entries:
        if not isinstance(item, dict):
            return f"`items[{key}]` is {_kind(item)}, not an object"
        objective = item.get("objective", 0.0)
        if not (_number(objective) or _numbers_list(objective)):
            return f"`items[{key}].objective` is {_kind(objective)}, not a number"
        terms = item.get("terms", {})
        if not isinstance(terms, dict) or not all(
            _number(v) or _numbers_list(v) for v in terms.values()
        ):
            return f"`items[{key}].terms` is not an object of numbers"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers_list(value: Any) -> bool:
    return isinstance(value, list) and all(_number(v) for v in value)


def _kind(value: Any, numbers: bool = False) -> str:
    """A JSON value's type, as a user reads it ('a list', 'null'); with `numbers`, what is
    wrong with it as a list of numbers."""
    if numbers:
        if isinstance(value, list):
            return "a list holding something other than numbers"
        return f"{_kind(value)}, not a list of numbers"
    if value is None:
        return "missing (or null)"
    names = {bool: "a boolean", dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), "a number")


# ----------------------------------------------------------------------------- folders


def compare(
    run_dir: Path,
    golden_dir: Path,
    thresholds: Thresholds | None = None,
    diff_dir: Path | None = None,
) -> Report:
    """Check a run folder (one run, a sweep, or a tree of runs) against its golden folder.

    Every PNG under golden_dir must exist under run_dir at the same relative path and match;
    every folder holding a run.json or sweep.json is a run, which must exist on both sides, with
    the same recorded numbers (`recorded_values`). Missing folders and a run folder without any
    run file are user errors; everything else that differs is reported, never raised.
    """
    thresholds = thresholds or Thresholds()
    for root in (run_dir, golden_dir):
        if not root.is_dir():
            raise UserError(f"{root}: no such folder")
    diff_dir = diff_dir if diff_dir is not None else run_dir / "diff"
    if diff_dir.exists() and not diff_dir.is_dir():
        raise UserError(f"{diff_dir}: cannot write diff images (not a folder)")
    report = Report(run_dir, golden_dir, diff_dir, thresholds)
    golden_runs = _run_folders(golden_dir, diff_dir)
    pngs = _pngs(golden_dir, diff_dir)
    if not golden_runs and not pngs:
        raise UserError(f"{golden_dir}: nothing to compare (no PNG, run.json or sweep.json)")
    run_runs = _run_folders(run_dir, diff_dir)
    if "." in golden_runs and "." not in run_runs:
        raise UserError(
            f"{run_dir}: no run.json or sweep.json: not a run folder (GOLDEN_DIR {golden_dir} "
            "is one)"
        )
    for rel in sorted(golden_runs.keys() - run_runs.keys()):
        report.problems.append(f"{rel}: run missing in {run_dir}")
    for rel in sorted(run_runs.keys() - golden_runs.keys()):
        report.problems.append(f"{rel}: run has no golden in {golden_dir}")
    for png in pngs:
        report.images.append(
            check_image(png, run_dir / png, golden_dir / png, thresholds, diff_dir)
        )
    both = golden_runs.keys() & run_runs.keys()  # a run without golden is reported whole
    for png in sorted(set(_run_images(run_dir, both, diff_dir)) - set(pngs)):
        report.problems.append(f"{png}: image has no golden in {golden_dir}")
    for folder in sorted(golden_runs.keys() & run_runs.keys()):
        for name in golden_runs[folder]:
            rel = name if folder == "." else f"{folder}/{name}"
            if not (run_dir / rel).is_file():
                report.problems.append(f"{rel}: missing in {run_dir}")
                continue
            golden = run_file_values(golden_dir / rel)
            run = run_file_values(run_dir / rel)
            report.values += check_values(rel, golden, run, thresholds.rtol)
    return report


def _run_folders(root: Path, skip: Path) -> dict[str, list[str]]:
    """Folders under root (relative, '.' for root) holding run files, with the files they hold."""
    found: dict[str, list[str]] = {}
    for name in RUN_FILES:
        for path in root.rglob(name):
            if path.is_file() and not _inside(path, skip):
                found.setdefault(path.parent.relative_to(root).as_posix(), []).append(name)
    return found


def _pngs(root: Path, skip: Path) -> list[str]:
    """Relative paths of the PNGs under root, outside `skip` (the diff folder); curves.png is
    left out: a picture of the history run.json holds, its text drawn by matplotlib's fonts."""
    paths = (
        p for p in root.rglob("*.png") if p.is_file() and p.name != CURVES and not _inside(p, skip)
    )
    return sorted(p.relative_to(root).as_posix() for p in paths)


def _run_images(root: Path, runs: set[str], skip: Path) -> list[str]:
    """The final images (image_<i>.png) of the run folders `runs` under root: each needs a
    golden."""
    return [
        png
        for png in _pngs(root, skip)
        if re.fullmatch(r"image_\d+\.png", png.rpartition("/")[2])
        and (png.rpartition("/")[0] or ".") in runs
    ]


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


# ----------------------------------------------------------------------------- report


def tables(report: Report) -> list[Table]:
    """Rich tables of the report: one row per image, one per compared value."""
    limits = report.thresholds
    result = []
    if report.images:
        title = f"images: {report.run_dir} vs {report.golden_dir}"
        images = Table(title=title + (" (--exact: same bytes)" if limits.exact else ""))
        images.add_column("file", overflow="fold")
        mad_limit, ssim_limit = f" (<= {limits.max_mad:g})", f" (>= {limits.min_ssim:g})"
        images.add_column("MAD" + ("" if limits.exact else mad_limit), justify="right")
        images.add_column("SSIM" + ("" if limits.exact else ssim_limit), justify="right")
        images.add_column("verdict", overflow="fold")
        for c in report.images:
            verdict = _verdict(c.problem, c.identical)
            images.add_row(Text(c.path), _num(c.mad), _num(c.ssim), verdict)
        result.append(images)
    for file in dict.fromkeys(v.file for v in report.values):
        values = Table(title=f"{file}: recorded values (rtol {limits.rtol:g})")
        values.add_column("value", overflow="fold")
        for column in ("golden", "run", "rel. diff"):
            values.add_column(column, justify="right")
        values.add_column("verdict", overflow="fold")
        for v in report.values:
            if v.file == file:
                values.add_row(
                    Text(v.key.removeprefix("final.")),
                    _num(v.golden, ".6g"),
                    _num(v.run, ".6g"),
                    _num(v.relative, ".1e"),
                    _verdict(v.problem, v.relative == 0),
                )
        result.append(values)
    return result


def _num(value: float | None, spec: str = ".4f") -> Text:
    return Text("-" if value is None else format(value, spec))


def _verdict(problem: str | None, identical: bool) -> Text:
    if problem:
        return Text(f"FAIL: {problem}", style="bold red")
    return Text("identical" if identical else "ok", style="green")
