"""Malformed configs: every one is reported as `file:line: yaml.path: message`, exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from fvis.config import load_config

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
