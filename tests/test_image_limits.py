"""Decompression bombs: a small PNG that decodes to a huge image is refused from its header, with
one message, wherever fvis reads an image (render's param.init, compare's goldens, attribution
inputs, spectrum folders); Pillow's own warning never slips through."""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from fvis.errors import UserError
from fvis.io import MAX_IMAGE_PIXELS, read_image

FVIS = Path(__file__).parent.parent / "fvis"
REFUSED = r"an image of {:,} pixels, over fvis's limit of 89,478,485 \(a decompression bomb\?\)"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit black PNG of width x height: its zero rows compress about 1000 to 1."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20000 x 20000 pixels (400 M, over twice Pillow's limit) in about 48 KB."""
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)


def test_the_bomb_is_small_and_refused_from_its_header(bomb: Path) -> None:
    assert bomb.stat().st_size < 64_000
    with pytest.raises(UserError, match=REFUSED.format(400_000_000)):
        read_image(bomb)
    with pytest.raises(UserError, match=REFUSED.format(400_000_000)):
        read_image(bomb, data=bomb.read_bytes())


def test_between_pillows_limit_and_twice_it_no_warning_slips_through(tmp_path: Path) -> None:
    """Pillow only warns from 89 M to 179 M pixels (and decodes); fvis refuses, silently."""
    path = bomb_png(tmp_path / "mid.png", 10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(UserError, match=REFUSED.format(100_000_000)):
            read_image(path)


def test_one_row_over_the_limit_is_refused(tmp_path: Path) -> None:
    side = int(MAX_IMAGE_PIXELS**0.5)  # side x side fits, side x (side + 1) does not
    assert side * side <= MAX_IMAGE_PIXELS < side * (side + 1)
    with pytest.raises(UserError, match=REFUSED.format(side * (side + 1))):
        read_image(bomb_png(tmp_path / "over.png", side + 1, side), "L")


def test_only_fvis_io_decodes_image_files() -> None:
    """Every image is read by fvis.io.read_image: one reader, one limit, one message."""
    openers = [
        f"{path.relative_to(FVIS.parent)}:{n}"
        for path in sorted(FVIS.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"Image\.open\(|decode_(image|png|jpeg)\(|imread\(", line)
    ]
    assert [o.split(":")[0] for o in openers] == ["fvis/io.py"], openers


def _one_line(result, path: Path) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    assert re.search(f"{re.escape(str(path))}: {REFUSED.format(400_000_000)}", lines[0]), lines[0]
    return lines[0]


def test_render_param_init(cli, write_config, workdir: Path, bomb: Path) -> None:
    init = workdir / "bomb.png"
    init.write_bytes(bomb.read_bytes())
    path = write_config(tiny_config(param={"size": 24, "init": "bomb.png"}))
    line = _one_line(cli("render", path, "--out", workdir / "out"), init)
    assert line.startswith(f"{path}:") and "param.init: " in line
    assert not (workdir / "out").exists()


def test_compare_golden(cli, tmp_path: Path, bomb: Path) -> None:
    golden, run = tmp_path / "golden", tmp_path / "run"
    for folder in (golden, run):
        folder.mkdir()
        (folder / "image_0.png").write_bytes(bomb.read_bytes())
    _one_line(cli("compare", run, golden), golden / "image_0.png")


def test_attribution_input_folder(cli, write_config, workdir: Path, bomb: Path) -> None:
    (workdir / "photos").mkdir()
    (workdir / "photos" / "a.png").write_bytes(bomb.read_bytes())
    config = {
        "device": "cpu",
        "inputs": [{"kind": "folder", "path": "photos"}],
        "methods": [{"kind": "saliency"}],
        "metrics": None,
    }
    path = write_config(yaml.safe_dump(config, sort_keys=False))
    line = _one_line(cli("attribute", path, "--out", workdir / "out"), workdir / "photos" / "a.png")
    assert line.startswith(f"{path}:4: inputs[0].path: ")  # the line of `path: photos`
    assert not (workdir / "out").exists()


def test_spectrum_folder(cli, tmp_path: Path, bomb: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(bomb.read_bytes())
    out = tmp_path / "s.safetensors"
    _one_line(cli("spectrum", tmp_path / "images", "--out", out), tmp_path / "images" / "a.png")
    assert not out.exists()
