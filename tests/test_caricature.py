"""Activations from data: an image's activations as a direction (a caricature) or a tensor
direction, and `param.decorrelate` from a file of colour statistics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_config
from fvis.build import build_plan
from fvis.config import Config, load_config
from fvis.expression import parse_expression
from fvis.io import read_image
from fvis.models import build_network
from fvis.objectives.algebra import Leaf
from fvis.params import color_matrix
from fvis.zoo import SHAPES

EXAMPLES = Path(__file__).parent.parent / "configs" / "objectives"
STRIPES = EXAMPLES / "stripes.png"
ZOO = {"source": "zoo", "name": "shapes"}


def _leaf(config: Config, base: Path) -> Leaf:
    """The one term a config's objective compiles to, on the CPU (as the comparisons by hand:
    a GPU's convolutions may round otherwise, TF32 among them)."""
    (leaf,) = build_plan(config.model_copy(update={"device": "cpu"}), base).objective.leaves()
    return leaf


def _zoo_activations(layer: str, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """stripes.png through the zoo model by hand: normalized with its mean and std, the
    output of `layer` captured by a forward hook: [C, H, W]."""
    config = Config.model_validate({"model": ZOO, "objective": "layer(conv3)"})
    model = build_network(config.model, EXAMPLES).model
    image = read_image(STRIPES, "RGB", size)[None]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (SHAPES.mean, SHAPES.std))
    captured: list[torch.Tensor] = []
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, args, out: captured.append(out))
    try:
        with torch.no_grad():
            model((image - mean) / std)
    finally:
        handle.remove()
    return captured[0][0]


def _zoo(objective: object, **overrides: object) -> Config:
    return Config.model_validate({"model": ZOO, "objective": objective, **overrides})


def _line(path: Path, key: str, last: bool = False) -> int:
    """The line of the first (or `last`) `key:` in a config file."""
    lines = path.read_text().splitlines()
    found = [n for n, text in enumerate(lines, 1) if text.strip().startswith(f"{key}:")]
    return found[-1] if last else found[0]


# ----------------------------------------------------------------------------- caricatures


def test_the_vector_is_the_image_s_mean_activation_at_the_layer() -> None:
    config = load_config(EXAMPLES / "caricature.yaml").config
    leaf = _leaf(config, EXAMPLES)
    expected = _zoo_activations("conv3").mean((1, 2))
    assert leaf.vector.shape == (64,)  # type: ignore[attr-defined]
    torch.testing.assert_close(leaf.vector.cpu(), expected, atol=1e-5, rtol=0)  # type: ignore[attr-defined]
    assert leaf.name == "dot_cossim(conv3, image('stripes.png'), cossim_pow=2)"


@pytest.mark.parametrize(
    "objective",
    [
        {"kind": "direction", "layer": "conv4", "vector": {"image": "stripes.png", "layer": "mid"}},
        "direction(conv4, image('stripes.png', mid))",
        "direction(conv4, {image: stripes.png, layer: mid})",
    ],
    ids=["yaml", "expression", "mapping"],
)
def test_the_image_s_layer_may_be_another_than_the_objective_s(objective: object) -> None:
    """`layer:` of the image (here a hooks alias of conv3) is where its activations are taken;
    the objective still reads its own layer (conv4, 64 channels as conv3)."""
    leaf = _leaf(_zoo(objective, hooks={"mid": "conv3"}), EXAMPLES)
    expected = _zoo_activations("conv3").mean((1, 2))
    torch.testing.assert_close(leaf.vector.cpu(), expected, atol=1e-5, rtol=0)  # type: ignore[attr-defined]
    assert leaf.reads == ("conv4",)
    assert leaf.name == "direction(conv4, image('stripes.png', mid))"


def test_an_image_layer_equal_to_the_objective_s_is_not_labelled() -> None:
    leaf = _leaf(_zoo("cosine(conv3, image('stripes.png', conv3))"), EXAMPLES)
    assert leaf.name == "cosine(conv3, image('stripes.png'))"


def test_tensor_direction_takes_the_image_s_whole_activations() -> None:
    objective = {"kind": "tensor_direction", "layer": "conv3", "tensor": {"image": "stripes.png"}}
    leaf = _leaf(_zoo(objective), EXAMPLES)
    expected = _zoo_activations("conv3")
    assert leaf.tensor.shape == (64, 16, 16)  # type: ignore[attr-defined]
    torch.testing.assert_close(leaf.tensor.cpu(), expected, atol=1e-5, rtol=0)  # type: ignore[attr-defined]
    assert leaf.name == "tensor_direction(conv3, image('stripes.png'))"


def test_tensor_direction_at_another_layer_is_a_centred_window() -> None:
    """conv4's 8x8 activations of the image, compared with conv3's centred 8x8 window."""
    leaf = _leaf(_zoo("tensor_direction(conv3, image('stripes.png', conv4))"), EXAMPLES)
    expected = _zoo_activations("conv4")
    assert leaf.tensor.shape == (64, 8, 8)  # type: ignore[attr-defined]
    torch.testing.assert_close(leaf.tensor.cpu(), expected, atol=1e-5, rtol=0)  # type: ignore[attr-defined]
    assert leaf.name == "tensor_direction(conv3, image('stripes.png', conv4))"


def test_a_token_layer_s_vector_is_the_mean_over_tokens(workdir: Path) -> None:
    shutil.copy(STRIPES, workdir / "stripes.png")
    config = Config.model_validate(
        tiny_config(
            model={"source": "factory", "factory": "tinynets:tokens"},
            hooks={},
            objective="dot_cossim('block.mlp', image('stripes.png'))",
        )
    )
    leaf = _leaf(config, workdir)
    network = build_network(config.model, workdir)
    captured: list[torch.Tensor] = []
    handle = network.model.get_submodule("block.mlp").register_forward_hook(
        lambda m, args, out: captured.append(out)
    )
    with torch.no_grad():
        network(read_image(workdir / "stripes.png", "RGB", (24, 24))[None])
    handle.remove()
    tokens = captured[0][0]  # [T, C]
    assert tokens.shape == (36, 6)
    torch.testing.assert_close(leaf.vector.cpu(), tokens.mean(0), atol=1e-5, rtol=0)  # type: ignore[attr-defined]


def test_a_caricature_render_raises_its_score(cli, tmp_path: Path) -> None:
    """Gradients flow through the image's direction: dot x cos^2 rises well above step 0's."""
    result = cli(
        "render",
        EXAMPLES / "caricature.yaml",
        "--quiet",
        "--set",
        "optim.steps=24",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run/run.json").read_text())
    before, after = run["initial"]["objective"][0], run["final"]["objective"][0]
    assert after > before + 1 and after > 3 * before, (before, after)
    assert list(run["final"]["terms"]) == ["dot_cossim(conv3, image('stripes.png'), cossim_pow=2)"]


def test_the_expression_form_names_the_layer() -> None:
    parsed = parse_expression(
        "cosine(conv4, image('a.png', conv3))", {"cosine": ("layer", "vector")}
    )
    assert parsed["vector"] == {"image": "a.png", "layer": "conv3"}
    assert parse_expression("cosine(conv4, image('a.png'))", {"cosine": ("layer", "vector")})[
        "vector"
    ] == {"image": "a.png"}


def _caricature(vector: object) -> dict:
    return tiny_config(
        objective={"kind": "dot_cossim", "layer": "conv2", "vector": vector}, optim={"steps": 2}
    )


def test_a_missing_image_is_one_line_at_its_key(write_config, cli, workdir: Path) -> None:
    path = write_config(_caricature({"image": "missing.png"}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{path}:{_line(path, 'image')}: objective.vector.image: no such file: "
        f"{workdir / 'missing.png'}"
    )


def test_an_unreadable_image_is_one_line_at_its_key(write_config, cli, workdir: Path) -> None:
    (workdir / "bad.png").write_text("not a png")
    path = write_config(_caricature({"image": "bad.png"}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}:{_line(path, 'image')}: objective.vector.image: ")
    assert "bad.png: not a readable image" in line


def test_an_unknown_image_layer_is_one_line_at_its_key(write_config, cli, workdir: Path) -> None:
    shutil.copy(STRIPES, workdir / "stripes.png")
    path = write_config(_caricature({"image": "stripes.png", "layer": "conv9"}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}:{_line(path, 'layer', last=True)}: objective.vector.layer: ")


def test_an_image_layer_of_other_channels_states_both_shapes(write_config, cli, workdir) -> None:
    shutil.copy(STRIPES, workdir / "stripes.png")
    path = write_config(_caricature({"image": "stripes.png", "layer": "0"}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    assert "objective.vector: layer '2': the vector has shape [8], the layer needs [16]" in (
        result.stderr
    )


# ----------------------------------------------------------------------------- decorrelate


def _decorrelated(workdir: Path, decorrelate: object, **param: object) -> dict:
    return tiny_config(param={"size": 24, "decorrelate": decorrelate, **param}, optim={"steps": 3})


def _stats(workdir: Path, matrix: torch.Tensor, name: str = "stats.safetensors", **more) -> str:
    save_file({"color_correlation": matrix.contiguous(), **more}, str(workdir / name))
    return name


ROOT = torch.tensor([[0.6, -0.2, -0.1], [0.55, 0.0, 0.2], [0.5, 0.2, -0.1]])


@pytest.mark.parametrize(
    "form", ["mapping", "key", "name alone"], ids=["mapping", "key", "name-alone"]
)
def test_the_image_decorrelates_with_the_file_s_matrix(workdir: Path, form: str) -> None:
    other = torch.eye(3)
    name = _stats(workdir, ROOT, mean=torch.zeros(3), other=other)
    spec: object = {
        "mapping": {"file": name},
        "key": {"file": name, "key": "color_correlation"},
        "name alone": name,
    }[form]
    config = Config.model_validate(_decorrelated(workdir, spec))
    plan = build_plan(config, workdir)
    assert plan.param.color is not None
    torch.testing.assert_close(plan.param.color.cpu(), color_matrix(ROOT), atol=0, rtol=0)


def test_another_key_and_other_formats(workdir: Path) -> None:
    torch.save({"mine": ROOT}, workdir / "stats.pt")
    config = Config.model_validate(_decorrelated(workdir, {"file": "stats.pt", "key": "mine"}))
    color = build_plan(config, workdir).param.color
    assert color is not None
    torch.testing.assert_close(color.cpu(), color_matrix(ROOT), atol=0, rtol=0)


def test_an_identity_matrix_renders_as_no_decorrelation(write_config, cli, workdir) -> None:
    _stats(workdir, torch.eye(3))
    images = []
    for name, spec in (("identity", {"file": "stats.safetensors"}), ("off", False)):
        path = write_config(_decorrelated(workdir, spec), f"{name}.yaml")
        result = cli("render", path, "--quiet", "--out", workdir / name)
        assert result.exit_code == 0, result.output
        images.append((workdir / name / "image_0.png").read_bytes())
    assert images[0] == images[1]


def test_the_resolved_config_records_the_file(write_config, cli, workdir: Path) -> None:
    _stats(workdir, ROOT)
    path = write_config(_decorrelated(workdir, "stats.safetensors"))
    result = cli("render", path, "--quiet", "--out", workdir / "run")
    assert result.exit_code == 0, result.output
    recorded = json.loads((workdir / "run/run.json").read_text())
    assert "stats.safetensors" in json.dumps(recorded)
    assert "stats.safetensors" in (workdir / "run/config.yaml").read_text()


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (torch.ones(2, 3), "the colour matrix must be [3, 3], got [2, 3]"),
        (torch.tensor([[1.0, 0, 0], [0, float("nan"), 0], [0, 0, 1]]), "NaN or infinite"),
        (torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]), "singular or nearly"),
        (torch.zeros(3, 3), "singular or nearly"),
    ],
    ids=["shape", "nan", "singular", "zero"],
)
def test_a_bad_matrix_is_one_line_at_decorrelate(
    write_config, cli, workdir: Path, matrix: torch.Tensor, message: str
) -> None:
    _stats(workdir, matrix)
    path = write_config(_decorrelated(workdir, {"file": "stats.safetensors"}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    prefix = f"{path}:{_line(path, 'decorrelate')}: param.decorrelate: "
    assert line.startswith(prefix + f"{workdir / 'stats.safetensors'}: "), line
    assert message in line


def test_a_missing_file_and_a_missing_key(write_config, cli, workdir: Path) -> None:
    path = write_config(_decorrelated(workdir, {"file": "none.safetensors"}))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{path}:{_line(path, 'file')}: param.decorrelate.file: no such file: "
        f"{workdir / 'none.safetensors'}"
    )
    save_file({"a": ROOT, "b": ROOT.clone()}, str(workdir / "two.safetensors"))
    path = write_config(_decorrelated(workdir, "two.safetensors"))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    assert "param.decorrelate.key: " in result.stderr
    assert "holds a, b: set key to one" in result.stderr


def test_decorrelate_refuses_other_values_in_one_line(write_config, cli, workdir) -> None:
    path = write_config(_decorrelated(workdir, 3))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{path}:{_line(path, 'decorrelate')}: param.decorrelate: expected true, false, a file "
        "name or {file: ..., key: ...}"
    )


def test_decorrelate_false_and_true_still_validate() -> None:
    for value in (True, False):
        assert (
            Config.model_validate(tiny_config(param={"decorrelate": value})).param.decorrelate
            is value
        )


def test_a_file_needs_three_channels(write_config, cli, workdir: Path) -> None:
    _stats(workdir, ROOT)
    config = _decorrelated(workdir, "stats.safetensors")
    config["model"] = {
        "source": "factory",
        "factory": "tinynets:convnet",
        "kwargs": {"channels": 1},
        "input": {"channels": 1},
    }
    path = write_config(config)
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{path}:{_line(path, 'decorrelate')}: param.decorrelate: decorrelate needs 3 channels, "
        "the image has 1"
    )
