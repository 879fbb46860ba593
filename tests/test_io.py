"""The ground floor (fvis.io): the one image reader, atomic writes, PNG and JSON encoding, paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import fvis.io
from fvis.errors import UserError
from fvis.io import png_bytes, read_image, resolve, to_json, to_pil, write_atomic


def _png(path: Path, image: torch.Tensor) -> Path:
    write_atomic(path, png_bytes(to_pil(image)))
    return path


def test_a_png_reads_back_exactly(tmp_path: Path) -> None:
    levels = torch.randint(0, 256, (3, 5, 7))
    path = _png(tmp_path / "a.png", levels.float() / 255)
    assert torch.equal(read_image(path), levels.float() / 255)
    assert torch.equal(read_image(path, dtype=torch.float64), levels.double() / 255)


def test_modes_grey_rgb_and_as_the_file_is(tmp_path: Path) -> None:
    grey = _png(tmp_path / "grey.png", torch.rand(1, 4, 4))
    rgb = _png(tmp_path / "rgb.png", torch.rand(3, 4, 4))
    assert read_image(grey).shape == (3, 4, 4)
    assert read_image(rgb, "L").shape == (1, 4, 4)
    assert read_image(grey, None).shape == (1, 4, 4)
    assert read_image(rgb, None).shape == (3, 4, 4)


def test_stretch_and_crop_to_a_size(tmp_path: Path) -> None:
    wide = torch.zeros(3, 10, 20)
    wide[:, :, 5:15] = 1.0  # a white centre band of half the width
    path = _png(tmp_path / "wide.png", wide)
    assert read_image(path, size=(6, 8)).shape == (3, 6, 8)
    square = read_image(path, size=(10, 10), fit="crop", resample=Image.Resampling.NEAREST)
    assert torch.equal(square, torch.ones(3, 10, 10))  # the centre only


def test_bytes_already_read_are_decoded(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png", torch.rand(3, 4, 4))
    assert torch.equal(read_image(path, data=path.read_bytes()), read_image(path))


def test_an_unreadable_image_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "not.png"
    path.write_text("not an image")
    with pytest.raises(UserError, match=r"not\.png: not a readable image"):
        read_image(path)


def test_an_image_over_the_limit_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One limit, fvis.io.MAX_IMAGE_PIXELS, whatever Pillow's own is."""
    path = _png(tmp_path / "big.png", torch.rand(3, 20, 20))
    monkeypatch.setattr(fvis.io, "MAX_IMAGE_PIXELS", 400)
    assert read_image(path).shape == (3, 20, 20)  # at the limit
    monkeypatch.setattr(fvis.io, "MAX_IMAGE_PIXELS", 399)
    with pytest.raises(
        UserError, match=r"big\.png: an image of 400 pixels, over fvis's limit of 399"
    ):
        read_image(path)
    with pytest.raises(UserError, match="over fvis's limit"):
        read_image(path, data=path.read_bytes())


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(UserError, match="cannot write"):
        write_atomic(tmp_path / "missing" / "out.bin", b"x")


def test_to_json_keeps_number_lists_on_one_line() -> None:
    text = to_json({"values": [1, 2.5, -3e-05], "name": "x"}).decode()
    assert '"values": [1, 2.5, -3e-05]' in text


def test_resolve_against_a_config_folder(tmp_path: Path) -> None:
    assert resolve(tmp_path, Path("a/b.png")) == tmp_path / "a" / "b.png"
    assert resolve(tmp_path, Path("/abs/b.png")) == Path("/abs/b.png")


def test_an_unknown_format_or_empty_file_names_the_file_not_a_buffer(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError) as info:
        read_image(tmp_path / "empty.png", data=b"")
    assert (
        str(info.value)
        == f"{tmp_path / 'empty.png'}: not a readable image (no image format Pillow knows)"
    )


def test_a_safetensors_file_is_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """safetensors writes its header's maps in hash order, which differs from process to
    process; tensors_bytes writes them sorted, and the file reads back as written."""
    script = (
        "import sys, torch; from fvis.io import tensors_bytes; "
        "t = {k: torch.arange(6.0).view(2, 3) + i for i, k in enumerate('zyxwvu')}; "
        "sys.stdout.buffer.write(tensors_bytes(t, {k: k * 2 for k in 'qwertyuiop'}))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    size = int.from_bytes(runs[0][:8], "little")
    header = json.loads(runs[0][8 : 8 + size])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted("qwertyuiop")
    (tmp_path / "t.safetensors").write_bytes(runs[0])
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as handle:
        assert handle.metadata()["q"] == "qq"
        assert torch.equal(handle.get_tensor("w"), torch.arange(6.0).view(2, 3) + 3)
