"""The attribution YAML schema: inputs, target, baselines, feature masks, methods, metrics.

Torch-free like the rest of `fvis.config`: it reuses the model spec, the output block and the
loader's error reporting. The method nodes are generated from `attribution_methods`, so each
method accepts exactly the parameters its Captum class takes (anything else is an "unknown key"
at its line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, create_model, model_validator

from fvis.config.attribution_methods import METHODS, MethodInfo
from fvis.config.base import (
    EntryPoint,
    FilePath,
    LayerName,
    Node,
    Shorthand,
    Size,
    Tagged,
    pair,
)
from fvis.config.loader import Source, validate_file
from fvis.config.model import ModelSpec, ZooModelSpec
from fvis.config.output import OutputSpec
from fvis.config.render import DeviceName

# ----------------------------------------------------------------------------- shared types


Pixels = Annotated[
    tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]],
    Shorthand(pair, "One number n: a square, [n, n]."),
]


def _label(value: Any) -> Any:
    """A class given as an index (>= 0) or a name; anything else is refused in one message."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a class index or name, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"class index {value} is negative")
    if isinstance(value, str) and not value:
        raise ValueError("the class name is empty")
    return value


# What _label lets through, as types the JSON schema can show (pydantic checks them again).
_Label = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1)]
ClassLabel = Annotated[_Label, BeforeValidator(_label)]


# ----------------------------------------------------------------------------- inputs


class FileInput(Node):
    """One image file (PNG, JPEG, ...)."""

    kind: Literal["file"] = "file"
    path: FilePath = Field(description="Image file; relative paths are from the config's folder.")


class FolderInput(Node):
    """Every image in a folder whose name matches a pattern, in name order."""

    kind: Literal["folder"]
    path: FilePath = Field(description="Folder; relative paths are from the config's folder.")
    pattern: str = Field(
        "*.png", min_length=1, description="Glob pattern of the file names, e.g. '*.jpg'."
    )
    limit: int | None = Field(None, ge=1, description="Take at most this many (the first ones).")


class RunInput(Node):
    """The images of an earlier `fvis render` run: its image_<i>.png files, in index order."""

    kind: Literal["run"]
    path: FilePath = Field(description="Run folder; relative paths are from the config's folder.")


class ZooClassInput(Node):
    """Generated images of one class of the built-in `shapes` model (see `fvis zoo list`)."""

    kind: Literal["zoo_class"]
    label: ClassLabel = Field(alias="class", description="Class name (e.g. red) or index (0..9).")
    count: int = Field(1, ge=1, le=4096, description="Number of images.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the generator.")


def _file_shorthand(value: Any) -> Any:
    """Accept a bare path as shorthand for `{kind: file, path: ...}`."""
    return {"kind": "file", "path": value} if isinstance(value, str) else value


InputSource = Annotated[
    Annotated[FileInput | FolderInput | RunInput | ZooClassInput, Tagged("kind")],
    Shorthand(
        _file_shorthand, "An image file's path: {kind: file, path: ...}.", {"type": "string"}
    ),
]


# ----------------------------------------------------------------------------- baselines


class ZerosBaseline(Node):
    """A black image (all zeros in the model's [0, 1] image space)."""

    kind: Literal["zeros"]


class ConstantBaseline(Node):
    """A flat image of one value, e.g. 0.5 for mid grey."""

    kind: Literal["constant"]
    value: float = Field(0.5, ge=0, le=1, description="The value of every pixel, in [0, 1].")


class BlurBaseline(Node):
    """The input itself, blurred by a Gaussian: keeps colours and layout, removes detail."""

    kind: Literal["blur"]
    sigma: float = Field(4.0, gt=0, le=256, description="Standard deviation in pixels.")


class NoiseBaseline(Node):
    """Uniform noise in [low, high], from a seed; `count` > 1 makes a distribution."""

    kind: Literal["noise"]
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the noise.")
    low: float = Field(0.0, ge=0, le=1, description="Smallest value.")
    high: float = Field(1.0, ge=0, le=1, description="Largest value.")
    count: int = Field(1, ge=1, le=4096, description="Number of noise images.")

    @model_validator(mode="after")
    def _ordered(self) -> NoiseBaseline:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class FileBaseline(Node):
    """One image file, resized like the inputs."""

    kind: Literal["file"]
    path: FilePath = Field(description="Image file; relative paths are from the config's folder.")


class SamplesBaseline(Node):
    """A distribution of reference images (for SHAP-style methods), from any input sources."""

    kind: Literal["samples"]
    inputs: list[InputSource] = Field(
        min_length=1, description="Where the reference images come from (like `inputs`)."
    )


Baseline = Annotated[
    ZerosBaseline
    | ConstantBaseline
    | BlurBaseline
    | NoiseBaseline
    | FileBaseline
    | SamplesBaseline,
    Tagged("kind"),
]


# ----------------------------------------------------------------------------- feature masks


class GridMask(Node):
    """Square superpixels of `size` pixels: one feature per cell of a regular grid."""

    kind: Literal["grid"] = "grid"
    size: int = Field(8, ge=1, le=4096, description="Cell size in pixels.")


class ImageMask(Node):
    """A mask image: every distinct colour (or grey level) is one feature."""

    kind: Literal["image"]
    path: FilePath = Field(description="Mask image; resized to the inputs with nearest sampling.")


Mask = Annotated[GridMask | ImageMask, Tagged("kind")]


# ----------------------------------------------------------------------------- LimeBase


class PresenceSpace(Node):
    """Lime's space: each segment present (the input's pixels) or absent (the baseline's)."""

    kind: Literal["presence"] = "presence"
    keep: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Chance that a segment is present in a sample (Lime: 0.5); higher keeps "
        "samples closer to the input.",
    )


class BlendSpace(Node):
    """Each segment blended from the baseline (weight 0) to the input (1) by a weight drawn
    uniformly from [low, high]: the surrogate learns each segment's effect as it fades, not
    only when it is removed."""

    kind: Literal["blend"]
    low: float = Field(0.0, ge=0, le=1, description="Smallest weight.")
    high: float = Field(1.0, ge=0, le=1, description="Largest weight.")

    @model_validator(mode="after")
    def _ordered(self) -> BlendSpace:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class CustomSpace(Node):
    """Your own sampling of the interpretable space (one weight per segment), with Captum's
    perturb_func signature: f(original_input, **kwargs) -> [1, features]; kwargs hold
    feature_mask, baselines and num_interp_features."""

    kind: Literal["custom"]
    sample: EntryPoint = Field(description="'module:function' returning one sample [1, features].")
    transform: EntryPoint | None = Field(
        None,
        description="'module:function' with Captum's from_interp_rep_transform signature, "
        "f(sample, original_input, **kwargs) -> an input; default: each segment blended from "
        "the baseline to the input by its weight.",
    )


InterpretableSpace = Annotated[
    PresenceSpace | BlendSpace | CustomSpace, Tagged("kind", default="presence")
]


class ExponentialKernel(Node):
    """exp(-d^2 / (2 width^2)) of a distance d between the input and a sample: Lime's kernel."""

    kind: Literal["exponential"] = "exponential"
    distance: Literal["cosine", "euclidean"] = Field(
        "cosine", description="Cosine distance (1 - cos) or Euclidean distance."
    )
    between: Literal["images", "features"] = Field(
        "images",
        description="Measured between the images (Captum's Lime) or between the interpretable "
        "vectors, the input's being all ones (the LIME paper).",
    )
    width: float = Field(
        1.0, gt=0, le=1e6, description="Kernel width, in the distance's units (Captum: 1)."
    )


class UniformKernel(Node):
    """Every sample weighs 1: an unweighted least-squares surrogate."""

    kind: Literal["uniform"]


class CustomKernel(Node):
    """Your own similarity, with Captum's similarity_func signature: f(original_input,
    perturbed_input, perturbed_interpretable_input, **kwargs) -> a weight."""

    kind: Literal["custom"]
    function: EntryPoint = Field(description="'module:function' returning a sample's weight.")


SimilarityKernel = Annotated[
    ExponentialKernel | UniformKernel | CustomKernel, Tagged("kind", default="exponential")
]


# ----------------------------------------------------------------------------- methods


class NoiseTunnelSpec(Node):
    """Captum's NoiseTunnel: the method averaged over noisy copies of each input."""

    type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = Field(
        "smoothgrad",
        description="smoothgrad: mean; smoothgrad_sq: mean of squares; vargrad: variance.",
    )
    samples: int = Field(8, ge=1, le=4096, description="Noisy copies per input.")
    stdev: float = Field(
        0.1, gt=0, le=10, description="Standard deviation of the Gaussian noise, in [0, 1] units."
    )
    batch: int | None = Field(
        None, ge=1, description="Noisy copies per forward pass (default: all at once)."
    )


class NeuronSpec(Node):
    """One unit of a layer: a channel at a position (x = column, y = row; default the centre)."""

    channel: int = Field(ge=0, description="Channel (or feature, for [B, N] layers) index.")
    x: int | None = Field(None, ge=0, description="Column; default the centre column.")
    y: int | None = Field(None, ge=0, description="Row; default the centre row.")


class MethodNode(Node):
    """Fields every method takes."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Column label and key in attributions.safetensors (default: the kind).",
    )
    noise_tunnel: NoiseTunnelSpec | None = Field(
        None, description="Wrap the method in Captum's NoiseTunnel (SmoothGrad, VarGrad)."
    )
    display: Literal["auto", "signed", "absolute"] = Field(
        "auto",
        description="Heatmap: signed (diverging map), absolute (|a|, sequential map) or auto "
        "(signed when the attribution has negative values).",
    )
    metrics: bool = Field(True, description="Compute the metrics for this method.")


_INTEGRATION = Literal[
    "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"
]

# Config parameter -> (field name, type, field): the building blocks of the method nodes.
PARAM_FIELDS: dict[str, tuple[str, Any, Any]] = {
    "baseline": (
        "baseline",
        Baseline | None,
        Field(None, description="One reference per input (default: the top-level baseline)."),
    ),
    "distribution": (
        "baseline",
        Baseline | None,
        Field(
            None,
            description="A set of references sampled by the method (default: the top-level "
            "distribution).",
        ),
    ),
    "layer": ("layer", LayerName, Field(description="The layer: a named_modules() path.")),
    "neuron": ("neuron", NeuronSpec, Field(description="The unit of the layer to explain.")),
    "mask": (
        "mask",
        Mask | None,
        Field(None, description="Feature mask (default: the top-level mask)."),
    ),
    "window": ("window", Pixels, Field((8, 8), description="Occluding window [h, w] in pixels.")),
    "stride": ("stride", Pixels, Field((4, 4), description="Window step [h, w] in pixels.")),
    "n_steps": (
        "n_steps",
        int | None,
        Field(None, ge=1, le=100_000, description="Integration steps (Captum's default: 50)."),
    ),
    "integration": (
        "integration",
        _INTEGRATION | None,
        Field(None, description="Quadrature rule (Captum's default: gausslegendre)."),
    ),
    "internal_batch_size": (
        "internal_batch_size",
        int | None,
        Field(None, ge=1, description="Integration steps per forward pass (default: all)."),
    ),
    "n_samples": (
        "n_samples",
        int | None,
        Field(None, ge=1, le=100_000, description="Random samples (Captum's default)."),
    ),
    "stdevs": (
        "stdevs",
        float | None,
        Field(None, ge=0, le=10, description="Noise added to each sample (Captum's default: 0)."),
    ),
    "abs": ("abs", bool | None, Field(None, description="Absolute gradient (default: true).")),
    "relu": (
        "relu",
        bool | None,
        Field(None, description="Apply a ReLU to the map (default: false)."),
    ),
    "perturbations_per_eval": (
        "perturbations_per_eval",
        int,
        Field(16, ge=1, le=4096, description="Perturbed copies per forward pass."),
    ),
    "space": (
        "space",
        InterpretableSpace,
        Field(
            default_factory=PresenceSpace,
            description="The interpretable space: one feature per segment of the mask, and how "
            "samples of it are drawn and made into images.",
        ),
    ),
    "kernel": (
        "kernel",
        SimilarityKernel,
        Field(
            default_factory=ExponentialKernel,
            description="How much each sample weighs in the surrogate's fit.",
        ),
    ),
    "ridge": (
        "ridge",
        float,
        Field(
            1e-3,
            ge=0,
            le=1e6,
            description="L2 penalty of the linear surrogate (samples weigh about 1 each).",
        ),
    ),
    "ablate": (
        "ablate",
        Literal["position", "channel", "unit"],
        Field(
            "position",
            description="Groups of units ablated together: all channels at a position, a whole "
            "channel, or every unit alone (slow).",
        ),
    ),
}


def _class_name(kind: str) -> str:
    return "".join(part.title() for part in kind.split("_")) + "Method"


def _method_model(kind: str, info: MethodInfo) -> type[MethodNode]:
    """The pydantic node of one method: the common fields plus the parameters it takes."""
    fields: dict[str, Any] = {"kind": (Literal[kind], ...)}  # type: ignore[valid-type]
    for param in info.params:
        name, annotation, field = PARAM_FIELDS[param]
        fields[name] = (annotation, field)
    model = create_model(
        _class_name(kind),
        __base__=MethodNode,
        __doc__=f"{info.captum} ({info.family}): {info.summary}.",
        __module__=__name__,
        **fields,
    )
    return model


METHOD_MODELS: dict[str, type[MethodNode]] = {
    kind: _method_model(kind, info) for kind, info in METHODS.items()
}
if TYPE_CHECKING:
    Method = MethodNode
else:  # one generated node per method, told apart by `kind`
    _ANY_METHOD = Union[tuple(METHOD_MODELS.values())]  # noqa: UP007
    Method = Annotated[_ANY_METHOD, Tagged("kind")]


# ----------------------------------------------------------------------------- metrics


class InfidelitySpec(Node):
    """Captum's infidelity: E[(I . a - (f(x) - f(x - I)))^2] over Gaussian perturbations I."""

    samples: int = Field(8, ge=1, le=4096, description="Perturbations per input.")
    noise: float = Field(
        0.05, gt=0, le=1, description="Standard deviation of the perturbation, in [0, 1] units."
    )
    normalize: bool = Field(
        True,
        description="Rescale the attribution by the factor that minimizes infidelity first, so "
        "methods of different units compare.",
    )


class SensitivitySpec(Node):
    """Captum's max-sensitivity: max over small input changes of |a(x') - a(x)| / |a(x)|."""

    samples: int = Field(4, ge=1, le=4096, description="Perturbed inputs per input.")
    radius: float = Field(
        0.02, gt=0, le=1, description="Half-width of the uniform perturbation, in [0, 1] units."
    )


class MetricsSpec(Node):
    """Quality metrics per method and input; set one (or `metrics`) to null to skip it."""

    infidelity: InfidelitySpec | None = Field(
        default_factory=InfidelitySpec, description="Infidelity (lower is better)."
    )
    sensitivity: SensitivitySpec | None = Field(
        default_factory=SensitivitySpec, description="Max-sensitivity (lower is better)."
    )


# ----------------------------------------------------------------------------- the config


def _one_input(value: Any) -> Any:
    """Accept a single source as shorthand for a list of one."""
    return [value] if isinstance(value, (str, dict)) else value


def _target(value: Any) -> Any:
    """`predicted`, a class index or name, or a list of them (one per input)."""
    if isinstance(value, list):
        if not value:
            raise ValueError("the list of targets is empty")
        return [_label(v) for v in value]
    return _label(value)


class AttributionConfig(Node):
    """An attribution run: which model, which inputs, which output, which methods."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Run name: the output folder under output.dir (default: the file's stem).",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of every sampling method.")
    device: DeviceName = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    model: ModelSpec = Field(default_factory=ZooModelSpec, description="The network.")
    inputs: Annotated[
        list[InputSource],
        Field(min_length=1),
        Shorthand(_one_input, "One source: a list of one."),
    ] = Field(description="Images to explain: files, folders, fvis runs, zoo classes.")
    size: Size | None = Field(
        None, description="Image size [height, width] (default: the model's input size)."
    )
    fit: Literal["crop", "stretch"] = Field(
        "crop",
        description="How images of another size are resized: crop (shorter side, then the "
        "centre) or stretch.",
    )
    target: Annotated[
        _Label | Annotated[list[_Label], Field(min_length=1)], BeforeValidator(_target)
    ] = Field(
        "predicted",
        description="The output explained: 'predicted', a class index or name, or a list "
        "with one per input.",
    )
    baseline: Baseline = Field(
        default_factory=lambda: ZerosBaseline(kind="zeros"),
        description="The reference of methods comparing with one baseline per input.",
    )
    distribution: Baseline = Field(
        default_factory=lambda: NoiseBaseline(kind="noise", count=8),
        description="The references of SHAP-style methods (gradient_shap, deep_lift_shap, ...).",
    )
    mask: Mask = Field(
        default_factory=GridMask, description="Features of perturbation methods (pixel groups)."
    )
    batch: int = Field(16, ge=1, le=4096, description="Inputs per Captum call.")
    methods: list[Method] = Field(min_length=1, description="The attribution methods.")
    metrics: MetricsSpec | None = Field(
        default_factory=MetricsSpec, description="Infidelity and sensitivity; null skips both."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Outputs.")


def default_name(path: Path) -> str:
    """A run name from the file's stem, reduced to the characters a run name allows."""
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem).lstrip("._-")
    return stem[:128] or "attribution"


def load_attribution(path: Path, overrides: Sequence[str] = ()) -> tuple[AttributionConfig, Source]:
    """Read, parse and validate an attribution config, applying `--set a.b=value` overrides."""
    config, source = validate_file(path, AttributionConfig, overrides)
    if config.name is None:
        config = config.model_copy(update={"name": default_name(path)})
    return config, source


def method_name(method: MethodNode) -> str:
    """A method's label: its `name`, or its kind."""
    return method.name or str(method.kind)  # type: ignore[attr-defined]
