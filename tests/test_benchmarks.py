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
    if str(ROOT / "benchmarks") not in sys.path:  # the scripts import each other (bench.machine)
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses look their module up there
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


def test_quality_measures_a_tiny_fvis_render_and_finds_the_quality_per_second(
    tmp_path: Path,
) -> None:
    import math

    import pytest

    quality = _script("quality")
    transfer = quality.transfer_network() if quality.TRANSFER.is_file() else None
    variant = quality.variant_tool("param.period=16")
    steps = {"fvis": [2], variant: [2]}
    rows, columns = quality.run(
        [64], ["classes"], steps, [0], transfer, items=[0, 7], renderer=quality.render
    )
    only, period = rows
    assert (only["tool"], period["tool"]) == ("fvis", "fvis param.period=16")
    assert only["high_frequency"] != period["high_frequency"]  # the variant's sets took effect
    absent = {"green", "blue", "diversity"}  # classes 0 and 7 (red) only, one seed
    absent |= {"top1", "probability"} if transfer is None else set()
    for key, *_ in quality.MEASURES:
        assert (only[key] is None) == (key in absent), key
        assert key in absent or math.isfinite(only[key]), (key, only[key])
    assert [label for label, _ in columns[64]] == ["fvis 2 steps", "period=16 2 steps"]
    assert quality._label("lucent", 512) == "lucent 512 steps"
    colour = "param.decorrelate=benchmarks/imagenet-colour.npy"
    named = quality._label(quality.variant_tool(f"{colour};param.period=48"), 256)
    assert named == "decorrelate=imagenet-colour period=48 256 steps"
    long = quality._label(quality.variant_tool("transforms=[{kind: pad, pixels: 12}]"), 8)
    assert long == "transforms=[{kind: p... 8 steps"
    assert quality.rooted([colour, "param.period=48", "param.init=no-such.png"]) == [
        f"param.decorrelate={quality.ROOT / 'benchmarks' / 'imagenet-colour.npy'}",
        "param.period=48",
        "param.init=no-such.png",
    ]
    sheet = quality.picture(columns[64], ["stripes_0", "red"])
    images = columns[64][0][1]
    assert quality.diversity([images]) is None and quality.diversity([images, images]) == 0
    assert quality.diversity([images, images, images.flip(-1)]) > 0
    assert sheet.size == (90 + 2 * 130, 16 + 2 * 130)
    long_label = "decorrelate=imagenet-colour period=48 256 steps"
    lines = quality.wrap(long_label, 12, len)
    assert lines == ["decorrelate=", "imagenet-col", "our", "period=48", "256 steps"]
    tall = quality.picture([(long_label, images)], ["stripes_0", "red"])
    assert tall.size[1] > sheet.size[1]  # the wrapped label's lines, above the same rows

    def made(tool: str, steps: int, target: str, **changes: float) -> dict:
        base = {key: 0.5 for key, *_ in quality.MEASURES}
        base.update(high_frequency=0.02, seconds=steps / 10)
        return {"tool": tool, "size": 64, "steps": steps, "target": target, **base, **changes}

    table = [
        made("lucent", 512, "classes"),
        made("fvis", 64, "classes", high_frequency=0.03),
        made("fvis", 128, "classes", objective=0.504),  # ties at the table's precision
        made("fvis", 256, "classes", saturation=0.9),
        made("lucent", 512, "conv3"),
        made("fvis", 64, "conv3", saturation=0.4),
        made("fvis", 128, "conv3", high_frequency=0.021, diversity=0.6),
        made(variant, 64, "conv3"),
        made("lucent", 512, "conv4"),
        made("fvis", 64, "conv4", objective=0.4, diversity=0.4),
        made("fvis", 128, "conv4", diversity=0.45),
        made("fvis", 256, "conv4", diversity=0.49, saturation=0.3),
    ]
    classes, conv3, conv3_variant, conv4 = quality.quality_per_second(table)
    assert conv3_variant.endswith(
        "; `fvis param.period=16` matches or beats every measure at **64 steps**"
        " (6.4 s, 0.12x lucent's time, 0.12x its steps)."
    )
    assert "at **128 steps** (12.8 s, 0.25x lucent's time, 0.25x its steps)" in classes
    assert "**none**" in conv3
    assert "at 64 steps saturation 0.400 vs 0.500" in conv3
    assert "at 128 steps HF share 0.0210 vs 0.0200" in conv3
    assert "Leaving out" not in conv3  # HF share and diversity each match at some step count
    assert conv4.endswith(
        "at 256 steps saturation 0.300 vs 0.500, diversity 0.490 vs 0.500. Leaving out"
        " diversity, which none matches, it matches at **128 steps** (12.8 s, 0.25x lucent's"
        " time, 0.25x its steps)."
    )
    # time over lucent's longest render of the same target: 25.6 s / 51.2 s; 6.4 s / 51.2 s
    with_short_lucent = [made("lucent", 128, "classes"), *table]
    lines = quality.table(with_short_lucent)
    assert lines[0].endswith("| diversity | seconds | s / lucent's s |")
    assert lines[2].endswith("| 12.8 | - |") and lines[3].endswith("| 51.2 | - |")
    assert lines[6].endswith("| 25.6 | 0.50x |") and lines[8].endswith("| 6.4 | 0.12x |")
    text = quality.document(table, {64: "quality-64.png"}, "python x", 60.0, [0], False)
    assert "![64 px: lucent | fvis](quality-64.png)" in text and classes in text
    scored = quality.document(table, {}, "python x", 60.0, [0], False, scores={64: "q-64.png"})
    assert "![64 px: fvis against lucent, measure by measure](q-64.png)" in scored
    pytest.importorskip("lucent")
    images, seconds = quality.lucent_render("conv3", 64, 2, 0, [0, 1])
    assert images.shape == (2, 3, 64, 64) and seconds > 0


def test_the_quality_scorecard_marks_every_shortfall_red_and_every_match_green() -> None:
    import io

    import torch
    from PIL import Image

    quality = _script("quality")
    edges = torch.tensor([0.0, 0.001, 0.5, 0.999, 1.0, 0.003]).view(3, 1, 2)
    assert quality.clipped(edges) == 4 / 6  # 0.003 * 255 = 0.77 rounds to 1, not 0

    def made(tool: str, steps: int, target: str, **changes: float) -> dict:
        base = {key: 0.5 for key, *_ in quality.MEASURES}
        base.update(high_frequency=0.02, seconds=steps / 10)
        return {"tool": tool, "size": 64, "steps": steps, "target": target, **base, **changes}

    lucent = made("lucent", 512, "conv3")
    ahead = quality.margin("objective", made("fvis", 8, "conv3", objective=0.55), lucent)
    assert abs(ahead - 0.1) < 1e-12  # 0.05 over lucent's 0.50
    assert quality.margin("high_frequency", made("fvis", 8, "conv3"), lucent) == 0
    hf = quality.margin("high_frequency", made("fvis", 8, "conv3", high_frequency=0.03), lucent)
    assert abs(hf + 0.5) < 1e-12  # lower is better: half again lucent's share is 50% behind
    assert quality.margin("objective", made("fvis", 8, "conv3", objective=0.504), lucent) == 0
    assert quality.margin("clipped", lucent, lucent) is None  # no quality
    assert quality.margin("red", lucent | {"red": None}, lucent) is None
    nothing = lucent | {"diversity": 0.0}
    assert quality.margin("diversity", lucent, nothing) == 1.0  # ahead of a zero reference

    rows = [
        lucent,
        made("fvis", 64, "conv3", high_frequency=0.03),
        made("fvis", 256, "conv3", diversity=0.6),
        made("lucent", 512, "conv4"),
        made("fvis", 64, "conv4"),
        made("fvis", 64, "classes"),  # no lucent row: no panel
        made("fvis", 64, "conv3") | {"size": 224},
    ]
    conv3, conv4 = quality.score_panels(rows, 64)
    assert (conv3.target, conv3.rows) == ("conv3", ["fvis 64 steps", "fvis 256 steps"])
    shown = [c for c in conv3.columns if "green" not in c and "recovered" not in c]
    assert shown[0] == "objective\nlucent 0.50" and shown[-1] == "time\n<= 0.33x"
    assert conv3.values[0][-1] == "0.125x"  # 6.4 s over lucent's 51.2 s
    assert abs(conv3.margins[0][-1] - (1 / 3 - 0.125) * 3) < 1e-12
    hf_column = next(i for i, c in enumerate(conv3.columns) if c.startswith("HF share"))
    assert abs(conv3.margins[0][hf_column] + 0.5) < 1e-12 and conv3.margins[1][hf_column] == 0
    assert conv4.margins == [[0.0] * (len(conv4.columns) - 1) + [(1 / 3 - 0.125) * 3]]

    def reds(panels: list) -> int:
        image = Image.open(io.BytesIO(quality.scorecard(panels, "test"))).convert("RGB")
        r, g, b = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(-1, 3).T
        return int(((r > 150) & (g < 120) & (b < 120)).sum())

    assert reds([conv4]) == 0  # every cell matches or beats lucent: no red
    assert reds([conv3]) > 2 * 40 * 20  # two short cells of at least 40 x 20 pixels


def test_a_stopped_quality_run_resumes_from_its_cache(tmp_path: Path, monkeypatch) -> None:
    import pytest
    import torch

    quality = _script("quality")
    calls: list[tuple[str, int, int]] = []
    stop_at: list[int] = [4]  # the 4th render is interrupted, once

    def renderer(tool, target, size, steps, seed, items, upsample):
        calls.append((tool, steps, seed))
        if len(calls) in stop_at:
            stop_at.clear()
            raise KeyboardInterrupt
        g = torch.Generator().manual_seed(1000 * seed + steps)
        return torch.rand(2, 3, 32, 32, generator=g), 0.5 * len(calls)

    def bench(cache) -> list[dict]:
        steps = {"lucent": [4], "fvis": [2, 4]}
        args = ([32], ["conv3"], steps, [0, 1], None)
        rows, _ = quality.run(*args, items=[0, 1], renderer=renderer, cache=cache)
        return rows

    cache = quality.RenderCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        bench(cache)
    assert len(calls) == 4 and len(list(cache.root.rglob("*.pt"))) == 3
    resumed = bench(quality.RenderCache(tmp_path / "cache"))
    assert len(calls) == 4 + 3  # only the renders the stop left undone
    assert [r["seconds"] for r in resumed] == [0.5, 1.5, 3.0]  # the fastest seed's, kept ones too
    fresh = bench(None)  # the same renders with nothing cached: the same measures
    for mine, theirs in zip(resumed, fresh, strict=True):
        assert {k: v for k, v in mine.items() if k != "seconds"} == {
            k: v for k, v in theirs.items() if k != "seconds"
        }
    text = quality.document(resumed, {}, "python x", 1.0, [0, 1], False, None, 3)
    assert "It took 3 renders (their seconds included) from the cache" in text
    assert "cache" not in quality.document(resumed, {}, "python x", 1.0, [0, 1], False)

    # another fvis (here: another config) renders fvis afresh and keeps lucent's renders
    case = {"target": "conv3", "size": 32, "steps": 4, "seed": 0, "items": [0, 1]}
    case |= {"upsample": False, "repeat": 0}
    changed = tmp_path / "classes.yaml"
    changed.write_text(quality.CLASSES_CONFIG.read_text() + "\n# changed\n")
    before = {kind: quality.render_fingerprint(kind) for kind in ("fvis", "lucent")}
    monkeypatch.setattr(quality, "CLASSES_CONFIG", changed)
    assert quality.render_fingerprint("fvis") != before["fvis"]
    assert quality.render_fingerprint("lucent") == before["lucent"]
    cache = quality.RenderCache(tmp_path / "cache")
    assert cache.load({"tool": "fvis", **case}) is None
    assert cache.load({"tool": "lucent", **case}) is not None


def test_lucent_renders_are_kept_across_changes_to_fvis_but_not_to_its_model(
    tmp_path: Path, monkeypatch
) -> None:
    import shutil

    quality = _script("quality")
    shutil.copytree(quality.ROOT / "fvis", tmp_path / "fvis")
    monkeypatch.setattr(quality, "ROOT", tmp_path)
    kinds = ("fvis", "lucent")
    before = {kind: quality.render_fingerprint(kind) for kind in kinds}
    with (tmp_path / "fvis" / "render.py").open("a") as f:
        f.write("\n# changed\n")
    after_render = {kind: quality.render_fingerprint(kind) for kind in kinds}
    assert after_render["fvis"] != before["fvis"]
    assert after_render["lucent"] == before["lucent"]
    with (tmp_path / "fvis" / "zoo" / "net.py").open("a") as f:
        f.write("\n# changed\n")
    assert quality.render_fingerprint("fvis") != after_render["fvis"]
    assert quality.render_fingerprint("lucent") != before["lucent"]


def test_the_torchvision_check_renders_a_random_resnet_and_measures_its_channels(
    tmp_path: Path,
) -> None:
    import torch
    from safetensors.torch import save_file

    check = _script("quality_torchvision")
    net = check.random_network(0)
    again = check.random_network(0).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in net.state_dict().items())  # reproducible
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # layer3 by hand, after ImageNet's normalization
        mean = torch.tensor(check.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(check.IMAGENET_STD).view(1, 3, 1, 1)
        h = net.maxpool(net.relu(net.bn1(net.conv1((x - mean) / std))))
        out = net.layer3(net.layer2(net.layer1(h)))
    by_hand = sum(float(out[k, c].mean()) for k, c in enumerate(check.CHANNELS)) / 4
    assert abs(check.objective(net, x) - by_hand) < 1e-5
    checkpoint = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(checkpoint))
    images = check.fvis_images(checkpoint, "fvis param.period=null", 1, 0)
    assert images.shape == (4, 3, check.SIZE, check.SIZE)
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_data_bench_measures_both_sides_of_a_tiny_pass() -> None:
    data = _script("data")
    assert data.forward(20)["seconds"] > 0
    measured = data.examples(20)
    assert measured["seconds"] > 0 and measured["write"] > 0


def test_atlas_bench_times_a_small_atlas_and_reads_its_measures() -> None:
    atlas = _script("atlas")
    found = atlas.measure(120, 4)
    assert found["wall"] > sum(found["stages"].values()) > 0
    row = atlas.line(120, 4, found).split(" | ")
    assert row[0] == "| 4x4" and row[1] == "120" and int(row[2]) == found["cells"] > 0
    assert len(row) == len(atlas.HEADER[0].split(" | "))


def test_cluster_bench_times_a_tiny_local_sweep_and_pass() -> None:
    cluster = _script("cluster")  # Ray's side runs in tests/test_cluster.py
    assert cluster.measure(cluster.RUN, cluster.CONFIG, 2, 2, 2, 0) > 0
    assert cluster.measure(cluster.PASS, cluster.CONFIG, 128, 64, 0) > 0


def test_bench_rewrites_its_own_device_section_and_keeps_the_others(tmp_path: Path) -> None:
    bench = _script("bench")
    out = tmp_path / "results.md"
    bench._write(out, bench.device_section(["| first |"], [], []))
    assert out.read_text().startswith("\n".join(bench.INTRO) + "\n\n" + bench.DEVICE_HEADING)
    out.write_text(out.read_text() + "\n## On another device\n\nkept\n\n## Start-up\n\nalso kept\n")
    bench._write(out, bench.device_section(["| second |"], ["| option |"], []))
    text = out.read_text()
    assert "| first |" not in text and "| second |" in text and "| option |" in text
    assert text.index("| second |") < text.index("kept") < text.index("also kept")
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, then renamed
