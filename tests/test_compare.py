"""`fvis compare`: SSIM and MAD against hand computation, value tolerances, folder layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from torchvision.transforms.functional import pil_to_tensor

from fvis.compare import (
    SSIM_C1,
    SSIM_C2,
    Thresholds,
    check_values,
    compare,
    final_values,
    gaussian_window,
    mad,
    recorded_values,
    ssim,
)
from fvis.writers import LABEL_HEIGHT, LABEL_WIDTH


def _noise(seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _texture() -> torch.Tensor:
    """A smooth, non-periodic [1, 40, 40] pattern: shifting it changes it."""
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    return (0.5 + 0.4 * torch.sin(x * x / 90 + y / 5)).double()[None]


# ----------------------------------------------------------------------------- SSIM, MAD


def test_gaussian_window_is_normalized_and_peaks_in_the_middle() -> None:
    w = gaussian_window()
    assert w.shape == (11, 11)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-15)
    assert w.argmax() == 5 * 11 + 5
    # the ratio of neighbours follows exp(-d^2 / (2 sigma^2)) with sigma = 1.5
    assert float(w[5, 6] / w[5, 5]) == pytest.approx(math.exp(-1 / 4.5))


def test_ssim_of_identical_images_is_exactly_one() -> None:
    image = _noise(0)
    assert ssim(image, image.clone()) == 1.0


def test_ssim_of_two_flat_images_is_the_luminance_term() -> None:
    # no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1) everywhere
    a = torch.full((1, 16, 16), 0.5, dtype=torch.float64)
    b = torch.full((1, 16, 16), 0.6, dtype=torch.float64)
    expected = (2 * 0.5 * 0.6 + 0.0001) / (0.25 + 0.36 + 0.0001)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.983609, abs=1e-6)


def test_ssim_of_one_window_matches_the_formula_by_hand() -> None:
    a, b = _noise(1, (1, 11, 11)), _noise(2, (1, 11, 11))
    weights = [math.exp(-((i - 5) ** 2) / 4.5) for i in range(11)]
    total = sum(weights) ** 2
    pixels = [(i, j) for i in range(11) for j in range(11)]

    def weighted(f) -> float:  # type: ignore[no-untyped-def]
        return sum(weights[i] * weights[j] * f(i, j) for i, j in pixels) / total

    mu_a = weighted(lambda i, j: float(a[0, i, j]))
    mu_b = weighted(lambda i, j: float(b[0, i, j]))
    var_a = weighted(lambda i, j: (float(a[0, i, j]) - mu_a) ** 2)
    var_b = weighted(lambda i, j: (float(b[0, i, j]) - mu_b) ** 2)
    cov = weighted(lambda i, j: (float(a[0, i, j]) - mu_a) * (float(b[0, i, j]) - mu_b))
    expected = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    )
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_is_symmetric_and_averages_channels() -> None:
    a, b = _noise(3), _noise(4)
    assert ssim(a, b) == pytest.approx(ssim(b, a), rel=1e-12)
    flat_a = torch.full((1, 16, 16), 0.5, dtype=torch.float64)
    flat_b = torch.full((1, 16, 16), 0.6, dtype=torch.float64)
    texture = _noise(5, (1, 16, 16))
    two = ssim(torch.cat([texture, flat_a]), torch.cat([texture, flat_b]))
    assert two == pytest.approx((1 + ssim(flat_a, flat_b)) / 2, rel=1e-12)


def test_ssim_drops_with_more_noise_and_larger_shifts() -> None:
    image = _texture()
    noise = _noise(6, image.shape) - 0.5
    light = ssim(image, (image + 0.05 * noise).clamp(0, 1))
    heavy = ssim(image, (image + 0.4 * noise).clamp(0, 1))
    assert 1 > light > heavy
    one = ssim(image[:, :, 1:], image[:, :, :-1])
    three = ssim(image[:, :, 3:], image[:, :, :-3])
    assert 1 > one > three
    assert ssim(image, 1 - image) < 0  # inverted structure: negative covariance


def test_ssim_of_images_smaller_than_the_window_uses_one_window() -> None:
    a = torch.full((1, 5, 7), 0.2, dtype=torch.float64)
    b = torch.full((1, 5, 7), 0.4, dtype=torch.float64)
    assert ssim(a, b) == pytest.approx((2 * 0.08 + SSIM_C1) / (0.04 + 0.16 + SSIM_C1), rel=1e-12)


def test_ssim_rejects_different_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 15))


def test_mad_by_hand() -> None:
    black = torch.zeros(3, 4, 4)
    assert mad(black, torch.full((3, 4, 4), 51 / 255)) == pytest.approx(0.2)
    half = black.clone()
    half[:, :2] = 1.0  # half the pixels differ by 1
    assert mad(black, half) == 0.5
    assert mad(half, black) == mad(black, half)


# ----------------------------------------------------------------------------- values


def _run_json(objective: list[float], terms: dict[str, list[float]]) -> dict:
    return {
        "status": "complete",
        "wall_seconds": 1.0,
        "initial": {"objective": [0.0] * len(objective), "terms": {}},
        "final": {"objective": objective, "terms": terms},
    }


def test_final_values_of_a_run_and_of_a_sweep() -> None:
    run = _run_json([1.5, 2.5], {"channel(conv3, 5)": [1.5, 2.5]})
    assert final_values(run) == {
        "final.objective[0]": 1.5,
        "final.objective[1]": 2.5,
        "final.terms[channel(conv3, 5)][0]": 1.5,
        "final.terms[channel(conv3, 5)][1]": 2.5,
    }
    sweep = {"items": [{"name": "a", "final": {"objective": 3.0}}, {"final": {"x": [4, True]}}]}
    assert final_values(sweep) == {"items[0].final.objective": 3.0, "items[1].final.x[0]": 4.0}


def test_values_within_rtol_pass_and_beyond_fail() -> None:
    golden = {"final.objective[0]": 10.0, "final.terms[a][0]": 0.0}
    close = check_values("run.json", golden, {**golden, "final.objective[0]": 10.09}, 0.01)
    assert all(c.passed for c in close)
    assert close[0].relative == pytest.approx(0.09 / 10.09)
    far = check_values("run.json", golden, {**golden, "final.objective[0]": 10.2}, 0.01)
    assert [c.problem for c in far] == ["rel. diff", None]
    tiny = check_values("run.json", golden, {**golden, "final.terms[a][0]": 5e-7}, 0.01)
    assert all(c.passed for c in tiny)  # zero against 5e-7: within the absolute tolerance


def test_a_term_on_one_side_only_fails() -> None:
    golden = {"final.terms[a][0]": 1.0, "final.terms[b][0]": 2.0}
    run = {"final.terms[a][0]": 1.0, "final.terms[c][0]": 2.0}
    checks = {c.key: c.problem for c in check_values("run.json", golden, run, 0.01)}
    assert checks == {
        "final.terms[a][0]": None,
        "final.terms[b][0]": "missing in run",
        "final.terms[c][0]": "not in golden",
    }


def test_nan_matches_only_nan() -> None:
    golden = {"v": math.nan}
    assert check_values("f", golden, {"v": math.nan}, 0.01)[0].passed
    assert not check_values("f", golden, {"v": 1.0}, 0.01)[0].passed


# ----------------------------------------------------------------------------- folders


def _png(path: Path, image: torch.Tensor, **info: str) -> None:
    """Write [C, H, W] in [0, 1] as an 8-bit PNG (optional text chunks change the bytes only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (image * 255).round().to(torch.uint8)
    pil = Image.fromarray(x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy())
    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_text(key, value)
    pil.save(path, pnginfo=meta)


def _run(folder: Path, images: list[torch.Tensor], objective: list[float]) -> Path:
    for i, image in enumerate(images):
        _png(folder / f"image_{i}.png", image)
    terms = {"class_logit(output, 1)": objective}
    (folder / "run.json").write_text(json.dumps(_run_json(objective, terms)))
    return folder


def test_a_run_against_a_copy_of_itself_passes(tmp_path: Path, cli) -> None:
    run = _run(tmp_path / "run", [_noise(0), _noise(1)], [3.0, 4.0])
    report = compare(run, run)
    assert report.passed
    assert [c.identical for c in report.images] == [True, True]
    assert len(report.values) == 4
    result = cli("compare", run, run)
    assert result.exit_code == 0, result.output
    assert f"ok: {run} matches {run} (2 images, 4 values)" in result.stdout


def test_changed_pixels_fail_and_write_a_side_by_side_diff(tmp_path: Path, cli) -> None:
    golden_image = _noise(0, (3, 16, 16))
    golden = _run(tmp_path / "golden", [golden_image], [3.0])
    changed = golden_image.clone()
    changed[:, :8] = 1.0  # the top half turns white
    run = _run(tmp_path / "run", [changed], [3.0])
    result = cli("compare", run, golden)
    assert result.exit_code == 1, result.output
    assert "FAIL: MAD, SSIM" in result.stdout
    assert f"regression: 1 of 1 images differ from {golden}" in result.stdout
    with Image.open(run / "diff" / "image_0.png") as diff:
        sheet = diff.convert("RGB")
    cell = 128  # 16 px images are upscaled 8x
    assert sheet.size == (LABEL_WIDTH + 3 * (cell + 2), LABEL_HEIGHT + cell + 2)

    def panel(k: int) -> torch.Tensor:
        x0 = LABEL_WIDTH + k * (cell + 2)
        tile = sheet.crop((x0, LABEL_HEIGHT, x0 + cell, LABEL_HEIGHT + cell))
        small = tile.resize((16, 16), Image.Resampling.NEAREST)
        return pil_to_tensor(small).permute(1, 2, 0).reshape(-1, 3).long()

    def pixels(image: torch.Tensor) -> torch.Tensor:
        return (image * 255).round().permute(1, 2, 0).reshape(-1, 3).long()

    assert torch.equal(panel(0), pixels(golden_image))
    assert torch.equal(panel(1), pixels(changed))
    difference = panel(2).reshape(16, 16, 3)
    assert int(difference[8:].max()) == 0  # unchanged bottom half: black
    assert int(difference[:8].max()) == 255  # the largest difference amplified to white


def test_stale_diff_images_are_removed_when_an_image_passes_again(tmp_path: Path) -> None:
    golden = _run(tmp_path / "golden", [_noise(0)], [1.0])
    run = _run(tmp_path / "run", [_noise(1)], [1.0])
    assert not compare(run, golden).passed
    assert (run / "diff" / "image_0.png").is_file()
    _run(run, [_noise(0)], [1.0])
    assert compare(run, golden).passed
    assert not (run / "diff" / "image_0.png").exists()


def test_a_size_mismatch_is_a_regression_not_a_crash(tmp_path: Path, cli) -> None:
    golden = _run(tmp_path / "golden", [_noise(0, (3, 16, 16))], [1.0])
    run = _run(tmp_path / "run", [_noise(0, (3, 16, 24))], [1.0])
    assert compare(run, golden).images[0].problem == "size 24x16 != golden 16x16"
    result = cli("compare", run, golden)
    assert result.exit_code == 1, result.output
    assert "FAIL: size" in result.stdout
    with Image.open(run / "diff" / "image_0.png") as diff:
        assert diff.size[0] > 3 * 128  # padded to the larger size, upscaled


def test_exact_requires_the_same_bytes(tmp_path: Path, cli) -> None:
    image = _noise(0)
    golden, run = tmp_path / "golden", tmp_path / "run"
    _png(golden / "image_0.png", image)
    _png(run / "image_0.png", image, note="same pixels, other bytes")
    assert cli("compare", run, golden).exit_code == 0
    result = cli("compare", run, golden, "--exact")
    assert result.exit_code == 1
    assert "bytes differ (--exact)" in result.stdout


def test_thresholds_are_options(tmp_path: Path, cli) -> None:
    image = (_noise(0, (1, 16, 16)) * 200).round() / 255  # 8-bit levels 0..200
    golden, run = tmp_path / "golden", tmp_path / "run"
    _png(golden / "image_0.png", image)
    _png(run / "image_0.png", image + 5 / 255)  # every pixel 5 levels brighter
    report = compare(run, golden)
    assert report.images[0].mad == pytest.approx(5 / 255, rel=1e-12)  # 0.0196 > 0.01
    assert report.images[0].ssim > 0.99  # a uniform brightening keeps the structure
    assert not report.passed
    assert compare(run, golden, Thresholds(max_mad=0.03)).passed
    assert cli("compare", run, golden, "--max-mad", "0.03").exit_code == 0
    assert cli("compare", run, golden, "--max-mad", "0.03", "--min-ssim", "1").exit_code == 1


def test_a_tree_of_runs_matches_runs_by_folder_name(tmp_path: Path, cli) -> None:
    golden, run = tmp_path / "goldens", tmp_path / "out"
    _run(golden / "a", [_noise(0)], [1.0])
    _run(golden / "b", [_noise(1)], [2.0])
    _run(run / "a", [_noise(0)], [1.0])
    _run(run / "c", [_noise(1)], [2.0])
    report = compare(run, golden)
    assert report.problems == [f"b: run missing in {run}", f"c: run has no golden in {golden}"]
    assert [(c.path, c.problem) for c in report.images] == [
        ("a/image_0.png", None),
        ("b/image_0.png", "missing in run"),
    ]
    result = cli("compare", run, golden)
    assert result.exit_code == 1
    assert f"FAIL: b: run missing in {run}" in result.stdout


def test_extra_pngs_in_the_run_are_ignored(tmp_path: Path) -> None:
    golden = _run(tmp_path / "golden", [_noise(0)], [1.0])
    run = _run(tmp_path / "run", [_noise(0)], [1.0])
    _png(run / "grid.png", _noise(7))
    assert compare(run, golden).passed


def test_sweep_values_are_each_items_objective_and_terms() -> None:
    sweep = {
        "config": "cfg.yaml",
        "items": {
            "objective.channel=5": {"file": "a.png", "objective": 2.0, "seconds_per_step": 0.1},
            "seed=1": {"objective": 3.0, "terms": {"channel(conv3, 5)": 3.0}},
        },
    }
    assert recorded_values(sweep) == {
        "items[objective.channel=5].objective": 2.0,
        "items[seed=1].objective": 3.0,
        "items[seed=1].terms[channel(conv3, 5)]": 3.0,
    }
    nested = {"items": [{"name": "a", "final": {"objective": [1.0]}}]}
    assert recorded_values(nested) == {"items[0].final.objective[0]": 1.0}


def _sweep(folder: Path, objectives: dict[str, float], seconds: float) -> None:
    """A sweep folder as `fvis sweep` writes it: one PNG per item and sweep.json."""
    items = {}
    for i, (key, objective) in enumerate(objectives.items()):
        _png(folder / f"{key}.png", _noise(i))
        items[key] = {"file": f"{key}.png", "objective": objective, "seconds_per_step": seconds}
    (folder / "sweep.json").write_text(json.dumps({"config": "cfg.yaml", "items": items}))


def test_a_sweep_compares_item_pngs_and_sweep_json(tmp_path: Path) -> None:
    golden, run = tmp_path / "golden", tmp_path / "run"
    _sweep(golden, {"objective.channel=0": 1.0, "objective.channel=1": 2.0}, seconds=0.1)
    _sweep(run, {"objective.channel=0": 1.0, "objective.channel=1": 2.5}, seconds=0.3)
    report = compare(run, golden)
    assert [(c.path, c.passed) for c in report.images] == [
        ("objective.channel=0.png", True),
        ("objective.channel=1.png", True),
    ]
    assert [(v.file, v.key, v.problem) for v in report.values] == [
        ("sweep.json", "items[objective.channel=0].objective", None),
        ("sweep.json", "items[objective.channel=1].objective", "rel. diff"),
    ]
    _sweep(run, {"objective.channel=0": 1.0}, seconds=0.3)  # one item less
    (run / "objective.channel=1.png").unlink()
    report = compare(run, golden)
    assert [c.problem for c in report.images] == [None, "missing in run"]
    assert [v.problem for v in report.values] == [None, "missing in run"]


def test_user_errors_exit_2(tmp_path: Path, cli) -> None:
    golden = _run(tmp_path / "golden", [_noise(0)], [1.0])
    missing = cli("compare", tmp_path / "nothing", golden)
    assert missing.exit_code == 2
    assert f"{tmp_path / 'nothing'}: no such folder" in missing.stderr
    bare = tmp_path / "bare"
    _png(bare / "image_0.png", _noise(0))
    not_a_run = cli("compare", bare, golden)
    assert not_a_run.exit_code == 2
    assert "no run.json or sweep.json: not a run folder" in not_a_run.stderr
    (tmp_path / "empty").mkdir()
    empty = cli("compare", bare, tmp_path / "empty")
    assert empty.exit_code == 2 and "nothing to compare" in empty.stderr
    broken = _run(tmp_path / "broken", [_noise(0)], [1.0])
    (broken / "run.json").write_text("{")
    bad_json = cli("compare", broken, golden)
    assert bad_json.exit_code == 2 and "run.json: not valid JSON" in bad_json.stderr


NOT_A_RUN = [
    ("a list", "[1, 2]", "the top level is a list, not an object"),
    ("a string", '"x"', "the top level is a string, not an object"),
    ("no final", "{}", "`final` is missing"),
    ("final not an object", '{"final": 3}', "`final` is a number, not an object"),
    ("no objective", '{"final": {}}', "`final.objective` is missing (or null), not a list of"),
    (
        "objective of strings",
        '{"final": {"objective": ["1"]}}',
        "`final.objective` is a list holding something other than numbers",
    ),
    (
        "terms a list",
        '{"final": {"objective": [1.0], "terms": [1]}}',
        "`final.terms` is a list, not an object",
    ),
    (
        "a term a number",
        '{"final": {"objective": [1.0], "terms": {"a": 1}}}',
        "`final.terms[a]` is a number, not a list of numbers",
    ),
]


@pytest.mark.parametrize(("case", "text", "problem"), NOT_A_RUN, ids=[c[0] for c in NOT_A_RUN])
@pytest.mark.parametrize("side", ["golden", "run"])
def test_a_run_json_that_is_not_a_runs_is_a_usage_error(
    tmp_path: Path, cli, case: str, text: str, problem: str, side: str
) -> None:
    """Valid JSON of another structure: exit 2 naming the file, not a regression (exit 1)."""
    golden = _run(tmp_path / "golden", [_noise(0)], [1.0])
    run = _run(tmp_path / "run", [_noise(0)], [1.0])
    bad = (golden if side == "golden" else run) / "run.json"
    bad.write_text(text)
    result = cli("compare", run, golden)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{bad}: not a run.json written by fvis: {problem}"), lines
    assert lines[0].endswith("; render it again, or compare another folder")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "the top level is a list, not an object"),
        ('{"items": 3}', "`items` is a number, not an object"),
        ('{"items": {"k": 1}}', "`items[k]` is a number, not an object"),
        ('{"items": {"k": {"objective": "x"}}}', "`items[k].objective` is a string, not a number"),
    ],
)
def test_a_sweep_json_that_is_not_a_sweeps_is_a_usage_error(
    tmp_path: Path, cli, text: str, problem: str
) -> None:
    golden, run = tmp_path / "golden", tmp_path / "run"
    _sweep(golden, {"objective.channel=0": 1.0}, seconds=0.1)
    _sweep(run, {"objective.channel=0": 1.0}, seconds=0.1)
    (golden / "sweep.json").write_text(text)
    result = cli("compare", run, golden)
    assert result.exit_code == 2, result.output
    assert f"{golden / 'sweep.json'}: not a sweep.json written by fvis: {problem};" in result.stderr


def test_json_too_deep_or_with_huge_numbers_is_a_usage_error(tmp_path: Path, cli) -> None:
    golden = _run(tmp_path / "golden", [_noise(0)], [1.0])
    run = _run(tmp_path / "run", [_noise(0)], [1.0])
    for text in ("[" * 100_000 + "]" * 100_000, '{"final": {"objective": [' + "9" * 5000 + "]}}"):
        (run / "run.json").write_text(text)
        result = cli("compare", run, golden)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"{run / 'run.json'}: not valid JSON (")
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_run_image_without_its_golden_is_a_regression(tmp_path: Path, cli) -> None:
    golden = _run(tmp_path / "golden", [_noise(0)], [1.0])
    run = _run(tmp_path / "run", [_noise(0)], [1.0])
    (golden / "image_0.png").unlink()
    result = cli("compare", run, golden)
    assert result.exit_code == 1
    assert f"FAIL: image_0.png: image has no golden in {golden}" in result.stdout


def test_a_diff_folder_that_cannot_be_made_is_one_line(tmp_path: Path, cli) -> None:
    golden = _run(tmp_path / "golden", [_noise(0)], [1.0])
    run = _run(tmp_path / "run", [_noise(1)], [1.0])
    (tmp_path / "afile").write_text("")
    result = cli("compare", run, golden, "--diff-dir", tmp_path / "afile")
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path / 'afile'}: cannot write diff images (not a folder)\n"
