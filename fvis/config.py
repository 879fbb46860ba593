"""The YAML schema: one pydantic model per node kind, and loading that reports errors by line.

This module is torch-free so that `fvis validate`, `fvis schema` and `--help` stay instant.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fvis.errors import SpecError, UserError, YamlPath
from fvis.expression import parse_expression

MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NODES = 100_000
M = TypeVar("M", bound=BaseModel)


def _pair(value: Any) -> Any:
    """Accept `64` as shorthand for `[64, 64]`."""
    return [value, value] if isinstance(value, int) and not isinstance(value, bool) else value


def _default_tag(tag: str, value: str) -> Any:
    """A validator giving a tagged-union node its default tag when the YAML leaves it out."""

    def fill(node: Any) -> Any:
        return {tag: value, **node} if isinstance(node, dict) and tag not in node else node

    return BeforeValidator(fill)


def _listify(value: Any) -> Any:
    """Accept `3` as shorthand for `[3]`."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


Size = Annotated[
    tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]],
    BeforeValidator(_pair),
]
Indices = Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_listify)]


class Node(BaseModel):
    """Base of every config node: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- model


class InputSpec(Node):
    """How an image in [0, 1] becomes the model's input. Unset fields take the source's default."""

    size: Size | None = Field(
        None, description="Input size [height, width] (or one int); the default image size."
    )
    channels: int | None = Field(None, ge=1, le=64, description="Number of input channels.")
    range: tuple[float, float] | None = Field(
        None, description="Value range the model expects before normalization, e.g. [0, 255]."
    )
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted after scaling.")
    std: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="Per-channel standard deviation divided after subtracting the mean."
    )


class ZooModelSpec(Node):
    """A model of fvis's own zoo, shipped with the package (see `fvis zoo list`)."""

    source: Literal["zoo"] = "zoo"
    name: str = Field("shapes", description="Zoo model name.")
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")


class TorchvisionModelSpec(Node):
    """A torchvision architecture by name, with an optional weights enum member."""

    source: Literal["torchvision"]
    name: str = Field(description="torchvision model name, e.g. resnet50 or googlenet.")
    weights: str | None = Field(
        "DEFAULT",
        description="Weights enum member (e.g. IMAGENET1K_V1, DEFAULT) or null for random init.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for the model builder."
    )
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")


class CheckpointModelSpec(Node):
    """A local state dict (.pt/.pth loaded with weights_only=True, or .safetensors)."""

    source: Literal["checkpoint"]
    path: Path = Field(description="Checkpoint file; relative paths are from the config's folder.")
    arch: str = Field(
        description="Architecture: a torchvision model name or a 'module:factory' entry point."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the architecture's builder."
    )
    key: str | None = Field(
        None,
        description="Key of the state dict inside the file (default: the file itself, or its "
        "'state_dict' / 'model' entry).",
    )
    strict: bool = Field(True, description="Require the keys to match the architecture exactly.")
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")


class TorchScriptModelSpec(Node):
    """A TorchScript file (torch.jit.save). Only its output can be hooked."""

    source: Literal["torchscript"]
    path: Path = Field(description="TorchScript file; relative paths are from the config's folder.")
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")


class FactoryModelSpec(Node):
    """A 'module:function' entry point returning an nn.Module. This runs the module's code."""

    source: Literal["factory"]
    factory: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'package.module:function'; the config's folder is importable.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the factory."
    )
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")


ModelSpec = Annotated[
    ZooModelSpec
    | TorchvisionModelSpec
    | CheckpointModelSpec
    | TorchScriptModelSpec
    | FactoryModelSpec,
    Field(discriminator="source"),
    _default_tag("source", "zoo"),
]


# ----------------------------------------------------------------------------- objectives


def _int_to_str(value: Any) -> Any:
    """Module paths may be bare numbers (children of nn.Sequential): `2` means '2'."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ModulePath = Annotated[str, Field(min_length=1), BeforeValidator(_int_to_str)]
LayerName = Annotated[
    str,
    BeforeValidator(_int_to_str),
    Field(
        min_length=1,
        description="A hook alias, a dotted module path from named_modules(), 'output' (the "
        "model's output) or 'image' (the rendered image).",
    ),
]


class ObjectiveNode(Node):
    """Fields shared by every objective: its weight and the batch items it applies to."""

    weight: float = Field(1.0, description="Scalar factor applied to this term.")
    batch: Indices | None = Field(
        None, description="Batch item(s) this term applies to (default: all); 0 elsewhere."
    )


class ChannelObjective(ObjectiveNode):
    """Mean activation of one channel over all positions."""

    kind: Literal["channel"]
    layer: LayerName
    channel: int = Field(ge=0, description="Channel index.")


class NeuronObjective(ObjectiveNode):
    """Activation of one channel at one position (x = column, y = row; default: the centre)."""

    kind: Literal["neuron"]
    layer: LayerName
    channel: int = Field(ge=0, description="Channel index.")
    x: int | None = Field(None, ge=0, description="Column; default the centre column.")
    y: int | None = Field(None, ge=0, description="Row; default the centre row.")


class LayerObjective(ObjectiveNode):
    """Mean activation of a whole layer."""

    kind: Literal["layer"]
    layer: LayerName


class ClassLogitObjective(ObjectiveNode):
    """Sum of class logits (pre-softmax scores) at a [B, classes] layer."""

    kind: Literal["class_logit"]
    index: Indices = Field(description="Class index or list of indices, summed.")
    layer: LayerName = "output"


class TotalVariationObjective(ObjectiveNode):
    """Total variation: sum of absolute differences between neighbouring pixels, per item."""

    kind: Literal["total_variation"]
    layer: LayerName = "image"


class BlurObjective(ObjectiveNode):
    """High-frequency energy: sum of (a - Gaussian blur of a)^2, per item (a frequency penalty)."""

    kind: Literal["blur"]
    layer: LayerName = "image"
    sigma: float = Field(1.0, gt=0, le=64, description="Blur sigma in pixels.")


class L1Objective(ObjectiveNode):
    """L1 norm of (activation - constant), per item."""

    kind: Literal["l1"]
    layer: LayerName = "image"
    constant: float = Field(0.0, description="Value subtracted before taking the norm.")


class L2Objective(ObjectiveNode):
    """L2 norm of (activation - constant), per item."""

    kind: Literal["l2"]
    layer: LayerName = "image"
    constant: float = Field(0.0, description="Value subtracted before taking the norm.")


class L2MeanObjective(ObjectiveNode):
    """Mean squared distance to a constant, per item (captum's L2Mean)."""

    kind: Literal["l2_mean"]
    layer: LayerName = "image"
    constant: float = Field(0.0, description="Value subtracted before squaring.")


class DeepDreamObjective(ObjectiveNode):
    """DeepDream: mean of the squared activations of a layer."""

    kind: Literal["deepdream"]
    layer: LayerName


class TensorFile(Node):
    """A tensor from a file: .pt/.pth (weights_only), .npy or .safetensors."""

    file: Path = Field(description="The file; relative paths are from the config's folder.")
    key: str | None = Field(None, description="Entry to take from a dict or .safetensors file.")
    index: int | None = Field(
        None, ge=0, description="Row to take, e.g. one class's row of a classifier's weights."
    )


class RandomTensor(Node):
    """A standard-normal random tensor from a seed, shaped to fit the layer."""

    random: int = Field(ge=0, description="Seed.")
    shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="Shape, where the layer does not determine it (tensor_direction)."
    )


class ImageTarget(Node):
    """The activations an image produces at the layer (resized to the render's size)."""

    image: Path = Field(description="Image file; relative paths are from the config's folder.")


TensorSpec = Annotated[
    list[Any] | TensorFile | RandomTensor,
    Field(description="Inline numbers (nested lists), {file: ..., key: ...} or {random: SEED}."),
]


class DirectionalNode(ObjectiveNode):
    """Fields shared by the direction family."""

    layer: LayerName
    vector: TensorSpec
    transform: TensorSpec | None = Field(
        None,
        description="Matrix M [D, C] applied to activations and vector before comparing them, "
        "e.g. Cov^-1/2 for a whitened inner product.",
    )


class DirectionObjective(DirectionalNode):
    """Mean over positions of dot(a, v) * max(cos(a, v), floor)^cossim_pow (captum Direction)."""

    kind: Literal["direction"]
    cossim_pow: float = Field(0.0, ge=0, le=16, description="Power of the cosine factor.")
    floor: float = Field(0.1, ge=0, le=1, description="Lower bound of the cosine factor.")


class DotCossimObjective(DirectionalNode):
    """lucid's dot x cosine^n with a floor on the cosine (anti-aligned never scores positive)."""

    kind: Literal["dot_cossim"]
    cossim_pow: float = Field(1.0, ge=0, le=16, description="Power of the cosine factor.")
    floor: float = Field(0.1, ge=0, le=1, description="Lower bound of the cosine factor.")


class CosineObjective(DirectionalNode):
    """Mean over positions of the cosine similarity between activations and a direction."""

    kind: Literal["cosine"]


class NeuronDirectionObjective(DirectionalNode):
    """dot(a, v) * max(cos, floor)^cossim_pow at one position (default the centre)."""

    kind: Literal["neuron_direction"]
    x: int | None = Field(None, ge=0, description="Column (token index on [B, T, C] layers).")
    y: int | None = Field(None, ge=0, description="Row.")
    cossim_pow: float = Field(0.0, ge=0, le=16, description="Power of the cosine factor.")
    floor: float = Field(0.1, ge=0, le=1, description="Lower bound of the cosine factor.")


class AngledNeuronDirectionObjective(DirectionalNode):
    """dot(a, v) * max(cos, floor)^cossim_pow at one position, cossim_pow 4 by default."""

    kind: Literal["angled_neuron_direction"]
    x: int | None = Field(None, ge=0, description="Column (token index on [B, T, C] layers).")
    y: int | None = Field(None, ge=0, description="Row.")
    cossim_pow: float = Field(4.0, ge=0, le=16, description="Power of the cosine factor.")
    floor: float = Field(0.1, ge=0, le=1, description="Lower bound of the cosine factor.")


class DotOrthogonalObjective(DirectionalNode):
    """dot(a, v/|v|) - penalty * |component of a orthogonal to v|, mean over positions."""

    kind: Literal["dot_orthogonal_penalty"]
    penalty: float = Field(1.0, ge=0, description="Weight of the orthogonal L2 penalty.")


class VectorObjective(DirectionalNode):
    """Mean over positions of relu(dot(a, v)) (captum VectorLoss)."""

    kind: Literal["vector"]
    relu: bool = Field(True, description="Apply a ReLU to the projection.")


class TensorDirectionObjective(ObjectiveNode):
    """dot x cosine^n of a [C, h, w] direction tensor with the centred window of a layer."""

    kind: Literal["tensor_direction"]
    layer: LayerName
    tensor: TensorSpec
    cossim_pow: float = Field(0.0, ge=0, le=16, description="Power of the cosine factor.")
    floor: float = Field(0.1, ge=0, le=1, description="Lower bound of the cosine factor.")


class ActivationWeightsObjective(ObjectiveNode):
    """Mean over positions of sum_c w_c a_c; weights per channel [C] or per element."""

    kind: Literal["activation_weights"]
    layer: LayerName
    weights: TensorSpec


class FacetObjective(ObjectiveNode):
    """Facet loss: a direction at a late layer plus facet weights on an earlier layer."""

    kind: Literal["facet"]
    layer: LayerName = Field(description="The earlier layer the facet weights apply to.")
    ultimate: LayerName = Field(description="The late layer the direction lives in.")
    vector: TensorSpec
    weights: TensorSpec = Field(
        description="Facet weights over the earlier layer, [C] or [C, H, W] (a probe's)."
    )
    strength: float = Field(1.0, description="Weight of the facet term.")


class L2InversionObjective(ObjectiveNode):
    """Feature inversion: minus the L2 distance to a target activation."""

    kind: Literal["l2_inversion"]
    layer: LayerName
    target: TensorSpec | ImageTarget = Field(
        description="The activation to reproduce: a tensor, or {image: FILE}."
    )


class DiversityObjective(ObjectiveNode):
    """Minus the Gram-matrix cosine similarity with the other batch items."""

    kind: Literal["diversity"]
    layer: LayerName


class AlignmentObjective(ObjectiveNode):
    """Minus the squared activation difference with neighbouring batch items."""

    kind: Literal["alignment"]
    layer: LayerName
    decay: float = Field(2.0, gt=0, description="Neighbours at distance d weigh decay^-d.")
    distance: int = Field(4, ge=1, le=64, description="Farthest neighbour compared.")


class SumObjective(ObjectiveNode):
    """Weighted sum of terms."""

    kind: Literal["sum"]
    terms: list[Objective] = Field(min_length=1, description="The terms added together.")


class NegObjective(ObjectiveNode):
    """The negation of a term (minimize it)."""

    kind: Literal["neg"]
    term: Objective = Field(description="The negated term.")


class ProductObjective(ObjectiveNode):
    """Product of terms, item by item."""

    kind: Literal["product"]
    terms: list[Objective] = Field(min_length=2, description="The terms multiplied together.")


class PowerObjective(ObjectiveNode):
    """A term raised to a power."""

    kind: Literal["power"]
    term: Objective = Field(description="The base.")
    exponent: float = Field(description="The exponent.")


class InterpolateObjective(ObjectiveNode):
    """Item b of B maximizes (1 - t) * start + t * end, t = b / (B - 1) (interpolation)."""

    kind: Literal["interpolate"]
    start: Objective = Field(description="The objective of the first item.")
    end: Objective = Field(description="The objective of the last item.")


Objective = Annotated[
    ChannelObjective
    | NeuronObjective
    | LayerObjective
    | ClassLogitObjective
    | DeepDreamObjective
    | TotalVariationObjective
    | BlurObjective
    | L1Objective
    | L2Objective
    | L2MeanObjective
    | DirectionObjective
    | DotCossimObjective
    | CosineObjective
    | NeuronDirectionObjective
    | AngledNeuronDirectionObjective
    | DotOrthogonalObjective
    | VectorObjective
    | TensorDirectionObjective
    | ActivationWeightsObjective
    | FacetObjective
    | L2InversionObjective
    | DiversityObjective
    | AlignmentObjective
    | SumObjective
    | ProductObjective
    | NegObjective
    | PowerObjective
    | InterpolateObjective,
    Field(discriminator="kind"),
    BeforeValidator(parse_expression),
]
for _node in (SumObjective, ProductObjective, NegObjective, PowerObjective, InterpolateObjective):
    _node.model_rebuild()


def objective_kinds() -> dict[str, type[ObjectiveNode]]:
    """Every objective kind and its schema class, in the order of the union."""
    members = get_args(get_args(Objective)[0])
    return {get_args(m.model_fields["kind"].annotation)[0]: m for m in members}


# Penalties allowed under `regularizers:`; each is subtracted from the objective with its weight.
Regularizer = Annotated[
    TotalVariationObjective | BlurObjective | L1Objective | L2Objective | L2MeanObjective,
    Field(discriminator="kind"),
]


# ----------------------------------------------------------------------------- image


class ParamNode(Node):
    """Fields shared by every image parameterization."""

    size: Size | None = Field(
        None, description="Image size [height, width] (or one int); default the model's input."
    )
    batch: int = Field(1, ge=1, le=4096, description="Number of images optimized together.")
    channels: int | None = Field(
        None, ge=1, le=64, description="Image channels; default the model's input channels."
    )
    decorrelate: bool = Field(
        True,
        description="Optimize in a decorrelated colour space (3-channel images only); uses the "
        "model's colour statistics when it has them, ImageNet's otherwise.",
    )
    squash: Literal["sigmoid", "clamp"] = Field(
        "sigmoid", description="How values are mapped to the valid [0, 1] range."
    )
    sd: float = Field(
        0.01,
        gt=0,
        le=10,
        description="Standard deviation of the random init (pixel, fft, laplacian, lowres; "
        "cppn draws its weights, maco its phases).",
    )
    init: Path | None = Field(
        None,
        description="Start from this image instead of noise (DeepDream on a photo); relative "
        "to the config's folder. For cppn also a run's cppn.safetensors (continue its CPPN, "
        "e.g. at another param.size). See docs/parameterizations.md for how each kind fits it.",
    )
    shared: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Weight of a component common to the whole batch: item b uses the "
        "parameters (1 - shared) * own_b + shared * common, so the images of an interpolation "
        "stay aligned; 0: independent items.",
    )
    alpha: bool = Field(
        False,
        description="Also learn an alpha (opacity) channel: composited over random backgrounds "
        "(per item) while optimizing, written as RGBA PNGs.",
    )
    alpha_penalty: float = Field(
        0.0,
        ge=0,
        le=100,
        description="With alpha: weight of the mean opacity, subtracted from each item's score "
        "(regions that do not help the objective become transparent).",
    )


class PixelParam(ParamNode):
    """One free value per pixel and channel."""

    kind: Literal["pixel"]


class FFTParam(ParamNode):
    """Fourier coefficients scaled by 1/f^decay: a spectral preconditioner (Olah et al. 2017)."""

    kind: Literal["fft"] = "fft"
    decay: float = Field(
        1.0, ge=0, le=4, description="Power of the 1/f scaling; higher is smoother."
    )


class LaplacianParam(ParamNode):
    """A Laplacian pyramid of learnable levels, each half the size of the one before, summed
    after upsampling: coarse structure and fine detail move at the same pace."""

    kind: Literal["laplacian"]
    levels: int = Field(4, ge=1, le=12, description="Number of pyramid levels (full size first).")


class LowResParam(ParamNode):
    """Learned at a lower resolution and upsampled: no detail finer than the factor."""

    kind: Literal["lowres"]
    factor: int = Field(4, ge=1, le=64, description="Downscaling factor of the learned image.")
    mode: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="Upsampling: bilinear, or bicubic (smoother, may overshoot)."
    )


class CPPNParam(ParamNode):
    """A compositional pattern-producing network over (x, y): resolution-free, renders at any
    size (`fvis cppn RUN/cppn.safetensors --size N`)."""

    kind: Literal["cppn"]
    width: int = Field(24, ge=2, le=256, description="Units per hidden layer.")
    depth: int = Field(8, ge=1, le=32, description="Number of hidden layers.")


class MacoParam(ParamNode):
    """Magnitude-constrained optimization (Fel et al. 2023): the Fourier magnitude is fixed to a
    template, only the phase (and the mean colour) is learned."""

    kind: Literal["maco"]
    decay: float = Field(
        1.0, ge=0, le=4, description="Magnitude template 1/f^decay (without a spectrum file)."
    )
    spectrum: Path | None = Field(
        None,
        description="Magnitude template from `fvis spectrum FOLDER -o FILE` (.safetensors); "
        "default: the init image's own spectrum with init, the 1/f^decay power law without.",
    )
    contrast: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Per-pixel standard deviation the template gives the image before colours "
        "and squash (not used for the init image's own spectrum).",
    )


Param = Annotated[
    PixelParam | FFTParam | LaplacianParam | LowResParam | CPPNParam | MacoParam,
    Field(discriminator="kind"),
    _default_tag("kind", "fft"),
]


class PadTransform(Node):
    """Pad every side (before the other transforms, as lucid does)."""

    kind: Literal["pad"]
    pixels: int = Field(ge=0, le=512, description="Padding on each side.")
    mode: Literal["constant", "reflect", "replicate"] = Field(
        "constant", description="How the border is filled (also used for pixels shifted in)."
    )
    value: float = Field(0.5, ge=0, le=1, description="Fill value for mode: constant.")


class JitterTransform(Node):
    """Random integer shift in both directions, drawn per batch item."""

    kind: Literal["jitter"]
    pixels: int = Field(ge=0, le=512, description="Largest shift in pixels.")


class ScaleTransform(Node):
    """Random zoom drawn per batch item from [min, max]."""

    kind: Literal["scale"]
    min: float = Field(0.9, gt=0, le=10, description="Smallest zoom factor.")
    max: float = Field(1.1, gt=0, le=10, description="Largest zoom factor.")

    @model_validator(mode="after")
    def _ordered(self) -> ScaleTransform:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class RotateTransform(Node):
    """Random rotation drawn per batch item from [-degrees, degrees]."""

    kind: Literal["rotate"]
    degrees: float = Field(10.0, ge=0, le=180, description="Largest angle either way.")


class StandardTransform(Node):
    """lucid's robustness stack, sized to the image: pad, jitter, scale, rotate, jitter."""

    kind: Literal["standard"]


def _span(value: Any) -> Any:
    """Accept `1.5` as shorthand for `[1.5, 1.5]`."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return [value, value] if number else value


class BlurTransform(Node):
    """Gaussian blur, sigma drawn per item from [min, max], applied with probability p per item
    and step: a frequency penalty that high-frequency patterns cannot survive."""

    kind: Literal["blur"]
    sigma: Annotated[
        tuple[Annotated[float, Field(ge=0, le=64)], Annotated[float, Field(ge=0, le=64)]],
        BeforeValidator(_span),
    ] = Field((1.0, 1.0), description="Blur sigma in pixels, or [min, max] drawn per item.")
    p: float = Field(1.0, ge=0, le=1, description="Probability of blurring an item at a step.")

    @model_validator(mode="after")
    def _ordered(self) -> BlurTransform:
        if self.sigma[0] > self.sigma[1]:
            raise ValueError(f"sigma: min ({self.sigma[0]}) must not exceed max ({self.sigma[1]})")
        return self


class BilateralTransform(Node):
    """Edge-preserving bilateral filter, applied with probability p per item and step: smooths
    noise within regions, keeps the edges between them."""

    kind: Literal["bilateral"]
    sigma_space: float = Field(1.5, gt=0, le=16, description="Spatial sigma in pixels.")
    sigma_color: float = Field(
        0.1, gt=0, le=10, description="Colour sigma (values in [0, 1]): larger smooths edges too."
    )
    p: float = Field(1.0, ge=0, le=1, description="Probability of filtering an item at a step.")


Transform = Annotated[
    PadTransform
    | JitterTransform
    | ScaleTransform
    | RotateTransform
    | StandardTransform
    | BlurTransform
    | BilateralTransform,
    Field(discriminator="kind"),
]


# ----------------------------------------------------------------------------- run


class OptimSpec(Node):
    """The optimization: Adam on the image parameters."""

    lr: float = Field(0.05, gt=0, le=10, description="Adam learning rate.")
    steps: int = Field(256, ge=1, le=1_000_000, description="Number of optimization steps.")
    thresholds: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="Steps at which snapshots are kept (grid columns); default 4 steps."
    )
    redirected_relu: int = Field(
        16,
        ge=0,
        description="Warm-up steps during which gradients pass through inactive nn.ReLU units "
        "that they would switch on (avoids grey, empty renders); 0 disables.",
    )
    grad_blur: float = Field(
        0.0,
        ge=0,
        le=64,
        description="Gradient preconditioning: Gaussian-blur the image gradient with this sigma "
        "(pixels) before each step; 0: off.",
    )
    grad_pyramid: int = Field(
        0,
        ge=0,
        le=12,
        description="Gradient preconditioning: normalize each level of a Laplacian pyramid of "
        "the image gradient (this many levels) before each step; 0: off.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Autocast the network to bf16 or fp16 on CUDA (elsewhere fp32 is kept, "
        "with a warning); the image and its optimizer stay fp32.",
    )
    float64: bool = Field(
        False,
        description="Render in float64 (network, parameterization, transforms, objective, "
        "Adam): rounding differences between processors' kernels then stay far below one 8-bit "
        "level, so CPU renders match across Intel, AMD and instruction sets (for regression "
        "goldens). Several times slower; not with precision bf16/fp16.",
    )
    fold_batchnorm: bool = Field(
        True,
        description="Fold each eval-mode BatchNorm into the convolution feeding it (same "
        "values up to float rounding, less work); a hooked convolution keeps its own output.",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="Run the network in channels-last memory format; auto: on CPUs, where "
        "the benchmark shows it pays (benchmarks/results.md), off elsewhere.",
    )
    compile: bool = Field(
        False, description="torch.compile the network (slow first steps, then faster on GPUs)."
    )
    cudnn_benchmark: bool = Field(
        False,
        description="On CUDA, let cuDNN time its convolution algorithms on the first step and "
        "keep the fastest (torch.backends.cudnn.benchmark); the choice may vary between runs.",
    )

    @model_validator(mode="after")
    def _thresholds_within_steps(self) -> OptimSpec:
        if self.float64 and self.precision != "fp32":
            raise ValueError(f"float64 and precision {self.precision} exclude each other")
        late = [t for t in self.thresholds or [] if t > self.steps]
        if late:
            raise ValueError(f"thresholds {late} exceed steps ({self.steps})")
        return self

    def snapshot_steps(self) -> list[int]:
        """The sorted steps at which snapshots are kept; the last step is always one."""
        if self.thresholds:
            return sorted({*self.thresholds, self.steps})
        return sorted({max(1, self.steps * k // 8) for k in (1, 2, 4, 8)})


class OutputSpec(Node):
    """Where and how results are written."""

    dir: Path = Field(Path("outputs"), description="Folder holding one folder per run name.")
    cell: int = Field(
        128, ge=16, le=2048, description="Smallest grid cell in pixels (nearest upscaling)."
    )
    transparency: bool = Field(
        False,
        description="Also write transparency_<i>.png: each final image with an opacity map from "
        "the absolute image gradients accumulated over the optimization (MACO's attribution).",
    )


DeviceName = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]


class Config(Node):
    """A feature visualization: which model, what to maximize, how to render it."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Run name: the output folder under output.dir (default: the file's stem).",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Random seed (init and transforms).")
    device: DeviceName = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    model: ModelSpec = Field(default_factory=ZooModelSpec, description="The network.")
    hooks: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][\w-]*$")], ModulePath] = Field(
        default_factory=dict,
        description="Aliases for layers: alias -> dotted module path (see `fvis layers`).",
    )
    objective: Objective = Field(
        default_factory=lambda: ClassLogitObjective(kind="class_logit", index=[0]),
        description="What to maximize: a weighted tree of objectives.",
    )
    regularizers: list[Regularizer] = Field(
        default_factory=list, description="Penalties subtracted from the objective, with weights."
    )
    param: Param = Field(default_factory=FFTParam, description="The image parameterization.")
    transforms: list[Transform] = Field(
        default_factory=lambda: [StandardTransform(kind="standard")],
        description="Random transforms applied before each forward pass (robustness).",
    )
    optim: OptimSpec = Field(default_factory=OptimSpec, description="The optimizer.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Outputs.")


# ----------------------------------------------------------------------------- loading


@dataclass
class Source:
    """Where a config came from: the file, the line of every YAML path, the --set overrides."""

    path: Path
    lines: dict[YamlPath, int] = field(default_factory=dict)
    overrides: dict[YamlPath, str] = field(default_factory=dict)

    def where(self, loc: YamlPath) -> str:
        """`file:line: yaml.path` for the nearest located ancestor of loc."""
        dotted = dotted_path(loc) or "(top level)"
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.overrides:
                return f"{self.path}: --set {self.overrides[loc[:n]]}: {dotted}"
            if loc[:n] in self.lines:
                return f"{self.path}:{self.lines[loc[:n]]}: {dotted}"
        return f"{self.path}: {dotted}"

    def error(self, err: SpecError) -> str:
        """One line for a build-time error at a YAML location."""
        return f"{self.where(err.loc)}: {err.message}"


@dataclass
class Loaded:
    """A validated config with the source that reports errors against it."""

    config: Config
    source: Source


class ConfigError(UserError):
    """One or more errors in a config file, each already formatted as one line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def dotted_path(loc: YamlPath) -> str:
    """('objective', 'terms', 0, 'layer') -> 'objective.terms[0].layer'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_config(path: Path, overrides: Sequence[str] = ()) -> Loaded:
    """Read, parse and validate a render config, applying `--set a.b=value` overrides."""
    config, source = validate_file(path, Config, overrides)
    if config.name is None:
        config = config.model_copy(update={"name": _default_name(path)})
    return Loaded(config, source)


def validate_file(path: Path, schema: type[M], overrides: Sequence[str] = ()) -> tuple[M, Source]:
    """Any YAML file validated against a schema; every error reported as `file:line: path: msg`."""
    source = Source(path)
    data = _read_yaml(path, source)
    for item in overrides:
        loc, value = _parse_override(path, item)
        _apply_override(path, data, loc, value)
        source.overrides[loc] = item
    try:
        return schema.model_validate(data), source
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, data, source)) from None


def _default_name(path: Path) -> str:
    """A run name from the file's stem, reduced to the characters a run name allows."""
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem).lstrip("._-")
    return stem[:128] or "run"


def _read_yaml(path: Path, source: Source) -> dict[str, Any]:
    """safe_load the file and record the line of every mapping key and sequence item."""
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}, set()) > MAX_CONFIG_NODES:
            raise UserError(
                f"{path}: expands to more than {MAX_CONFIG_NODES} values (YAML anchors and aliases)"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{line}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: the top level must be a mapping, not {type(data).__name__}")
    _record_lines(node, (), source.lines)
    return data


def _expanded_size(node: yaml.Node, sizes: dict[int, int], stack: set[int]) -> int:
    """How many values a YAML node stands for once every alias is expanded (memoized, so a
    "billion laughs" file is measured without being expanded)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in stack:
        return MAX_CONFIG_NODES + 1  # a recursive alias never ends
    stack.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    size = 1 + sum(_expanded_size(child, sizes, stack) for child in children)
    stack.discard(key)
    sizes[key] = size
    return size


def _record_lines(node: yaml.Node, loc: YamlPath, lines: dict[YamlPath, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, key.value)
            lines[child] = key.start_mark.line + 1
            _record_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*loc, i), lines)


def _parse_override(path: Path, item: str) -> tuple[YamlPath, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"{path}: --set {item}: expected dotted.path=value, e.g. optim.steps=64")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"{path}: --set {item}: the value is not valid YAML") from None
    loc = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return loc, value


def _apply_override(path: Path, data: dict[str, Any], loc: YamlPath, value: Any) -> None:
    node: Any = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            if last:
                node[part] = value
            else:
                node = node[part]
        else:
            raise UserError(f"{path}: --set {dotted_path(loc)}: no such place in the config")


def _format_errors(exc: ValidationError, data: dict[str, Any], source: Source) -> list[str]:
    out: list[str] = []
    for error in exc.errors(include_url=False):
        loc = _data_loc(error["loc"], data)
        if error["type"] == "union_tag_invalid":
            loc = (*loc, str(error["ctx"]["discriminator"]).strip("'"))
        line = f"{source.where(loc)}: {_message(error)}"
        if line not in out:
            out.append(line)
    return out


def _data_loc(loc: tuple[Any, ...], data: Any) -> YamlPath:
    """Drop the union tags pydantic inserts into error locations, keeping the YAML path."""
    out: list[str | int] = []
    node = data
    tag_skipped = False
    for i, part in enumerate(loc):
        is_tag = isinstance(node, dict) and part in (node.get("kind"), node.get("source"))
        if is_tag and not tag_skipped:
            tag_skipped = True
            continue
        tag_skipped = False
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        elif i < len(loc) - 1 and not isinstance(part, int):
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


def _message(error: Any) -> str:
    """pydantic's message, made specific where it helps (unknown kinds, unknown keys)."""
    ctx = error.get("ctx") or {}
    if error["type"] == "union_tag_invalid":
        tag = ctx.get("tag")
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        hint = difflib.get_close_matches(str(tag), expected, n=3)
        suggestion = f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
        return f"unknown {tag!r}{suggestion} (choose from {', '.join(expected)})"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"]).removeprefix("Value error, ")
