"""Every attribution method of the registry on the built-in model: shapes, finite values, deltas,
noise tunnels, metrics, and the checks that turn misuse into located errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fvis.attribution.run import Outcome, Plan, build, run
from fvis.config.attribution import METHOD_MODELS, AttributionConfig
from fvis.config.attribution_methods import METHODS
from fvis.errors import SpecError

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
