"""`fvis grid`: an activation grid of a layer on an image, from the command line."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_groups import halves

from fvis import grid
from fvis.cli import app
from fvis.config import load_config
from fvis.factories import entry_points

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_grid_writes_the_picture_the_vectors_the_index_and_the_render(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    image = halves(tmp_path / "halves.png")
    out = tmp_path / "grid"
    result = cli(
        "grid", QUICKSTART, "--image", image, "--layer", "conv3", "--cells", "4",
        "--out", out, "--set", "optim.steps=32", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "grid.png"), str(out / "grid.json")]
    assert result.stderr == ""  # --quiet, and no notice for fvis's own objectives
    # grid.png: the image at the tiles' height (4 cells of 64 px), then the 4 x 4 renders
    assert Image.open(out / "grid.png").size == (256 + grid.GAP + 256, 256)
    tensors = load_file(str(out / "grid.safetensors"))
    assert tensors["vectors"].shape == (16, 64) and tensors["layout"].tolist() == [4, 4]
    assert tensors["activations"].shape == (64, 16, 16)
    index = json.loads((out / "grid.json").read_text())
    assert index["cells"] == {"rows": 4, "cols": 4, "count": 16} and index["pooled"]
    assert index["layer"] == "conv3" and index["layer_shape"] == [64, 16, 16]
    assert index["parameters"]["shared"] == grid.SHARED
    assert index["parameters"]["align"] == grid.ALIGN
    assert index["parameters"]["steps"] == 32 and index["seed"] == 0
    assert index["overrides"] == ["optim.steps=32"]
    assert {"activations", "render", "picture"} <= set(index["seconds"])
    assert index["measures"]["own_over_farthest"] == 1.0
    assert index["cell"]["render_row_0"].startswith("fvis render ")
    # the render is a run folder like any: its config names the grid's objective
    run = json.loads((out / "render" / "run.json").read_text())
    assert run["status"] == "complete" and run["config"]["param"]["batch"] == 16
    config = yaml.safe_load((out / "render" / "config.yaml").read_text())
    factories = [t["factory"] for t in config["objective"]["terms"]]
    assert factories == ["fvis.grid:cells", "fvis.grid:alignment"]


def test_one_cell_renders_again_as_a_normal_config(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    image = halves(tmp_path / "halves.png")
    out = tmp_path / "grid"
    result = cli(
        "grid", QUICKSTART, "-i", image, "-l", "conv3", "-n", "2", "-o", out,
        "--align", "0", "--set", "optim.steps=4", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    index = json.loads((out / "grid.json").read_text())
    assert index["parameters"]["align"] == 0.0
    config = yaml.safe_load((out / "render" / "config.yaml").read_text())
    assert [t["factory"] for t in config["objective"]["terms"]] == ["fvis.grid:cells"]
    assert entry_points(load_config(out / "render" / "config.yaml", []).config) == []  # no
    # "runs your code" note: fvis's own objectives are not the user's code
    words = shlex.split(index["cell"]["render_row_0"].replace("index=0", "index=3"))
    assert words[:2] == ["fvis", "render"]
    again = cli(*words[1:], "--out", tmp_path / "cell3", "--quiet")
    assert again.exit_code == 0, again.output
    run = json.loads((tmp_path / "cell3" / "run.json").read_text())
    assert run["config"]["objective"]["kind"] == "dot_cossim"
    assert run["config"]["objective"]["vector"]["index"] == 3


def test_every_position_of_a_small_layer_by_default(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    image = halves(tmp_path / "halves.png")
    out = tmp_path / "grid"
    args = ["grid", QUICKSTART, "-i", image, "-l", "conv4", "-o", out, "--set", "optim.steps=2"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "grid.json").read_text())
    assert index["cells"]["count"] == 64 and not index["pooled"]  # conv4 is 8x8
    assert "averaged into" not in result.stderr
    assert "quickstart: 8x8 cells of conv4, 2 steps" in result.stderr


def test_a_large_layer_is_averaged_into_8x8_cells_and_says_so(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    image = halves(tmp_path / "halves.png")
    out = tmp_path / "grid"
    args = ["grid", QUICKSTART, "-i", image, "-l", "conv3", "-o", out, "--set", "optim.steps=1"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "conv3 is 16x16 on the image: averaged into 8x8 cells (--cells N)" in result.stderr
    assert load_file(str(out / "grid.safetensors"))["layout"].tolist() == [8, 8]


def test_a_grid_folder_is_replaced_only_with_force(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    image = halves(tmp_path / "halves.png")
    out = tmp_path / "grid"
    args = ["grid", QUICKSTART, "-i", image, "-l", "conv3", "-n", "2", "-o", out, "-q"]
    assert cli(*args, "--set", "optim.steps=1").exit_code == 0
    again = cli(*args, "--set", "optim.steps=2")
    assert again.exit_code == 2
    assert (
        again.stderr.strip()
        == f"{out}: grid folder exists; pass --force to overwrite it or --out DIR"
    )
    forced = cli(*args, "--set", "optim.steps=2", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "grid.json").read_text())["parameters"]["steps"] == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = cli(*args[:-3], "-o", tmp_path / "mine", "--force", "-q")
    assert refused.exit_code == 2 and "not a grid folder (no grid.json)" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "conv9"], "--layer conv9: unknown layer 'conv9'; did you mean"),
        (["--layer", "logits"], "needs a [B, C, H, W] layer; this one gives [1, 10]"),
        (["--cells", "20"], "--cells 20: expected 1 to 16 (conv3 is 16x16 on this image)"),
        (["--cells", "0"], "--cells 0: expected 1 to 16"),
        (["--align", "-1"], "--align -1.0: expected 0 or more"),
        (["--image", "missing.png"], "missing.png: no such file"),
        (["--image", "broken.png"], "broken.png: not a readable image"),
        (["--set", "optim.steps=0"], "optim.steps"),
    ],
)
def test_grid_errors_are_one_line(
    tmp_path: Path, cli: Callable[..., object], args: list[str], message: str
) -> None:
    halves(tmp_path / "halves.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    args = [a if not a.endswith(".png") else str(tmp_path / a) for a in args]
    if "--image" not in args:
        args += ["--image", str(tmp_path / "halves.png")]
    if "--layer" not in args:
        args += ["--layer", "conv3"]
    result = cli("grid", QUICKSTART, *args, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_grid_help_describes_every_option(cli: Callable[..., object]) -> None:
    result = cli("grid", "--help")
    assert result.exit_code == 0
    command = typer.main.get_command(app).commands["grid"]  # type: ignore[attr-defined]
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help, f"grid {param.opts} has no help"
            assert param.opts[0] in result.stdout
    assert "Olah et al. 2018" in result.stdout
