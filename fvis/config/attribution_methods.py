"""The table of attribution methods: YAML name -> Captum class, family and the arguments it takes.

Torch-free, so the config schema is generated from it without importing Captum. The engine
(`fvis.attribution.methods`) builds every call from the same table: no per-method code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["primary", "layer", "neuron"]
Approach = Literal["gradient", "perturbation"]

# Config parameter -> the Captum `attribute()` argument it becomes. `layer` (and LimeBase's
# `space`, `kernel` and `ridge`) go to the constructor instead; `baseline` and `distribution`
# both fill `baselines` (one reference per input, or a set of references sampled by SHAP-style
# methods).
CALL_ARGS: dict[str, str] = {
    "baseline": "baselines",
    "distribution": "baselines",
    "mask": "feature_mask",
    "window": "sliding_window_shapes",
    "stride": "strides",
    "n_steps": "n_steps",
    "integration": "method",
    "internal_batch_size": "internal_batch_size",
    "n_samples": "n_samples",
    "stdevs": "stdevs",
    "abs": "abs",
    "relu": "relu_attributions",
    "perturbations_per_eval": "perturbations_per_eval",
    "ablate": "layer_mask",
    "neuron": "neuron_selector",
}

_IG = ("baseline", "n_steps", "integration", "internal_batch_size")
_PERTURB = ("baseline", "mask", "perturbations_per_eval")


@dataclass(frozen=True)
class MethodInfo:
    """One attribution method: its Captum class, family and the config parameters it takes.

    `target` says whether the method explains the target class's output (neuron methods explain
    a neuron instead, except conductance, which is a neuron's share of the target's);
    `across_inputs` that it mixes the inputs, so it runs on all of them in one call.
    """

    captum: str
    family: Family
    approach: Approach
    params: tuple[str, ...]
    summary: str
    target: bool = True
    across_inputs: bool = False

    @property
    def baseline(self) -> Literal["baseline", "distribution"] | None:
        """Whether it compares with one reference per input, a distribution of them, or none."""
        for kind in ("baseline", "distribution"):
            if kind in self.params:
                return kind  # type: ignore[return-value]
        return None


def _primary(
    captum: str,
    approach: Approach,
    params: tuple[str, ...],
    summary: str,
    across_inputs: bool = False,
) -> MethodInfo:
    """A method attributing to the input pixels."""
    return MethodInfo(captum, "primary", approach, params, summary, across_inputs=across_inputs)


def _layer(
    captum: str, approach: Approach, params: tuple[str, ...], summary: str, target: bool = True
) -> MethodInfo:
    """A method attributing to a layer's units: it takes a `layer`."""
    return MethodInfo(captum, "layer", approach, ("layer", *params), summary, target)


def _neuron(
    captum: str, approach: Approach, params: tuple[str, ...], summary: str, target: bool = False
) -> MethodInfo:
    """A method attributing one unit to the input pixels: it takes a `layer` and a `neuron`."""
    return MethodInfo(captum, "neuron", approach, ("layer", "neuron", *params), summary, target)


METHODS: dict[str, MethodInfo] = {
    # ------------------------------------------------------------------ primary: input pixels
    "integrated_gradients": _primary(
        "IntegratedGradients",
        "gradient",
        _IG,
        "(x - b) times the gradient averaged along the straight path from baseline b to input "
        "x; sums to f(x) - f(b)",
    ),
    "gradient_shap": _primary(
        "GradientShap",
        "gradient",
        ("distribution", "n_samples", "stdevs"),
        "expected gradient times (x - b) at random points between x and baselines b drawn "
        "from a distribution: an estimate of SHAP values",
    ),
    "deep_lift": _primary(
        "DeepLift",
        "gradient",
        ("baseline",),
        "differences from the baseline propagated back with DeepLIFT's rescale rule; sums to "
        "f(x) - f(b)",
    ),
    "deep_lift_shap": _primary(
        "DeepLiftShap",
        "gradient",
        ("distribution",),
        "DeepLift averaged over a distribution of baselines",
    ),
    "saliency": _primary(
        "Saliency", "gradient", ("abs",), "the gradient of the target (absolute by default)"
    ),
    "input_x_gradient": _primary("InputXGradient", "gradient", (), "input times gradient"),
    "guided_backprop": _primary(
        "GuidedBackprop",
        "gradient",
        (),
        "the gradient with every ReLU passing back only positive gradients",
    ),
    "deconvolution": _primary(
        "Deconvolution",
        "gradient",
        (),
        "backpropagation with every ReLU applied to the gradient instead of gated by the input",
    ),
    "guided_grad_cam": _primary(
        "GuidedGradCam",
        "gradient",
        ("layer",),
        "guided backprop times the layer's Grad-CAM map upsampled to the input",
    ),
    "feature_ablation": _primary(
        "FeatureAblation",
        "perturbation",
        _PERTURB,
        "the drop of the target when a feature (a group of pixels) is set to the baseline",
    ),
    "feature_permutation": _primary(
        "FeaturePermutation",
        "perturbation",
        ("mask", "perturbations_per_eval"),
        "the drop of the target when a feature is shuffled across the inputs (needs 2 or more)",
        across_inputs=True,
    ),
    "occlusion": _primary(
        "Occlusion",
        "perturbation",
        ("baseline", "window", "stride", "perturbations_per_eval"),
        "the drop of the target when a sliding window is set to the baseline, averaged per pixel",
    ),
    "shapley_value_sampling": _primary(
        "ShapleyValueSampling",
        "perturbation",
        (*_PERTURB, "n_samples"),
        "Shapley values of the features, estimated from n_samples random feature orderings",
    ),
    "lime": _primary(
        "Lime",
        "perturbation",
        (*_PERTURB, "n_samples"),
        "a linear surrogate fitted to the target on n_samples random subsets of features, "
        "weighted by their similarity to the input",
    ),
    "kernel_shap": _primary(
        "KernelShap",
        "perturbation",
        (*_PERTURB, "n_samples"),
        "a linear surrogate fitted with the Shapley kernel's weights: estimates Shapley values",
    ),
    "lime_base": _primary(
        "LimeBase",
        "perturbation",
        (*_PERTURB, "n_samples", "space", "kernel", "ridge"),
        "Lime with a chosen interpretable space (segments present or absent, or blended toward "
        "the baseline, or your own sampler), similarity kernel and ridge penalty",
    ),
    # ------------------------------------------------------------------ layer: a layer's units
    "layer_conductance": _layer(
        "LayerConductance",
        "gradient",
        _IG,
        "the flow of integrated gradients through each unit of the layer",
    ),
    "internal_influence": _layer(
        "InternalInfluence",
        "gradient",
        _IG,
        "the gradient of the target with respect to the layer, integrated along the path",
    ),
    "layer_activation": _layer(
        "LayerActivation", "gradient", (), "the layer's activation itself", target=False
    ),
    "layer_gradient_x_activation": _layer(
        "LayerGradientXActivation", "gradient", (), "the layer's activation times its gradient"
    ),
    "layer_grad_cam": _layer(
        "LayerGradCam",
        "gradient",
        ("relu",),
        "Grad-CAM: channels weighted by their spatially averaged gradient, summed",
    ),
    "layer_integrated_gradients": _layer(
        "LayerIntegratedGradients",
        "gradient",
        _IG,
        "integrated gradients of the target with respect to the layer's activation",
    ),
    "layer_gradient_shap": _layer(
        "LayerGradientShap",
        "gradient",
        ("distribution", "n_samples", "stdevs"),
        "GradientShap with respect to the layer's activation",
    ),
    "layer_deep_lift": _layer(
        "LayerDeepLift", "gradient", ("baseline",), "DeepLift with respect to the layer"
    ),
    "layer_deep_lift_shap": _layer(
        "LayerDeepLiftShap",
        "gradient",
        ("distribution",),
        "DeepLiftShap with respect to the layer",
    ),
    "layer_feature_ablation": _layer(
        "LayerFeatureAblation",
        "perturbation",
        ("ablate",),
        "the drop of the target when a group of the layer's units is set to zero",
    ),
    # ------------------------------------------------------------------ neuron: one unit
    "neuron_conductance": _neuron(
        "NeuronConductance",
        "gradient",
        _IG,
        "the flow of the target's integrated gradients through one neuron, per input pixel",
        target=True,
    ),
    "neuron_gradient": _neuron(
        "NeuronGradient", "gradient", (), "the gradient of a neuron with respect to the input"
    ),
    "neuron_integrated_gradients": _neuron(
        "NeuronIntegratedGradients", "gradient", _IG, "integrated gradients of a neuron"
    ),
    "neuron_guided_backprop": _neuron(
        "NeuronGuidedBackprop", "gradient", (), "guided backprop of a neuron"
    ),
    "neuron_deconvolution": _neuron(
        "NeuronDeconvolution", "gradient", (), "deconvolution of a neuron"
    ),
    "neuron_gradient_shap": _neuron(
        "NeuronGradientShap",
        "gradient",
        ("distribution", "n_samples", "stdevs"),
        "GradientShap of a neuron",
    ),
    "neuron_deep_lift": _neuron(
        "NeuronDeepLift", "gradient", ("baseline",), "DeepLift of a neuron"
    ),
    "neuron_deep_lift_shap": _neuron(
        "NeuronDeepLiftShap", "gradient", ("distribution",), "DeepLiftShap of a neuron"
    ),
    "neuron_feature_ablation": _neuron(
        "NeuronFeatureAblation",
        "perturbation",
        _PERTURB,
        "the change of a neuron when a feature is set to the baseline",
    ),
}
