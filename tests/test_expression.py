"""Objective expressions parse into the same tree as YAML, with errors that say where."""

from __future__ import annotations

import pytest

from fvis.config import Config
from fvis.config.objective import parse_objective
from fvis.expression import ExpressionError


def test_the_issue_example() -> None:
    tree = parse_objective("channel(m4a, 476) - 1e-4 * l1(m3b)")
    assert tree == {
        "kind": "sum",
        "terms": [
            {"kind": "channel", "layer": "m4a", "channel": 476},
            {"kind": "l1", "layer": "m3b", "weight": -1e-4},
        ],
    }


def test_precedence_products_powers_and_parentheses() -> None:
    tree = parse_objective("2 * (layer(a) + layer(b)) ^ 2 * layer(c) / 4")
    assert tree == {
        "kind": "product",
        "terms": [
            {
                "kind": "power",
                "term": {
                    "kind": "sum",
                    "terms": [{"kind": "layer", "layer": "a"}, {"kind": "layer", "layer": "b"}],
                },
                "exponent": 2,
                "weight": 2.0,
            },
            {"kind": "layer", "layer": "c"},
        ],
        "weight": 0.25,
    }


def test_keywords_lists_values_and_nested_objectives() -> None:
    tree = parse_objective(
        "-neuron(conv3.relu, 2, y=1, batch=[0, 2]) + interpolate(class_logit(1), class_logit(2))"
        " + direction('blocks.3[0]', random(4), cossim_pow=1)"
        " + l2_inversion(conv3, image('cat.png')) + vector(conv4, file('v.npy', 'dir'))"
    )
    neuron, interpolate, direction, inversion, vector = tree["terms"]
    assert neuron == {
        "kind": "neuron",
        "layer": "conv3.relu",
        "channel": 2,
        "y": 1,
        "batch": [0, 2],
        "weight": -1.0,
    }
    assert interpolate["start"] == {"kind": "class_logit", "index": 1}
    assert direction == {
        "kind": "direction",
        "layer": "blocks.3[0]",
        "vector": {"random": 4},
        "cossim_pow": 1,
    }
    assert inversion["target"] == {"image": "cat.png"}
    assert vector["vector"] == {"file": "v.npy", "key": "dir"}


def test_the_string_and_the_tree_validate_to_the_same_config() -> None:
    by_string = Config.model_validate({"objective": "channel(conv3, 5) - 0.5 * l2(image)"})
    by_tree = Config.model_validate(
        {
            "objective": {
                "kind": "sum",
                "terms": [
                    {"kind": "channel", "layer": "conv3", "channel": 5},
                    {"kind": "l2", "layer": "image", "weight": -0.5},
                ],
            }
        }
    )
    assert by_string == by_tree


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chanel(conv3, 1)", "unknown objective 'chanel'; did you mean channel?"),
        ("channel(conv3, 1", "expected ',' or ')', found the end at column 17"),
        ("channel(conv3, 1) +", "expected an objective or a number, found 'the end'"),
        ("3 + 4", "a number alone is not an objective"),
        ("2", "is a number, not an objective"),
        ("layer(a) / layer(b)", "division by an objective at column 10"),
        ("layer(a) ^ layer(b)", "the exponent must be a number"),
        ("layer(a, b)", "layer() takes at most 1 positional arguments"),
        ("layer(a) $", "unexpected '$' at column 10"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(
        ExpressionError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("?", r"\?")
        .replace("$", r"\$")
        .replace("^", r"\^"),
    ):
        parse_objective(text)


def test_an_expression_error_is_reported_at_the_objective_line(write_config, cli) -> None:
    path = write_config("model: {source: zoo}\nobjective: 'channel(conv3, 1'\n")
    result = cli("validate", path)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{path}:2: objective: expected ',' or ')', found the end at column 17"
    )
