"""Objectives from config: vectors from files, shape errors, any layer layout, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_config

DOCS = Path(__file__).parent.parent / "docs" / "objectives.md"
EXAMPLES = Path(__file__).parent.parent / "configs" / "objectives"


def _direction(vector: object) -> dict:
    return tiny_config(
        objective={"kind": "direction", "layer": "conv2", "vector": vector}, optim={"steps": 2}
    )


@pytest.mark.parametrize("fmt", ["inline", "npy", "pt", "safetensors", "random"])
def test_vectors_from_every_source(write_config, cli, workdir: Path, fmt: str) -> None:
    v = torch.arange(16, dtype=torch.float32)
    spec: object = v.tolist()
    if fmt == "npy":
        np.save(workdir / "v.npy", v.numpy())
        spec = {"file": "v.npy"}
    elif fmt == "pt":
        torch.save({"dir": v, "other": v}, workdir / "v.pt")
        spec = {"file": "v.pt", "key": "dir"}
    elif fmt == "safetensors":
        save_file({"rows": torch.stack([v, -v])}, str(workdir / "v.safetensors"))
        spec = {"file": "v.safetensors", "index": 1}
    elif fmt == "random":
        spec = {"random": 3}
    result = cli("render", write_config(_direction(spec)), "--quiet")
    assert result.exit_code == 0, result.output


def test_vector_shape_error_states_both_shapes(write_config, cli) -> None:
    path = write_config(_direction([1.0, 2.0, 3.0]))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "vector" in t)
    assert result.stderr.strip() == (
        f"{path}:{line}: objective.vector: layer '2': the vector has shape [3], the layer needs "
        "[16]"
    )


def test_file_errors_name_the_key(write_config, cli, workdir: Path) -> None:
    torch.save({"a": torch.ones(16), "b": torch.ones(16)}, workdir / "two.pt")
    result = cli("render", write_config(_direction({"file": "two.pt"})), "--quiet")
    assert result.exit_code == 2
    assert "objective.vector.key: " in result.stderr and "holds a, b: set key to one" in (
        result.stderr
    )


def test_softmax_output_warns_and_says_where_to_point(write_config, cli) -> None:
    config = tiny_config(
        model={"source": "factory", "factory": "tinynets:with_softmax"},
        hooks={},
        objective={"kind": "class_logit", "index": 1},
        optim={"steps": 2},
    )
    result = cli("render", write_config(config), "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning: class_logit reads 'output', which outputs probabilities (softmax)" in (
        result.stderr
    )
    assert "point `layer` at the module before the softmax" in result.stderr


def test_token_layers_and_tuple_outputs(write_config, cli, workdir: Path) -> None:
    config = tiny_config(
        model={"source": "factory", "factory": "tinynets:tokens"},
        hooks={"mlp": "block[0]", "attn": "block[1][attn]"},
        objective="channel(mlp, 4) + neuron(mlp, 2, x=1) + layer(attn)",
        param={"size": 16},
        optim={"steps": 3},
    )
    result = cli("render", write_config(config), "--quiet")
    assert result.exit_code == 0, result.output
    terms = json.loads((workdir / "outputs/cfg/run.json").read_text())["final"]["terms"]
    assert set(terms) == {
        "channel(block[0], 4)",
        "neuron(block[0], 2, x=1)",
        "layer(block[1][attn])",
    }


def test_selecting_from_a_tuple_is_required(write_config, cli) -> None:
    config = tiny_config(
        model={"source": "factory", "factory": "tinynets:tokens"},
        hooks={},
        objective="channel(block, 1)",
        param={"size": 16},
    )
    result = cli("render", write_config(config), "--quiet")
    assert result.exit_code == 2
    assert "layer 'block' outputs ([1, 16, 6], {attn: [1, 16]}), not a tensor; select one" in (
        result.stderr
    )


def test_l2_inversion_moves_towards_the_target_image(cli, tmp_path: Path) -> None:
    result = cli(
        "render",
        EXAMPLES / "l2_inversion.yaml",
        "--quiet",
        "--set",
        "optim.steps=64",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run/run.json").read_text())
    before, after = run["initial"]["objective"][0], run["final"]["objective"][0]
    assert before < after < 0  # minus a distance to the target activation...
    assert -after < 0.6 * -before  # ...which shrinks by at least 40% in 64 steps


def test_diversity_makes_a_batch_visibly_different(tmp_path: Path) -> None:
    from fvis.build import build_plan
    from fvis.config import load_config
    from fvis.render import render

    def spread(*overrides: str) -> float:
        loaded = load_config(EXAMPLES / "diversity.yaml", ["optim.steps=96", *overrides])
        images = render(build_plan(loaded.config, EXAMPLES)).final.images
        pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        return sum((images[i] - images[j]).abs().mean().item() for i, j in pairs) / len(pairs)

    with_diversity, without = spread(), spread("objective=channel(conv3, 12)")
    print(
        f"\nmean pairwise pixel distance: {with_diversity:.3f} with diversity, {without:.3f} "
        "without"
    )
    assert with_diversity > 1.2 * without


def test_every_objective_has_an_example_in_the_docs() -> None:
    from fvis.config import objective_kinds

    docs = DOCS.read_text()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert path.read_text() in docs, f"{path.name} is not shown verbatim in {DOCS.name}"
    kinds = {path.stem for path in EXAMPLES.glob("*.yaml")}
    assert set(objective_kinds()) <= kinds, set(objective_kinds()) - kinds


def _terms(workdir: Path, name: str = "cfg") -> dict:
    return json.loads((workdir / f"outputs/{name}/run.json").read_text())["final"]["terms"]


@pytest.mark.parametrize(
    "objective",
    [
        {"kind": "channel", "layer": "conv2", "channel": [5, 12]},
        "channel(conv2, [5, 12])",
    ],
    ids=["yaml", "expression"],
)
def test_several_channels_in_one_objective(write_config, cli, workdir, objective) -> None:
    """`channel: [5, 12]` (keras-vis's filter_indices): one term, the sum of the two means."""
    result = cli("render", write_config(tiny_config(objective=objective, optim={"steps": 2})))
    assert result.exit_code == 0, result.output
    assert list(_terms(workdir)) == ["channel(2, [5, 12])"]


def test_each_listed_channel_is_range_checked_at_its_line(write_config, cli) -> None:
    config = (
        "model: {source: zoo, name: shapes}\n"
        "objective:\n  kind: channel\n  layer: conv3\n  channel:\n    - 5\n    - 99\n"
    )
    path = write_config(config)
    result = cli("validate", path, "--deep")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"{path}:7: objective.channel[1]: layer 'conv3': channel 99 is out of range: the layer "
        "has 64 channels (0..63)"
    )


def test_random_in_an_expression_renders_as_in_yaml(write_config, cli, workdir) -> None:
    """`{random: 3}` in an expression: the same term, and the same label, as in the YAML."""
    by_string = tiny_config(objective="direction(conv2, {random: 3})", optim={"steps": 2})
    assert cli("render", write_config(by_string, "expr.yaml")).exit_code == 0
    by_yaml = _direction({"random": 3})
    assert cli("render", write_config(by_yaml, "tree.yaml")).exit_code == 0
    assert _terms(workdir, "expr") == _terms(workdir, "tree")
    assert list(_terms(workdir, "expr")) == ["direction(2, random(3))"]


def test_terms_differing_in_a_parameter_have_their_own_labels(write_config, cli, workdir):
    """No `#2`: each label shows the parameter that tells the terms apart (issue 15)."""
    objective = (
        "channel(conv2, 1) - 1e-4 * l1(image) - 1e-4 * l1(image, 0.5)"
        " + 0.1 * direction(conv2, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])"
        " + 0.1 * direction(conv2, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])"
        " + 0.1 * direction(conv2, file('v.npy')) + 0.1 * direction(conv2, random(2))"
    )
    np.save(workdir / "v.npy", np.ones(16, dtype=np.float32))
    result = cli("render", write_config(tiny_config(objective=objective, optim={"steps": 2})))
    assert result.exit_code == 0, result.output
    labels = list(_terms(workdir))
    assert labels[:3] == ["channel(2, 1)", "l1(image)", "l1(image, 0.5)"]
    assert labels[5:] == ["direction(2, file('v.npy'))", "direction(2, random(2))"]
    assert labels[3] != labels[4]
    assert all(label.startswith("direction(2, vector#") for label in labels[3:5])
    assert not any(" #" in label for label in labels)  # render.py's " #2" for a repeat


def test_a_complex_vector_file_is_refused_not_silently_made_real(
    cli, write_config, workdir
) -> None:
    import numpy as np  # lazy: only this test writes a .npy

    np.save(workdir / "c.npy", np.ones(16, dtype=np.complex64))
    objective = {"kind": "direction", "layer": "conv2", "vector": {"file": "c.npy"}}
    result = cli("validate", write_config(tiny_config(objective=objective)), "--deep")
    assert result.exit_code == 2, result.output
    assert "objective.vector.file: " in result.stderr
    assert result.stderr.strip().endswith("c.npy holds torch.complex64 values, not real numbers")
    assert "Warning" not in result.stderr
