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
        ("cosine(a, random(3, 4))", "random() at column 11 takes random: at most 1, got 2"),
        ("cosine(a, image('x.png', b, c))", "image() at column 11 takes image and layer: at"),
        ("cosine(a, file('v.pt', 'k', 2))", "file() at column 11 takes file and key: at most 2"),
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


def test_mappings_as_in_yaml_flow_style() -> None:
    """`{random: 3}` is what the YAML says, in the YAML's own spelling (issue 15)."""
    tree = parse_objective(
        "direction(conv3, {random: 3}) + vector(conv4, {file: v.pt, key: 'dir', index: 2})"
        " + l2_inversion(conv3, {image: 'cat.png'})"
    )
    direction, vector, inversion = tree["terms"]
    assert direction["vector"] == {"random": 3}
    assert vector["vector"] == {"file": "v.pt", "key": "dir", "index": 2}
    assert inversion["target"] == {"image": "cat.png"}
    assert parse_objective("direction(conv3, {random: 3})") == parse_objective(
        "direction(conv3, random(3))"
    )


def test_a_mapping_validates_like_the_yaml() -> None:
    by_string = Config.model_validate({"objective": "direction(conv3, {random: 3}, cossim_pow=1)"})
    by_tree = Config.model_validate(
        {
            "objective": {
                "kind": "direction",
                "layer": "conv3",
                "vector": {"random": 3},
                "cossim_pow": 1,
            }
        }
    )
    assert by_string == by_tree


def test_several_channels_in_an_expression() -> None:
    tree = parse_objective("channel(conv3, [5, 12]) + neuron(conv3, [1, 2], x=0)")
    assert tree["terms"][0] == {"kind": "channel", "layer": "conv3", "channel": [5, 12]}
    config = Config.model_validate({"objective": "channel(conv3, [5, 12])"})
    assert config.objective.channel == [5, 12]
    assert Config.model_validate({"objective": "channel(conv3, 5)"}).objective.channel == [5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("direction(a, {random: 3, random: 4})", "duplicate key 'random' at column 26"),
        ("direction(a, {random 3})", "expected ':', found '3' at column 22"),
        ("direction(a, {3: 4})", "expected a key, found '3' at column 15"),
        ("direction(a, {random: 3)", "expected ',', found ')' at column 24"),
    ],
)
def test_mapping_errors(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_objective(text)
    assert str(info.value) == message


DEPTH = "nested more than 64 levels deep at column {}: fvis reads at most 64 levels of "
DEPTH += "parentheses, signs, calls, lists and mappings"


@pytest.mark.parametrize(
    ("case", "text", "column"),
    [
        ("3,000 parentheses", "(" * 3000 + "channel(conv2, 1)" + ")" * 3000, 65),
        ("3,000 minus signs", "-" * 3000 + "channel(conv2, 1)", 65),
        ("a tower of powers", "channel(conv2, 1)" + " ^ 2" * 3000, 17 + 4 * 64 + 2),
        ("5,000 nested lists", "channel(conv2, " + "[" * 5000 + "]" * 5000 + ")", 16 + 63),
        ("nested calls", "interpolate(" * 3000 + "layer(a)" + ")" * 3000, 1 + 12 * 64),
        ("nested mappings", "direction(a, " + "{a: " * 3000 + "1" + "}" * 3000 + ")", 14 + 4 * 63),
    ],
)
def test_depth_bombs_are_refused_at_a_column(case: str, text: str, column: int) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_objective(text)
    assert str(info.value) == DEPTH.format(column)


def test_sixty_four_levels_parse() -> None:
    """63 parentheses (or signs) and the call inside them: 64 levels."""
    tree = parse_objective("(" * 63 + "channel(conv2, 1)" + ")" * 63)
    assert tree == {"kind": "channel", "layer": "conv2", "channel": 1}
    assert parse_objective("-" * 63 + "channel(conv2, 1)")["weight"] == -1.0
    with pytest.raises(ExpressionError, match="nested more than 64 levels deep at column 65"):
        parse_objective("(" * 64 + "channel(conv2, 1)" + ")" * 64)


def test_an_integer_too_long_is_refused() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_objective("channel(conv2, " + "9" * 5000 + ")")
    assert str(info.value) == "integer with 5000 digits at column 16 is too large (at most 100)"


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        (
            "(" * 3000 + "channel(conv2, 1)" + ")" * 3000,
            "objective: " + DEPTH.format(65),
        ),
        (
            "channel(conv2, " + "9" * 5000 + ")",
            "objective: integer with 5000 digits at column 16 is too large (at most 100)",
        ),
    ],
    ids=["depth", "digits"],
)
def test_hostile_expressions_are_one_line_at_the_objective(
    write_config, cli, objective: str, message: str
) -> None:
    path = write_config(f"model: {{source: zoo}}\nobjective: '{objective}'\n")
    result = cli("validate", path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"{path}:2: {message}"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("channel(conv3, 1) ** 2 ** 3 ** 4 ** 5", "'**' at column 29 gives no finite number"),
        ("channel(conv3, 1) / 0", "'/' at column 19 gives no finite number"),
        ("0 ** -1 * channel(conv3, 1)", "'**' at column 3 gives no finite number"),
    ],
)
def test_constants_without_a_finite_value_are_refused_at_once(text: str, message: str) -> None:
    """Constants fold in floating point: a tower of powers is refused, not computed as an
    integer of millions of digits (which hung), and 1/0 is a message, not a traceback."""
    with pytest.raises(ExpressionError) as info:
        parse_objective(text)
    assert str(info.value) == message


def test_an_argument_given_twice_is_refused() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_objective("channel(conv3, channel=1, channel=2)")
    assert str(info.value) == "channel() got 'channel' twice (the second at column 27)"
    with pytest.raises(ExpressionError, match="got 'channel' twice"):
        parse_objective("channel(conv3, 1, channel=2)")
