"""Malformed configs: every one is reported as `file:line: yaml.path: message`, exit code 2."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from fvis.config import ConfigError, load_config
from fvis.config.loader import parse_yaml

GOOD = yaml.safe_dump(tiny_config(), sort_keys=False)


def _replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


# (case, YAML text, text of the line the error must point at, substring expected)
CASES = [
    (
        "wrong type",
        _replace("steps: 8", "steps: many"),
        "steps: many",
        "optim.steps: Input should be a valid integer",
    ),
    (
        "negative steps",
        _replace("steps: 8", "steps: -5"),
        "steps: -5",
        "optim.steps: Input should be greater than or equal to 1",
    ),
    ("unknown top-level key", GOOD + "stepz: 3\n", "stepz", "stepz: unknown key"),
    ("unknown nested key", _replace("steps: 8", "stpes: 8"), "stpes", "optim.stpes: unknown key"),
    (
        "bad layer",
        _replace("layer: conv2", "layer: conv9"),
        "layer: conv9",
        "objective.layer: unknown layer 'conv9'; did you mean 'conv2'?",
    ),
    (
        "bad hook path",
        _replace("conv2: '2'", "conv2: '12'"),
        "conv2: '12'",
        "hooks.conv2: unknown layer '12'; did you mean",
    ),
    (
        "channel beyond the layer",
        _replace("channel: 3", "channel: 99"),
        "channel: 99",
        "objective.channel: layer '2': channel 99 is out of range: the layer has 16 channels "
        "(0..15)",
    ),
    ("invalid YAML", GOOD + "name: {a: 1]\n", "name: {a", "invalid YAML: expected ',' or '}'"),
    (
        "unknown objective kind",
        _replace("kind: channel", "kind: chanel"),
        "kind: chanel",
        "objective.kind: unknown 'chanel'; did you mean 'channel'?",
    ),
    (
        "unknown model source",
        _replace("source: factory", "source: hub"),
        "source: hub",
        "model.source: unknown 'hub'",
    ),
    (
        "threshold beyond steps",
        _replace("steps: 8", "steps: 8\n  thresholds: [4, 20]"),
        "optim:",
        "optim: thresholds [20] exceed steps (8)",
    ),
    (
        "learning rate annealed upward",
        _replace("steps: 8", "steps: 8\n  lr: 0.05\n  lr_end: 0.1"),
        "optim:",
        "optim: lr_end (0.1) exceeds lr (0.05): it anneals down",
    ),
    (
        "frame on a model of one input size",
        _replace("tinynets:convnet", "tinynets:fixed")
        .replace("conv2: '2'", "conv2: '3'")
        .replace("kind: channel", "kind: class_logit\n  index: 1")
        .replace("  channel: 3\n", "")
        + "transforms:\n- kind: pad\n  pixels: 4\n  frame: true\n",
        "frame: true",
        "transforms[0].frame: the model fails on a 3x32x32 image",
    ),
    (
        "frame on token layers",
        _replace("tinynets:convnet", "tinynets:tokens").replace("conv2: '2'", "conv2: block[0]")
        + "transforms:\n- kind: pad\n  pixels: 4\n  frame: true\n",
        "frame: true",
        "a frame needs [B, C, H, W] maps; set frame: false",
    ),
    (
        "float64 with autocast",
        _replace("steps: 8", "steps: 8\n  float64: true\n  precision: bf16"),
        "optim:",
        "optim: float64 and precision bf16 exclude each other",
    ),
    (
        "image too small",
        _replace("size: 24", "size: [24, 2]"),
        "size: [24, 2]",
        "param.size[1]: Input should be greater than or equal to 8",
    ),
    ("bad device", GOOD + "device: gpu\n", "device: gpu", "device: String should match pattern"),
    (
        "batch item beyond the batch",
        _replace("channel: 3", "channel: 3\n  batch: 5"),
        "batch: 5",
        "objective.batch: batch item 5 does not exist: param.batch is 1",
    ),
    (
        "class logit on a conv layer",
        _replace("kind: channel", "kind: class_logit\n  index: 1").replace("  channel: 3\n", ""),
        "layer: conv2",
        "expects a [B, classes] layer, got [1, 16, 12, 12]",
    ),
    ("top level not a mapping", "- 1\n- 2\n", "- 1", "the top level must be a mapping"),
    (
        "missing checkpoint file",
        _replace(
            "source: factory", "source: checkpoint\n  path: nope.pt\n  arch: tinynets:convnet"
        ).replace("  factory: tinynets:convnet\n", ""),
        "path: nope.pt",
        "model.path: no such file",
    ),
    (
        "factory that is no module",
        _replace("tinynets:convnet", "tinynets:not_a_module"),
        "model:",
        "model: the model is a int, not a torch nn.Module",
    ),
    (
        "unknown factory module",
        _replace("tinynets:convnet", "tinyn:convnet"),
        "factory: tinyn",
        "model.factory: cannot import 'tinyn'",
    ),
]


@pytest.mark.parametrize(("case", "text", "marker", "expected"), CASES, ids=[c[0] for c in CASES])
def test_malformed_config_gives_one_line_error_with_file_and_line(
    write_config, cli, case: str, text: str, marker: str, expected: str
) -> None:
    path = write_config(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(marker))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    assert lines[0].startswith(f"{path}:{line}: "), lines[0]
    assert expected in lines[0]


def test_every_error_is_reported_at_once(write_config) -> None:
    text = _replace("steps: 8", "steps: -1\n  lr: 0").replace("size: 24", "size: 1")
    path = write_config(text + "extra: 1\n")
    with pytest.raises(Exception) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 5  # steps, lr, both sides of the size, the unknown key
    assert all(re.match(rf"{re.escape(str(path))}:\d+: ", line) for line in lines)


def test_missing_config_file(cli, workdir: Path) -> None:
    result = cli("validate", workdir / "absent.yaml")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"{workdir / 'absent.yaml'}: no such config file"


def test_non_utf8_file(cli, workdir: Path) -> None:
    path = workdir / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert "not UTF-8" in result.stderr


def test_overrides_are_validated_and_located(write_config, cli) -> None:
    path = write_config(GOOD)
    result = cli("validate", path, "--set", "optim.steps=-3")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"{path}: --set optim.steps=-3: optim.steps:")


def test_overrides_apply(write_config) -> None:
    path = write_config(GOOD)
    config = load_config(path, ["optim.steps=64", "param.size=[32, 48]", "hooks.c1=0"]).config
    assert config.optim.steps == 64
    assert config.param.size == (32, 48)
    assert config.hooks["c1"] == "0"


def test_override_into_a_list_and_bad_paths(write_config) -> None:
    path = write_config({**tiny_config(), "transforms": [{"kind": "jitter", "pixels": 2}]})
    assert load_config(path, ["transforms.0.pixels=5"]).config.transforms[0].pixels == 5
    with pytest.raises(Exception, match="no such place"):
        load_config(path, ["transforms.3.pixels=5"])
    with pytest.raises(Exception, match=r"expected dotted\.path=value"):
        load_config(path, ["optim.steps"])


def test_validate_accepts_a_good_file(write_config, cli) -> None:
    path = write_config(GOOD)
    result = cli("validate", path, "--deep")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: ok"


# ----------------------------------------------------------------------------- hostile inputs
# Depth bombs, huge integers, duplicate keys: refused in one line at their place, exit 2, never
# a RecursionError or ValueError traceback (issue 15).

HEAD = "model: {source: zoo, name: shapes}\nobjective: {kind: channel, layer: conv3, channel: 5}\n"


def _nested_blocks(depth: int) -> str:
    """`depth` block mappings inside each other, indented by one space per level."""
    return "".join(" " * i + "a:\n" for i in range(1, depth + 1)) + " " * depth + " 1\n"


def _alias_chain(length: int) -> str:
    """Each list holds the one before through an alias: shallow text, deep data."""
    return "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, length))


# (case, YAML text after HEAD, line of the error, its YAML path, the message)
TOO_DEEP = "nested more than 64 levels deep: fvis reads at most 64 levels of lists and mappings"
HOSTILE = [
    (
        "20,000 nested [",
        "name: " + "[" * 20_000 + "]" * 20_000 + "\n",
        3,
        "name[0][0][0][0][0][0][0]...",
        TOO_DEEP,
    ),
    (
        "3,000 nested flow mappings",
        "name: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
        3,
        "name.a.a.a.a.a.a.a...",
        TOO_DEEP,
    ),
    (
        "1,000 nested block mappings",
        "name:\n" + _nested_blocks(1000),
        67,
        "name.a.a.a.a.a.a.a...",
        TOO_DEEP,
    ),
    (
        "a chain of 100 aliases",
        _alias_chain(100),
        66,
        "a63",
        "nested more than 64 levels deep once YAML aliases are expanded: fvis reads at most 64 "
        "levels of lists and mappings",
    ),
    (
        "an alias inside what it names",
        "name: &a [1, *a]\n",
        3,
        "name[1]",
        "a YAML alias inside the list or mapping it names: it nests without end",
    ),
    (
        "an integer of 5,000 digits",
        "seed: " + "9" * 5000 + "\n",
        3,
        "seed",
        "integer with 5000 digits is too large (at most 100)",
    ),
    (
        "a hexadecimal integer of 5,000 digits",
        "seed: 0x" + "f" * 5000 + "\n",
        3,
        "seed",
        "integer with 5000 digits is too large (at most 100)",
    ),
    (
        "a huge integer as a key",
        "hooks: {" + "1" * 200 + ": conv3}\n",
        3,
        "hooks." + "1" * 200,
        "integer with 200 digits is too large (at most 100)",
    ),
    ("duplicate top-level key", "name: a\nname: b\n", 4, "name", "duplicate key (first at line 3)"),
    (
        "duplicate nested key",
        "optim:\n  steps: 8\n  lr: 0.05\n  steps: 9\n",
        6,
        "optim.steps",
        "duplicate key (first at line 4)",
    ),
    (
        "duplicate key in a flow mapping",
        "param: {size: 32, size: 64}\n",
        3,
        "param.size",
        "duplicate key (first at line 3)",
    ),
    (
        "duplicate key spelled with quotes",
        "name: a\n'name': b\n",
        4,
        "name",
        "duplicate key (first at line 3)",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "line", "where", "message"), HOSTILE, ids=[c[0] for c in HOSTILE]
)
def test_hostile_yaml_is_one_located_line(
    write_config, cli, case: str, text: str, line: int, where: str, message: str
) -> None:
    path = write_config(HEAD + text)
    result = cli("validate", path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"{path}:{line}: {where}: {message}"]


def test_depth_is_refused_before_python_runs_out_of_stack(write_config) -> None:
    """Nothing recurses more than a few frames per level below the limit: a 20,000-deep file
    is refused even with a recursion limit of 500 (Python's default is 1000)."""
    path = write_config(HEAD + "name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(500)
    try:
        with pytest.raises(ConfigError, match="nested more than 64 levels"):
            load_config(path)
    finally:
        sys.setrecursionlimit(limit)


def test_sixty_four_levels_are_read_and_sixty_five_refused() -> None:
    """The top-level mapping and 63 lists inside it: 64 levels, read; one more list, refused."""
    data, problems = parse_yaml("a: " + "[" * 63 + "1" + "]" * 63)
    assert problems == []
    expected: object = 1
    for _ in range(63):
        expected = [expected]
    assert data["a"] == expected
    _, problems = parse_yaml("a: " + "[" * 64 + "1" + "]" * 64)
    assert [(p.loc[:2], p.message) for p in problems] == [(("a", 0), TOO_DEEP)]


def test_every_duplicate_is_reported_at_once(write_config) -> None:
    path = write_config(HEAD + "name: a\nseed: 1\nname: b\nseed: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines == [
        f"{path}:5: name: duplicate key (first at line 3)",
        f"{path}:6: seed: duplicate key (first at line 4)",
    ]


def test_merge_keys_still_override() -> None:
    """`<<: *base` then a key of its own is YAML's way to override: not a duplicate."""
    text = (
        "model: {source: zoo, name: shapes}\n"
        "base: &base {kind: channel, layer: conv3, channel: 5, weight: 2.0}\n"
        "objective: {<<: *base, weight: 3.0}\n"
    )
    data, problems = parse_yaml(text)
    assert problems == []
    assert data["objective"] == {"kind": "channel", "layer": "conv3", "channel": 5, "weight": 3.0}


def test_attribution_configs_refuse_duplicate_keys(write_config, cli) -> None:
    text = (
        "model: {source: zoo, name: shapes}\ninputs: [{kind: zoo_class, class: red}]\n"
        "methods: [{kind: saliency}]\ntarget: red\ntarget: blue\n"
    )
    path = write_config(text)
    result = cli("attribute", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"{path}:5: target: duplicate key (first at line 4)"


SET_CASES = [
    (
        "5,000-deep list",
        "objective.channel=" + "[" * 5000 + "]" * 5000,
        "objective.channel[0][0][0][0][0][0]...: " + TOO_DEEP,
    ),
    (
        "3,000-deep mapping",
        "objective.channel=" + "{a: " * 3000 + "1" + "}" * 3000,
        "objective.channel.a.a.a.a.a.a...: " + TOO_DEEP,
    ),
    (
        "integer of 5,000 digits",
        "objective.channel=" + "9" * 5000,
        "objective.channel: integer with 5000 digits is too large (at most 100)",
    ),
    (
        "duplicate key",
        "objective={kind: channel, layer: conv3, channel: 1, channel: 2}",
        "objective.channel: duplicate key (first at line 1)",
    ),
    ("path of 5,000 parts", "a." * 5000 + "b=1", "the path has more than 64 parts"),
    ("NaN", "optim.lr=.nan", "optim.lr: Input should be a finite number"),
    ("infinity", "param.decay=-.inf", "param.decay: Input should be a finite number"),
    (
        "index of 5,000 digits",
        "transforms." + "9" * 5000 + "=1",
        "transforms: Input should be a valid list",
    ),
]


@pytest.mark.parametrize(("case", "item", "message"), SET_CASES, ids=[c[0] for c in SET_CASES])
def test_hostile_set_values_are_one_line(write_config, cli, case: str, item: str, message: str):
    path = write_config(HEAD)
    result = cli("validate", path, "--set", item)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    shown = item if len(item) <= 60 else item[:60] + "..."
    assert line == f"{path}: --set {shown}: {message}"
    assert len(line) < 400  # the item is quoted by its start, not its 10,000 characters


def test_a_long_set_item_is_quoted_by_its_start_in_later_errors(write_config, cli) -> None:
    path = write_config(HEAD)
    item = "name=" + "x" * 5000
    result = cli("validate", path, "--set", item)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"{path}: --set {item[:60]}...: name: String should")


@pytest.mark.parametrize("field", ["vector: {file: NAME}", "target: {image: NAME}"])
def test_a_path_too_long_to_exist_is_refused_in_validation(write_config, cli, field: str):
    kind = "direction" if "vector" in field else "l2_inversion"
    name = "d" * 5000
    text = f"model: {{source: zoo, name: shapes}}\nobjective: {{kind: {kind}, layer: conv3, "
    path = write_config(text + field.replace("NAME", name) + "}\n")
    result = cli("validate", path, "--deep")
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    key = "objective.vector.file" if "vector" in field else "objective.target.image"
    assert line == f"{path}:2: {key}: path of 5000 characters is too long (at most 4096)"


def test_a_path_component_too_long_is_refused(write_config, cli) -> None:
    text = "model: {source: zoo, name: shapes}\nobjective: {kind: direction, layer: conv3, "
    path = write_config(text + f"vector: {{file: {'d' * 300}/v.npy}}}}\n")
    result = cli("validate", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"{path}:2: objective.vector.file: path component 'dddddddddddddddddddd'... is too "
        "long (at most 255 bytes)"
    )
