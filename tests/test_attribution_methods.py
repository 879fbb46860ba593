"""Every attribution method of the registry on the built-in model: shapes, finite values, deltas,
noise tunnels, metrics, and the checks that turn misuse into located errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fvis.attribution.run import Outcome, Plan, build, run, write
from fvis.config.attribution import METHOD_MODELS, AttributionConfig
from fvis.config.attribution_methods import METHODS
from fvis.errors import SpecError
from fvis.io import to_pil

SIZE = 32
LAYER = "conv3"  # [B, 64, 8, 8] for a 32x32 input
TINY = {
    "n_steps": 4,
    "n_samples": 4,
    "window": 16,
    "stride": 16,
    "internal_batch_size": None,
}


def _tiny_method(kind: str) -> dict[str, Any]:
    """A method node with the smallest useful settings for every parameter it takes."""
    node: dict[str, Any] = {"kind": kind}
    fields = METHOD_MODELS[kind].model_fields
    for name, value in TINY.items():
        if name in fields and value is not None:
            node[name] = value
    if "layer" in fields:
        node["layer"] = LAYER
    if "neuron" in fields:
        node["neuron"] = {"channel": 57}
    if kind == "shapley_value_sampling":
        node["n_samples"] = 1
    return node


def tiny_config(methods: list[dict[str, Any]], **overrides: Any) -> AttributionConfig:
    """Two generated 32x32 images, coarse masks, two-image distributions, no metrics."""
    data: dict[str, Any] = {
        "name": "tiny",
        "device": "cpu",
        "inputs": [{"kind": "zoo_class", "class": "red", "count": 2, "seed": 1}],
        "size": SIZE,
        "distribution": {"kind": "noise", "count": 2},
        "mask": {"kind": "grid", "size": 16},
        "methods": methods,
        "metrics": None,
    }
    data.update(overrides)
    return AttributionConfig.model_validate(data)


@pytest.fixture(scope="module")
def every_method() -> Outcome:
    config = tiny_config([_tiny_method(kind) for kind in METHODS])
    return run(build(config, Path.cwd()))


def _expected_shape(kind: str, plan: Plan) -> tuple[int, ...]:
    info = METHODS[kind]
    if info.family != "layer":
        return (2, 3, SIZE, SIZE)
    if kind == "layer_grad_cam":
        return (2, 1, 8, 8)
    return (2, 64, 8, 8)


@pytest.mark.parametrize("kind", list(METHODS))
def test_every_method_runs(every_method: Outcome, kind: str) -> None:
    result = next(r for r in every_method.results if r.prepared.kind == kind)
    output = result.output
    assert tuple(output.raw.shape) == _expected_shape(kind, every_method.plan)
    assert torch.isfinite(output.raw).all(), kind
    assert output.map is not None and tuple(output.map.shape) == (2, SIZE, SIZE)
    assert torch.isfinite(output.map).all()
    assert result.scale is not None and result.scale.value > 0
    if output.delta is not None:
        assert output.delta.shape == (2,) and torch.isfinite(output.delta).all()


def test_methods_with_a_delta_report_it(every_method: Outcome) -> None:
    with_delta = {r.prepared.kind for r in every_method.results if r.output.delta is not None}
    assert with_delta == {  # the list in docs/attribution.md
        "integrated_gradients",
        "deep_lift",
        "gradient_shap",
        "deep_lift_shap",
        "layer_conductance",
        "layer_integrated_gradients",
        "layer_gradient_shap",
        "layer_deep_lift",
        "layer_deep_lift_shap",
    }


def test_registry_and_schema_agree() -> None:
    """Every method has a node, and every parameter the registry lists is a field of it."""
    assert set(METHOD_MODELS) == set(METHODS)
    for kind, info in METHODS.items():
        fields = METHOD_MODELS[kind].model_fields
        for param in info.params:
            assert ("baseline" if param == "distribution" else param) in fields, (kind, param)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel(nt_type: str) -> None:
    tunnel = {"type": nt_type, "samples": 3, "stdev": 0.1}
    config = tiny_config(
        [
            {"kind": "integrated_gradients", "n_steps": 4, "noise_tunnel": tunnel},
            {"kind": "layer_grad_cam", "layer": LAYER, "noise_tunnel": tunnel},
            {
                "kind": "neuron_gradient",
                "layer": LAYER,
                "neuron": {"channel": 3},
                "noise_tunnel": tunnel,
            },
        ]
    )
    outcome = run(build(config, Path.cwd()))
    for result in outcome.results:
        assert torch.isfinite(result.output.raw).all()
        if nt_type != "smoothgrad":
            assert (result.output.raw >= 0).all()  # squares and variances
    assert outcome.results[0].output.delta is not None


def test_metrics_per_method_and_image() -> None:
    metrics = {"infidelity": {"samples": 2}, "sensitivity": {"samples": 2}}
    config = tiny_config(
        [
            {"kind": "integrated_gradients", "n_steps": 4},
            {"kind": "layer_grad_cam", "layer": LAYER},
            {"kind": "neuron_gradient", "layer": LAYER, "neuron": {"channel": 57}},
            {"kind": "saliency", "metrics": False},
        ],
        metrics=metrics,
    )
    ig, gradcam, neuron, saliency = run(build(config, Path.cwd())).results
    for result in (ig, neuron):
        assert result.scores is not None
        assert result.scores.infidelity is not None and result.scores.infidelity.shape == (2,)
        assert result.scores.sensitivity is not None and result.scores.sensitivity.shape == (2,)
        assert torch.isfinite(result.scores.infidelity).all()
        assert (result.scores.sensitivity >= 0).all()
    assert gradcam.scores is not None and gradcam.scores.infidelity is None
    assert "infidelity" in gradcam.scores.skipped and gradcam.scores.sensitivity is not None
    assert saliency.scores is None


def test_seeded_methods_repeat() -> None:
    config = tiny_config([{"kind": "gradient_shap", "n_samples": 3}])
    first = run(build(config, Path.cwd())).results[0].output.raw
    second = run(build(config, Path.cwd())).results[0].output.raw
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("methods", "overrides", "loc", "message"),
    [
        (
            [{"kind": "layer_grad_cam", "layer": "conv9"}],
            {},
            ("methods", 0, "layer"),
            "unknown layer 'conv9'; did you mean",
        ),
        (
            [{"kind": "neuron_gradient", "layer": LAYER, "neuron": {"channel": 99}}],
            {},
            ("methods", 0, "neuron", "channel"),
            "channel 99 is out of range",
        ),
        (
            [{"kind": "integrated_gradients", "baseline": {"kind": "noise", "count": 3}}],
            {},
            ("methods", 0, "baseline"),
            "compares each input with one baseline",
        ),
        (
            [{"kind": "deep_lift_shap"}],
            {"distribution": {"kind": "zeros"}},
            ("distribution",),
            "needs at least 2 baseline images",
        ),
        (
            [{"kind": "saliency"}, {"kind": "saliency"}],
            {},
            ("methods", 1, "kind"),
            "also called 'saliency'",
        ),
        ([{"kind": "saliency"}], {"target": "purple"}, ("target",), "unknown class 'purple'"),
        (
            [{"kind": "feature_permutation"}],
            {"inputs": [{"kind": "zoo_class", "class": "red"}]},
            ("methods", 0, "kind"),
            "needs 2 or more",
        ),
        ([{"kind": "saliency"}], {"target": [7, 8, 9]}, ("target",), "3 targets for 2 inputs"),
        (
            [{"kind": "gradient_shap", "stdevs": 0.1, "noise_tunnel": {}}],
            {},
            ("methods", 0, "stdevs"),
            "cannot be combined with noise_tunnel",
        ),
    ],
)
def test_build_errors_are_located(
    methods: list[dict[str, Any]], overrides: dict[str, Any], loc: tuple, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        build(tiny_config(methods, **overrides), Path.cwd())
    assert caught.value.loc == loc
    assert message in caught.value.message


REUSED_RELU = """
import torch
from torch import nn


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu(self.relu(self.a(x)) - 0.1)
        return self.head(x.mean((2, 3)))
"""


def test_a_failing_method_is_recorded_and_the_others_are_written(tmp_path: Path) -> None:
    (tmp_path / "reuse.py").write_text(REUSED_RELU)
    config = tiny_config(
        [{"kind": "deep_lift"}, {"kind": "saliency"}],
        model={"source": "factory", "factory": "reuse:Reused"},
        inputs=[{"kind": "file", "path": "x.png"}],
    )
    to_pil(torch.rand(3, SIZE, SIZE)).save(tmp_path / "x.png")
    outcome = run(build(config, tmp_path))
    assert [r.prepared.name for r in outcome.results] == ["saliency"]
    [failure] = outcome.failures
    assert failure.error.loc == ("methods", 0)
    assert failure.error.message.startswith("deep_lift failed in Captum (RuntimeError): ")
    (tmp_path / "run").mkdir()
    write(tmp_path / "run", outcome)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "attribution.json",
        "attributions.safetensors",
        "config.yaml",
        "grid.png",
    ]


# ----------------------------------------------------------------------------- lime_base

PLANTED = """
import torch
from torch import nn


class Planted(nn.Module):
    '''Class 0's logit is driven by the top-right 8x8 cell; the rest of the image barely counts.'''

    def forward(self, x):
        region = x[:, :, :8, 8:].mean((1, 2, 3))
        rest = x.mean((1, 2, 3))
        return torch.stack([4 * region + 0.2 * rest, -region], 1)


def drop_half(original_input, **kwargs):
    '''A custom sampler: each segment kept with probability 0.75.'''
    return torch.bernoulli(torch.full((1, kwargs["num_interp_features"]), 0.75))


def bad_shape(original_input, **kwargs):
    return torch.ones(3)


def same_weight(original, perturbed, interpretable, **kwargs):
    return 2.0
"""

LIME_BASE_CHOICES = [
    {},
    {"space": {"kind": "presence", "keep": 0.8}},
    {"space": {"kind": "blend"}, "kernel": {"kind": "uniform"}},
    {"space": {"kind": "blend", "low": 0.5}, "ridge": 0.1},
    {"kernel": {"between": "features", "distance": "euclidean", "width": 2.0}},
    {"space": {"kind": "custom", "sample": "planted:drop_half"}},
    {"kernel": {"kind": "custom", "function": "planted:same_weight"}},
]


def _planted(tmp_path: Path, methods: list[dict[str, Any]]) -> Outcome:
    """Two random 16x16 images on the planted model, 2x2 segments of 8 px, black baseline."""
    (tmp_path / "planted.py").write_text(PLANTED)
    g = torch.Generator().manual_seed(0)
    for name in ("a.png", "b.png"):
        to_pil(0.2 + 0.6 * torch.rand(3, 16, 16, generator=g)).save(tmp_path / name)
    config = tiny_config(
        methods,
        model={"source": "factory", "factory": "planted:Planted"},
        inputs=["a.png", "b.png"],
        size=16,
        target=0,
        mask={"kind": "grid", "size": 8},
    )
    return run(build(config, tmp_path))


@pytest.mark.parametrize("choices", LIME_BASE_CHOICES, ids=lambda c: json.dumps(c))
def test_lime_base_ranks_the_planted_region_first(tmp_path: Path, choices: dict) -> None:
    outcome = _planted(tmp_path, [{"kind": "lime_base", "n_samples": 48, **choices}])
    assert not outcome.failures, outcome.failures
    raw = outcome.results[0].output.raw
    assert raw.shape == (2, 3, 16, 16)
    cells = raw[:, 0].unfold(1, 8, 8).unfold(2, 8, 8)  # [B, 2, 2, 8, 8]
    assert (cells == cells[..., :1, :1]).all()  # one value per segment, on every channel
    assert torch.equal(raw[:, 0], raw[:, 2])
    per_cell = cells[..., 0, 0].flatten(1)  # [B, 4]: cells in row order
    assert per_cell.argmax(1).tolist() == [1, 1]  # the top-right cell
    assert (per_cell[:, 1] > 4 * per_cell[:, [0, 2, 3]].abs().amax(1)).all()


def test_lime_base_with_its_defaults_is_lime() -> None:
    """Presence with keep 0.5, Captum's cosine kernel of width 1, 25 samples, the same ridge:
    Lime, on the built-in (nonlinear) model with 16 segments."""
    config = tiny_config(
        [{"kind": "lime_base"}, {"kind": "lime"}], mask={"kind": "grid", "size": 8}
    )
    lime_base, lime = (r.output.raw for r in run(build(config, Path.cwd())).results)
    assert torch.allclose(lime_base, lime, rtol=1e-3, atol=1e-4)  # its kernel in float64
    assert float(lime.abs().max()) > 0.1


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        (
            {"space": {"kind": "custom", "sample": "planted:bad_shape"}},
            "lime_base failed in Captum (ValueError): planted:bad_shape returned [3]; expected "
            "a tensor [1, 4]",
        ),
        (
            {"kernel": {"distance": "euclidean", "width": 1e-6}},
            "the similarity kernel gave every sample weight 0",
        ),
    ],
)
def test_lime_base_failures_are_one_line(tmp_path: Path, choices: dict, message: str) -> None:
    outcome = _planted(tmp_path, [{"kind": "lime_base", "n_samples": 8, **choices}])
    [failure] = outcome.failures
    assert failure.error.loc == ("methods", 0)
    assert message in failure.error.message and "\n" not in failure.error.message


def test_lime_base_user_functions_are_located(tmp_path: Path) -> None:
    config = tiny_config(
        [{"kind": "lime_base", "kernel": {"kind": "custom", "function": "nowhere:kernel"}}]
    )
    with pytest.raises(SpecError) as caught:
        build(config, tmp_path)
    assert caught.value.loc == ("methods", 0, "kernel", "function")
    assert "cannot import 'nowhere'" in caught.value.message
