"""The microscope's static site (fvis/site.py) from a synthetic manifest: pages, links,
escaping, rebuilds, errors, page weight and the server. make_site is shared with the browser
tests (test_site_browser.py)."""

from __future__ import annotations

import json
import math
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from fvis import site
from fvis.errors import UserError

CONV = "features.conv2"  # a conv-like layer: 2 seeds, examples, groups, atlas
LOGITS = "logits"  # a flat layer: class names, 1 seed, no examples
CLASSES = ["circle", "<script>x</script>", "a & b"]
CONFIG = "seed: 0\nobjective: {kind: channel, layer: features.conv2, channel: 0}\n"


def unit(layer: str, channel: int, seeds: int, examples: bool, name: str | None) -> dict[str, Any]:
    """One channel's entry, its objective values scattered so that sorting reorders them."""
    renders = [f"{layer}/renders/objective.channel={channel},seed={s}.png" for s in range(seeds)]
    objective = [float((channel * 7) % 11) + s / 4 for s in range(seeds)]
    steps = list(range(1, 33))
    return {
        "channel": channel,
        "name": name,
        "renders": renders,
        "objective": objective,
        "curve": {
            "steps": steps,
            "objective": [rising(v, steps, s) for s, v in enumerate(objective)],
        },
        "diversity": 0.25 + channel / 100 if seeds > 1 else None,
        "examples": f"examples/{layer}/unit_{channel:04d}.png" if examples else None,
        "top": [{"image": f"zoo:shapes#{channel * 3 + i}", "value": 3.5 - i} for i in range(3)]
        if examples
        else None,
        "command": f"fvis render config.yaml --set objective.layer={layer} "
        f"--set objective.channel={channel}",
    }


def rising(value: float, steps: list[int], seed: int) -> list[float]:
    """An objective's climb to `value` over `steps`, as optimizations climb: fast, then slow."""
    return [value * (1 - math.exp(-t / 6)) + 0.2 * math.sin(t + seed) for t in steps]


def picture(path: Path, index: int) -> None:
    """A 64 px picture of stripes, their angle and colours set by `index`."""
    y, x = np.mgrid[0:64, 0:64] / 64
    angle = index * 0.7
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + index % 5) * (x * np.cos(angle) + y * np.sin(angle)))
    tint = np.array([(index * 53) % 256, (index * 97) % 256, (index * 31) % 256]) / 255
    pixels = wave[..., None] * tint + (1 - wave[..., None]) * (1 - tint)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path)


def manifest(channels: int = 6) -> dict[str, Any]:
    """A microscope.json of two layers: `channels` channels of CONV and three class logits."""
    return {
        "format": site.FORMAT,
        "title": "synthetic",
        "command": f"fvis microscope config.yaml --layers {CONV},{LOGITS} --data zoo:shapes:20",
        "config": "config.yaml",
        "versions": {"fvis": "0.1.0", "torch": "2.0", "python": "3.12"},
        "model": {"description": "zoo:shapes", "parameters": 123456, "input": [3, 64, 64]},
        "data": "zoo:shapes:20",
        "seeds": [0, 1],
        "steps": 32,
        "seconds": {"renders": 121.4, "examples": 20.1, "groups": 3.0, "atlas": 65.0},
        "layers": [
            {
                "name": CONV,
                "slug": CONV,
                "type": "Conv2d",
                "shape": [channels, 16, 16],
                "channels": channels,
                "sheet": f"{CONV}/renders/sheet.png",
                "curves": f"{CONV}/renders/curves.png",
                "groups": f"{CONV}/groups/groups.png",
                "atlas": f"{CONV}/atlas/atlas #1.png",  # a name a URL must escape
                "units": [unit(CONV, c, 2, True, None) for c in range(channels)],
            },
            {
                "name": LOGITS,
                "slug": LOGITS,
                "type": "Linear",
                "shape": [len(CLASSES)],
                "channels": len(CLASSES),
                "sheet": f"{LOGITS}/renders/sheet.png",
                "curves": None,
                "groups": None,
                "atlas": None,
                "units": [unit(LOGITS, c, 1, False, n) for c, n in enumerate(CLASSES)],
            },
        ],
    }


def pictures(data: dict[str, Any]) -> list[str]:
    """Every picture a manifest names."""
    found = []
    for layer in data["layers"]:
        found += [layer[key] for key in ("sheet", "curves", "groups", "atlas") if layer[key]]
        for entry in layer["units"]:
            found += entry["renders"] + ([entry["examples"]] if entry["examples"] else [])
    return found


def make_site(folder: Path, channels: int = 6, data: dict[str, Any] | None = None) -> Path:
    """A microscope folder with tiny PNGs, config.yaml and microscope.json, and its site."""
    data = data or manifest(channels)
    for i, name in enumerate(pictures(data)):
        picture(folder / name, i)
    (folder / "config.yaml").write_text(CONFIG)
    (folder / site.MANIFEST).write_text(json.dumps(data, indent=2))
    site.build(folder)
    return folder


class Page(HTMLParser):
    """A page's links (href, src), its <link rel> neighbours and its sortable thumbnails."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.links: list[str] = []
        self.rels: dict[str, str] = {}
        self.items: list[dict[str, str | None]] = []
        self.feed(path.read_text())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.links += [value for key, value in attrs if key in ("href", "src") and value]
        if tag == "link" and named.get("rel") in ("prev", "next", "up"):
            self.rels[str(named["rel"])] = str(named["href"])
        if tag == "li" and "data-channel" in named:
            self.items.append(named)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("site"))


def test_every_page_is_written(built: Path) -> None:
    expected = {"index.html", "assets/site.css", "assets/site.js"}
    expected |= {f"{CONV}/index.html", f"{LOGITS}/index.html"}
    expected |= {f"{CONV}/{c:04d}.html" for c in range(6)} | {
        f"{LOGITS}/{c:04d}.html" for c in range(3)
    }
    written = {
        p.relative_to(built).as_posix()
        for p in built.rglob("*")
        if p.suffix in (".html", ".css", ".js")
    }
    assert written == expected


def test_every_link_and_picture_resolves(built: Path) -> None:
    checked = 0
    for page in built.rglob("*.html"):
        for link in Page(page).links:
            parts = urlsplit(link)
            if parts.scheme == "data" or not parts.path:  # the empty favicon, a #fragment
                continue
            assert not parts.scheme and not parts.netloc, f"{page}: {link} leaves the site"
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_file(), f"{page.relative_to(built)}: {link} is not a file"
            assert built.resolve() in target.parents, f"{page}: {link} leaves the site"
            checked += 1
    assert checked > 100
    index = (built / "index.html").read_text()
    assert "atlas%20%231.png" in (built / CONV / "index.html").read_text()
    assert "objective.channel=0,seed=0.png" in index  # = and , kept as they are: readable


def test_previous_and_next_stop_at_both_ends(built: Path) -> None:
    first, middle, last = (Page(built / CONV / f"{c:04d}.html").rels for c in (0, 3, 5))
    assert first == {"up": "index.html", "next": "0001.html"}
    assert middle == {"up": "index.html", "prev": "0002.html", "next": "0004.html"}
    assert last == {"up": "index.html", "prev": "0004.html"}
    text = (built / CONV / "0000.html").read_text()
    assert 'href="0001.html" class="next"' in text and 'class="prev"' in text  # a dim arrow
    assert Page(built / CONV / "index.html").rels == {
        "up": "../index.html",
        "next": f"../{LOGITS}/index.html",
    }


def test_names_are_escaped(built: Path) -> None:
    for page in (built / LOGITS / "index.html", built / LOGITS / "0001.html"):
        text = page.read_text()
        assert "&lt;script&gt;x&lt;/script&gt;" in text
        assert "<script>x" not in text
    assert "a &amp; b" in (built / LOGITS / "0002.html").read_text()


def test_thumbnails_carry_what_sorting_needs(built: Path) -> None:
    items = Page(built / CONV / "index.html").items
    assert [item["data-channel"] for item in items] == [str(c) for c in range(6)]
    scores = [float(str(item["data-objective"])) for item in items]
    assert scores == [(c * 7) % 11 + 0.125 for c in range(6)]  # the mean of the two seeds
    text = (built / CONV / "index.html").read_text()
    assert 'id="sort"' in text and 'loading="lazy" width="64" height="64"' in text


def test_a_channel_page_shows_renders_curve_examples_and_command(built: Path) -> None:
    text = (built / CONV / "0003.html").read_text()
    assert text.count("<polyline") == 2 and text.count("<figure>") == 2
    assert "seed 1 · objective <b>10.25</b>" in text
    assert "zoo:shapes#9" in text and f"examples/{CONV}/unit_0003.png" in text
    assert f"--set objective.layer={CONV} --set objective.channel=3</pre>" in text
    logit = (built / LOGITS / "0000.html").read_text()
    assert "— (one seed)" in logit and "Dataset examples" not in logit


def test_the_index_shows_the_model_and_the_config(built: Path) -> None:
    text = (built / "index.html").read_text()
    for shown in (
        "zoo:shapes",
        "123,456",
        "3 \u00d7 64 \u00d7 64",
        "2 min 01 s",
        "3 min 30 s",
        "torch</b> 2.0",
    ):
        assert shown in text
    assert "objective: {kind: channel, layer: features.conv2, channel: 0}" in text
    assert '<a href="config.yaml">' in text


def test_a_rebuild_writes_only_what_changed(tmp_path: Path) -> None:
    folder = make_site(tmp_path)
    assert site.build(folder) == []
    data = manifest()
    data["layers"][0]["units"][3]["command"] += " --set optim.steps=64"
    (folder / site.MANIFEST).write_text(json.dumps(data))
    assert site.build(folder) == [folder / CONV / "0003.html"]
    data["layers"][0]["units"][3]["objective"][0] = 99.0  # its thumbnail's value changes too
    (folder / site.MANIFEST).write_text(json.dumps(data))
    assert site.build(folder) == [folder / CONV / "index.html", folder / CONV / "0003.html"]


def broken(change: str) -> dict[str, Any]:
    """The synthetic manifest with one mistake."""
    data = manifest(2)
    first = data["layers"][0]
    if change == "format":
        data["format"] = "fvis-microscope-9"
    elif change == "renders":
        del first["units"][1]["renders"]
    elif change == "slug":
        first["slug"] = "../outside"
    elif change == "path":
        first["units"][0]["renders"][0] = "../../etc/passwd"
    elif change == "channel":
        first["units"][1]["channel"] = 0
    elif change == "curve":
        first["units"][0]["curve"]["objective"][1] = [1.0]
    elif change == "seconds":
        data["seconds"]["atlas"] = "1 min"
    elif change == "shape":
        first["shape"][0] = True
    elif change == "assets":
        first["slug"] = "assets"
    elif change == "slugs":
        data["layers"][1]["slug"] = CONV
    elif change == "backslash":
        first["units"][0]["examples"] = "examples\\unit_0000.png"
    elif change == "absolute":
        data["config"] = "/etc/config.yaml"
    elif change == "lengths":
        first["units"][0]["objective"].pop()
    elif change == "objective":
        first["units"][0]["objective"][1] = "high"
    elif change == "negative":
        first["units"][0]["channel"] = -1
    elif change == "render":
        data["render"] = [64]
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("format", "format: 'fvis-microscope-9', expected 'fvis-microscope-1'"),
        ("renders", "layers[0].units[1]: missing 'renders'"),
        ("slug", "layers[0].slug: '../outside' is not a plain folder name"),
        ("path", "layers[0].units[0].renders[0]: '../../etc/passwd' is not a relative path"),
        ("channel", "layers[0].units: two entries have the channel 0"),
        ("curve", "layers[0].units[0].curve.objective[1]: expected a list as long as steps"),
        ("seconds", "seconds.atlas: expected a number, got a string"),
        ("shape", "layers[0].shape[0]: expected a whole number, got a boolean"),
        ("assets", "layers[0].slug: 'assets' is not a plain folder name"),
        ("slugs", f"layers: two entries have the slug '{CONV}'"),
        ("backslash", "units[0].examples: 'examples\\\\unit_0000.png' is not a relative path"),
        ("absolute", "config: '/etc/config.yaml' is not a relative path inside the site"),
        ("lengths", "units[0]: renders and objective must be lists of the same length"),
        ("objective", "layers[0].units[0].objective[1]: expected a number, got a string"),
        ("negative", "layers[0].units[0].channel: Input should be greater than or equal to 0"),
        ("render", "render: List should have at least 2 items"),
    ],
)
def test_a_wrong_manifest_is_one_line_naming_the_file(
    tmp_path: Path, change: str, message: str
) -> None:
    (tmp_path / site.MANIFEST).write_text(json.dumps(broken(change)))
    with pytest.raises(UserError) as info:
        site.build(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / site.MANIFEST}: ") and "\n" not in text
    assert message in text
    assert not (tmp_path / "index.html").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file: run `fvis microscope` first"),
        ("{not json", "not valid JSON (Expecting property name"),
        ("[1, 2]", "the manifest: expected an object, got a list"),
        ('{"format": "fvis-microscope-1", "title": 3}', "title: expected a string, got a number"),
        ('{"format": "fvis-microscope-1"}', "the manifest: missing 'title'"),
    ],
)
def test_a_missing_or_malformed_manifest(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / site.MANIFEST).write_text(content)
    with pytest.raises(UserError) as info:
        site.build(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / site.MANIFEST}: ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_what_the_site_does_not_read_or_was_not_finite(tmp_path: Path) -> None:
    data = manifest(2)
    data["render"] = [48, 80]  # the thumbnails' size, rather than the model's input
    data["identity"] = {"config": "0123abcd"}  # keys the site does not read are ignored
    data["layers"][0]["units"][0]["objective"][1] = None  # not finite, written as null
    data["model"] = None
    folder = make_site(tmp_path, data=data)
    assert 'loading="lazy" width="80" height="48"' in (folder / CONV / "index.html").read_text()
    assert "seed 1 · objective <b>—</b>" in (folder / CONV / "0000.html").read_text()
    assert "<dt>Model</dt>" not in (folder / "index.html").read_text()


# The index and a 64-channel layer page: light enough to open at once on a slow disk or link.
INDEX_LIMIT = 16_000
LAYER_LIMIT = 32_000


def test_pages_stay_light(tmp_path: Path) -> None:
    folder = make_site(tmp_path, channels=64)
    index, layer = folder / "index.html", folder / CONV / "index.html"
    assert index.stat().st_size < INDEX_LIMIT, index.stat().st_size
    assert layer.stat().st_size < LAYER_LIMIT, layer.stat().st_size
    assert "base64" not in index.read_text() + layer.read_text()
    assert Page(layer).items[-1]["data-channel"] == "63"


def test_a_long_curve_is_thinned_and_a_flat_one_drawn() -> None:
    steps = list(range(1, 2049))
    plot = site.curve_plot({"steps": steps, "objective": [[float(s) for s in steps]]})
    assert plot is not None and len(plot["lines"][0].split()) <= site.PLOT_POINTS + 1
    assert plot["x"] == ("1", "2048")
    flat = site.curve_plot({"steps": [1, 2], "objective": [[5.0, None]]})
    assert flat is not None and flat["y"] == ("5", "6")
    assert site.curve_plot({"steps": [1], "objective": [[None]]}) is None


def test_the_server_serves_the_site(built: Path) -> None:
    httpd = site.server(built, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        address = site.url(httpd)
        with urllib.request.urlopen(address + "index.html", timeout=10) as response:
            assert response.status == 200
            assert "<title>synthetic · fvis microscope</title>" in response.read().decode()
        with urllib.request.urlopen(address + f"{CONV}/0000.html", timeout=10) as response:
            assert response.status == 200
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_serve_prints_the_address_and_returns_on_ctrl_c(
    built: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(self: object, poll_interval: float = 0.5) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(site.ThreadingHTTPServer, "serve_forever", interrupted)
    site.serve(built, "127.0.0.1", 0)
    assert capsys.readouterr().out.startswith("http://127.0.0.1:")


def test_a_folder_without_a_site_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no index.html: build it with `fvis microscope`$"):
        site.server(tmp_path, "127.0.0.1", 0)
