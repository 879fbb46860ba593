"""The microscope of the built-in model: its build time, a rebuild's, the site's size and pages.

`fvis microscope` runs as a user runs it (its own process, start-up included) on every layer of
the built-in model (conv1 to conv4 and the logits: 186 units) with dataset examples and their
attribution maps over 2,000 `zoo:shapes` images; then again on the same folder, with nothing
new to render. The report gives both times, the stages' seconds (from microscope.json), the
size of the whole site and the weight of its pages, and takes screenshots of the index and of
a channel's page in headless Chromium (docs/images/, which the README shows).

    python benchmarks/microscope.py                      # writes benchmarks/microscope.md
    python benchmarks/microscope.py --count 200 --layers conv1,logits --steps 32   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import machine  # the machine line every benchmark report opens with

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "quickstart.yaml"
SHOTS = {
    "index.html": ("microscope-index.png", 900),
    "conv3/0012.html": ("microscope-channel.png", 1650),
}
"""Pages to screenshot: their picture's name and the window's height (the channel's page down
to its attribution strip)."""


def build(out: Path, count: int, layers: str | None, steps: int | None) -> float:
    """Wall seconds of one `fvis microscope` process into `out`."""
    words = [sys.executable, "-m", "fvis", "microscope", str(CONFIG), "--out", str(out)]
    words += ["--data", f"zoo:shapes:{count}", "--attribution", "--quiet"]
    words += ["--layers", layers] if layers else []
    words += ["--set", f"optim.steps={steps}"] if steps else []
    start = time.perf_counter()
    subprocess.run(words, cwd=ROOT, check=True)
    return time.perf_counter() - start


def sizes(site: Path) -> dict[str, float]:
    """Kilobytes: the whole folder, its pages, the index, the largest layer page and the mean
    channel page."""
    pages = list(site.rglob("*.html"))
    layer_pages = [p for p in pages if p.name == "index.html" and p.parent != site]
    unit_pages = [p for p in pages if p.name != "index.html"]
    return {
        "site": sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 1024,
        "pages": sum(p.stat().st_size for p in pages) / 1024,
        "count": len(pages),
        "index": (site / "index.html").stat().st_size / 1024,
        "layer": max(p.stat().st_size for p in layer_pages) / 1024,
        "unit": sum(p.stat().st_size for p in unit_pages) / max(len(unit_pages), 1) / 1024,
    }


def screenshots(site: Path, out: Path) -> list[Path]:
    """The index and a channel's page in headless Chromium, as PNGs in `out`."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_site_browser import start_driver

    driver = start_driver()
    taken = []
    try:
        for page, (name, height) in SHOTS.items():
            if (site / page).is_file():
                driver.set_window_size(1280, height)
                driver.get((site / page).as_uri())
                driver.save_screenshot(str(out / name))
                taken.append(out / name)
    finally:
        driver.quit()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--layers", default=None, help="default: every layer of the zoo model")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--site", type=Path, default=ROOT / "outputs" / "microscope")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "microscope.md")
    parser.add_argument("--shots", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    if (args.site / "microscope.json").exists():
        sys.exit(f"{args.site}: a site is there already; remove it to time a build from nothing")
    first = build(args.site, args.count, args.layers, args.steps)
    manifest = json.loads((args.site / "microscope.json").read_text())
    again = build(args.site, args.count, args.layers, args.steps)
    units = sum(len(layer["units"]) for layer in manifest["layers"])
    found = sizes(args.site)
    taken = screenshots(args.site, args.shots)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in manifest["seconds"].items())
    rows = [
        "| build | rebuild, nothing new | units | site | pages | index | largest layer page "
        "| channel page (mean) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {first:.0f} s | {again:.1f} s | {units} | {found['site'] / 1024:.1f} MB "
        f"| {found['count']:.0f}, {found['pages']:.0f} KB | {found['index']:.1f} KB "
        f"| {found['layer']:.1f} KB | {found['unit']:.1f} KB |",
    ]
    text = "\n".join(
        [
            "# The microscope of the built-in model",
            "",
            f"Measured {datetime.date.today()} on {machine()}; `python benchmarks/microscope.py` "
            f"(`make bench-microscope`): `fvis microscope configs/quickstart.yaml --data "
            f"zoo:shapes:{args.count} --attribution` ({args.layers or 'every layer'}, "
            f"{manifest['steps']} steps), then the same command again on the same folder.",
            "",
            *rows,
            "",
            f"The build's stages (its microscope.json): {stages}. The rebuild loads "
            "the model, finds every render and the examples in place and rewrites only the "
            "pages whose text changed. Pages hold no inline images; thumbnails load lazily.",
            "",
            *(f"![{p.stem}](../docs/images/{p.name})" for p in taken),
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
