"""`fvis attribute`: the example configs, every input source, the outputs, and config errors
reported as one `file:line: yaml.path: message` line with exit code 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY_MODEL, TINY_NETS
from fvis.config.attribution import AttributionConfig
from fvis.config.attribution_methods import METHODS
from fvis.io import to_pil

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "configs" / "attribution"
DOCS = ROOT / "docs" / "attribution.md"


def _tiny(**overrides: object) -> dict:
    """A fast attribution config on one generated 32x32 red-blob image."""
    config: dict = {
        "device": "cpu",
        "inputs": [{"kind": "zoo_class", "class": "red", "seed": 1}],
        "size": 32,
        "methods": [{"kind": "integrated_gradients", "n_steps": 4}],
        "metrics": None,
    }
    config.update(overrides)
    return config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_runs(cli, tmp_path: Path, path: Path) -> None:
    """Every example runs (metrics off for speed: they are tested on their own)."""
    out = tmp_path / "run"
    result = cli("attribute", path, "--out", out, "--quiet", "--set", "metrics=null")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "attribution.json").read_text())
    config = yaml.safe_load(path.read_text())
    assert len(report["methods"]) == len(config["methods"])
    assert all(m["scale"] and m["scale"]["value"] > 0 for m in report["methods"])


def test_outputs(cli, write_config, workdir: Path) -> None:
    methods = [
        {"kind": "integrated_gradients", "n_steps": 4},
        {"kind": "layer_grad_cam", "layer": "conv3", "display": "absolute"},
        {"kind": "saliency", "name": "smooth", "noise_tunnel": {"samples": 2}},
    ]
    metrics = {"infidelity": {"samples": 2}, "sensitivity": {"samples": 1}}
    path = write_config(_tiny(name="out", methods=methods, metrics=metrics))
    result = cli("attribute", path)
    assert result.exit_code == 0, result.output
    run_dir = workdir / "outputs" / "out"
    assert result.stdout.strip() == str(Path("outputs") / "out" / "grid.png")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "attribution.json",
        "attributions.safetensors",
        "config.yaml",
        "grid.png",
    ]
    assert "integrated_gradients:" in result.stderr and "3 methods on 1 inputs" in result.stderr
    report = json.loads((run_dir / "attribution.json").read_text())
    assert report["versions"]["captum"] and report["scale"]["percentile"] == 99
    assert report["inputs"] == [
        {
            "name": "red#0",
            "target": 7,
            "target_name": "red",
            "target_score": report["inputs"][0]["target_score"],
            "predicted": 7,
            "predicted_name": "red",
        }
    ]
    ig, gradcam, smooth = report["methods"]
    assert ig["captum"] == "IntegratedGradients" and len(ig["delta"]) == 1
    assert len(ig["infidelity"]) == 1 and len(ig["sensitivity"]) == 1
    assert set(ig["seconds"]) == {"attribution", "infidelity", "sensitivity"}
    assert gradcam["shape"] == [1, 1, 8, 8] and gradcam["scale"]["signed"] is False
    assert gradcam["infidelity"] is None and "infidelity" in gradcam["skipped"]
    assert smooth["noise_tunnel"] == "smoothgrad" and smooth["delta"] is None
    tensors = load_file(str(run_dir / "attributions.safetensors"))
    assert set(tensors) == {
        "inputs",
        "targets",
        "integrated_gradients",
        "integrated_gradients/map",
        "layer_grad_cam",
        "layer_grad_cam/map",
        "smooth",
        "smooth/map",
    }
    assert tensors["layer_grad_cam"].shape == (1, 1, 8, 8)
    assert tensors["layer_grad_cam/map"].shape == (1, 32, 32)
    with Image.open(run_dir / "grid.png") as grid:
        assert grid.width > 4 * 128 and grid.height > 128
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["inputs"][0]["class"] == "red"
    assert next(iter(resolved["methods"][0])) == "kind"


def test_existing_run_folder_needs_force(cli, write_config) -> None:
    path = write_config(_tiny())
    assert cli("attribute", path, "-q").exit_code == 0
    again = cli("attribute", path, "-q")
    assert again.exit_code == 2 and "pass --force" in again.stderr
    assert cli("attribute", path, "-q", "--force").exit_code == 0


def _save(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)


def test_files_folders_runs_and_a_foreign_model(cli, write_config, workdir: Path) -> None:
    """File, folder and run-folder inputs on a non-zoo model, a file baseline, a mask image."""
    g = torch.Generator().manual_seed(0)
    _save(torch.rand(3, 40, 30, generator=g), workdir / "one.png")
    for name in ("b.png", "a.png", "skip.txt"):
        if name.endswith(".png"):
            _save(torch.rand(3, 24, 24, generator=g), workdir / "folder" / name)
        else:
            (workdir / "folder" / name).write_text("not an image")
    for i in (1, 0, 10):
        _save(torch.rand(3, 24, 24, generator=g), workdir / "render" / f"image_{i}.png")
    _save(torch.full((3, 24, 24), 0.5), workdir / "grey.png")
    mask = torch.zeros(3, 24, 24)
    mask[0, :, 12:] = 1
    _save(mask, workdir / "mask.png")
    config = _tiny(
        name="foreign",
        model=TINY_MODEL,
        size=24,
        inputs=["one.png", {"kind": "folder", "path": "folder"}, {"kind": "run", "path": "render"}],
        target=[0, 1, 2, 3, 4, 0],
        baseline={"kind": "file", "path": "grey.png"},
        methods=[
            {"kind": "integrated_gradients", "n_steps": 4},
            {"kind": "feature_ablation", "mask": {"kind": "image", "path": "mask.png"}},
            {"kind": "layer_grad_cam", "layer": "2"},
            {"kind": "neuron_gradient", "layer": "2", "neuron": {"channel": 1, "x": 3}},
        ],
    )
    result = cli("attribute", write_config(config), "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "outputs" / "foreign" / "attribution.json").read_text())
    names = [i["name"] for i in report["inputs"]]
    assert names == ["one", "a", "b", "render/image_0", "render/image_1", "render/image_10"]
    assert [i["target"] for i in report["inputs"]] == [0, 1, 2, 3, 4, 0]
    assert report["methods"][3]["neuron"] == [1, 6, 3]
    tensors = load_file(str(workdir / "outputs" / "foreign" / "attributions.safetensors"))
    ablation = tensors["feature_ablation"][0]
    assert torch.equal(ablation[:, :, :12], ablation[:1, :1, :1].expand(3, 24, 12))  # one feature


# (case, config, text of the line the error points at, expected message)
ERRORS = [
    (
        "unknown method",
        _tiny(methods=[{"kind": "integrated_gradient"}]),
        "- kind: integrated_gradient",
        "methods[0].kind: unknown 'integrated_gradient'; did you mean 'integrated_gradients'",
    ),
    (
        "parameter of another method",
        _tiny(methods=[{"kind": "saliency", "n_steps": 4}]),
        "n_steps: 4",
        "methods[0].n_steps: unknown key",
    ),
    (
        "unknown layer",
        _tiny(methods=[{"kind": "layer_grad_cam", "layer": "conv33"}]),
        "layer: conv33",
        "methods[0].layer: unknown layer 'conv33'; did you mean 'conv3'",
    ),
    (
        "neuron channel out of range",
        _tiny(methods=[{"kind": "neuron_gradient", "layer": "conv4", "neuron": {"channel": 64}}]),
        "channel: 64",
        "methods[0].neuron.channel: conv4: channel 64 is out of range",
    ),
    (
        "unknown zoo class",
        _tiny(inputs=[{"kind": "zoo_class", "class": "redd"}]),
        "class: redd",
        "inputs[0].class: unknown class 'redd'; did you mean 'red'",
    ),
    (
        "missing image",
        _tiny(inputs=["nope.png"]),
        "- nope.png",
        "inputs[0].path: no such file",
    ),
    (
        "zoo images on another model",
        _tiny(model=TINY_MODEL),
        "- kind: zoo_class",
        "inputs[0].kind: zoo_class images need the built-in model",
    ),
    (
        "distribution where one baseline is needed",
        _tiny(baseline={"kind": "noise", "count": 4}),
        "baseline:",
        "baseline: integrated_gradients compares each input with one baseline",
    ),
    (
        "negative noise",
        _tiny(methods=[{"kind": "saliency", "noise_tunnel": {"stdev": -1}}]),
        "stdev: -1",
        "methods[0].noise_tunnel.stdev: Input should be greater than 0",
    ),
    (
        "no methods",
        _tiny(methods=[]),
        "methods: []",
        "methods: List should have at least 1 item",
    ),
]


@pytest.mark.parametrize(
    ("case", "config", "marker", "expected"), ERRORS, ids=[e[0] for e in ERRORS]
)
def test_config_errors_are_one_located_line(
    cli, write_config, case: str, config: dict, marker: str, expected: str
) -> None:
    text = yaml.safe_dump(config, sort_keys=False)
    path = write_config(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(marker))
    result = cli("attribute", path, "-q")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{line}: "), lines[0]
    assert expected in lines[0], lines[0]


def test_set_overrides_are_validated(cli, write_config) -> None:
    path = write_config(_tiny())
    result = cli("attribute", path, "-q", "--set", "methods.0.n_steps=0")
    assert result.exit_code == 2
    assert "--set methods.0.n_steps=0: methods[0].n_steps" in result.stderr


def test_docs_cover_every_method_and_their_examples_validate() -> None:
    text = DOCS.read_text()
    for kind, info in METHODS.items():
        assert f"| `{kind}` | {info.captum} |" in text, kind
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        AttributionConfig.model_validate(yaml.safe_load(block))


def test_readme_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Attribution" in readme and "(docs/attribution.md)" in readme
    assert readme.index("## Attribution") < readme.index("## Errors")


def test_schema_describes_every_field(cli) -> None:
    result = cli("schema", "--attribution")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == json.loads(json.dumps(AttributionConfig.model_json_schema()))
    missing = [
        f"{name}.{field}"
        for name, definition in {"AttributionConfig": schema, **schema["$defs"]}.items()
        for field, prop in definition.get("properties", {}).items()
        if field not in ("kind", "source") and "description" not in prop
    ]
    assert missing == []
    kinds = {
        d["properties"]["kind"].get("const")
        for d in schema["$defs"].values()
        if "kind" in d.get("properties", {})
    }
    assert set(METHODS) <= kinds


REUSED_RELU = """
import torch
from torch import nn


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu(self.b(self.relu(self.a(x))))
        return self.head(x.mean((2, 3)))


def reused():
    return Reused()
"""


def test_a_method_captum_refuses_fails_alone(cli, write_config, workdir: Path) -> None:
    """DeepLift on a ReLU module called twice: Captum's reason in one line at the method's
    line, the other methods' results written, the failure recorded, exit 1 (the run started)."""
    (workdir / "reuse.py").write_text(REUSED_RELU)
    _save(torch.rand(3, 16, 16), workdir / "x.png")
    config = _tiny(
        name="partial",
        model={"source": "factory", "factory": "reuse:reused"},
        inputs=["x.png"],
        size=16,
        methods=[
            {"kind": "saliency"},
            {"kind": "deep_lift"},
            {"kind": "integrated_gradients", "n_steps": 4},
            {"kind": "deep_lift", "name": "again"},
        ],
    )
    path = write_config(yaml.safe_dump(config, sort_keys=False))
    result = cli("attribute", path, "-q")
    assert result.exit_code == 1, result.output
    notice, *lines = result.stderr.strip().splitlines()
    assert notice.endswith(
        "model.factory: note: runs your code (reuse:reused); use only code you trust"
    )
    assert len(lines) == 2, lines
    assert (
        lines[0].startswith(f"{path}:") and ": methods[1]: deep_lift failed in Captum" in lines[0]
    )
    assert "used more than once" in lines[0]
    assert "methods[3]: deep_lift failed in Captum (RuntimeError)" in lines[1]
    assert "Traceback" not in result.output
    run_dir = workdir / "outputs" / "partial"
    report = json.loads((run_dir / "attribution.json").read_text())
    assert report["status"] == "failed"
    assert report["error"] == "2 of 4 methods failed: deep_lift, again"
    statuses = [(m["name"], m["status"]) for m in report["methods"]]
    assert statuses == [
        ("saliency", "complete"),
        ("deep_lift", "failed"),
        ("integrated_gradients", "complete"),
        ("again", "failed"),
    ]
    assert "used more than once" in report["methods"][1]["error"]
    tensors = load_file(str(run_dir / "attributions.safetensors"))
    assert {"saliency", "integrated_gradients"} <= tensors.keys()
    assert "deep_lift" not in tensors and "again" not in tensors
    with Image.open(run_dir / "grid.png") as grid:  # the input and two method columns
        assert grid.width < 4 * 128


def test_nothing_is_written_outside_the_run_folder(tmp_path: Path) -> None:
    """Captum imports matplotlib, which would create ~/.config/matplotlib and ~/.cache/matplotlib:
    fvis points it at a temporary folder, removed at exit (a user's MPLCONFIGDIR is kept)."""
    home, temp, work = tmp_path / "home", tmp_path / "tmp", tmp_path / "work"
    for folder in (home, temp, work):
        folder.mkdir()
    (work / "cfg.yaml").write_text(yaml.safe_dump(_tiny(methods=[{"kind": "saliency"}])))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME")
    }
    env |= {"HOME": str(home), "TMPDIR": str(temp)}
    command = [sys.executable, "-m", "fvis", "attribute", "cfg.yaml", "--out", "run", "-q"]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (work / "run" / "attribution.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["cfg.yaml", "run"]
    assert list(home.rglob("*")) == []
    assert list(temp.rglob("*")) == []
    own = tmp_path / "mpl"
    env["MPLCONFIGDIR"] = str(own)
    result = subprocess.run([*command, "--force"], cwd=work, env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert list(own.glob("fontlist-*.json")), "the user's MPLCONFIGDIR is used"


def test_paths_are_relative_to_a_relative_configs_folder(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fvis attribute cfg/x.yaml` from the config's parent: run, folder, file and sample
    inputs are found once under cfg/ (not under cfg/cfg/)."""
    g = torch.Generator().manual_seed(0)
    for i in (0, 1):
        _save(torch.rand(3, 16, 16, generator=g), tmp_path / "r" / f"image_{i}.png")
    _save(torch.rand(3, 16, 16, generator=g), tmp_path / "photos" / "a.png")
    _save(torch.rand(3, 16, 16, generator=g), tmp_path / "cfg" / "near.png")
    config = _tiny(
        model=TINY_MODEL,
        size=16,
        inputs=[
            {"kind": "run", "path": "../r"},
            {"kind": "folder", "path": "../photos"},
            "near.png",
        ],
        distribution={"kind": "samples", "inputs": [{"kind": "folder", "path": "../photos"}]},
        methods=[{"kind": "saliency"}, {"kind": "gradient_shap", "n_samples": 2}],
    )
    (tmp_path / "cfg" / "x.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "cfg" / "tinynets.py").write_text(TINY_NETS)
    monkeypatch.chdir(tmp_path)
    result = cli("attribute", "cfg/x.yaml", "--out", "out", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "attribution.json").read_text())
    assert [i["name"] for i in report["inputs"]] == ["r/image_0", "r/image_1", "a", "near"]


def test_an_absolute_folder_pattern_is_a_located_error(cli, write_config, workdir: Path) -> None:
    (workdir / "photos").mkdir()
    path = write_config(_tiny(inputs=[{"kind": "folder", "path": "photos", "pattern": "/etc/*"}]))
    result = cli("attribute", path, "-q")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "inputs[0].pattern: '/etc/*': not a pattern" in lines[0], lines
