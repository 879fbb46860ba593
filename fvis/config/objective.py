"""The `objective:` and `regularizers:` nodes: one schema class per objective kind.

A kind is declared once, by its schema class: its fields, and as class variables what the rest
of fvis needs to know about it: the order of its positional arguments in expressions
(`positional`), the objective class it compiles to (`builds`, "module:Class", whose `from_node`
builds it), whether it compares batch items (`cross_batch`: sweeps refuse it) and whether it
may stand under `regularizers:` (`regularizer`). Defining a subclass with a `kind` registers it:
the `Objective` union, expressions, the compiler, sweeps and `fvis objectives` all read `KINDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, GetCoreSchemaHandler, Tag

from fvis.config.base import (
    EntryPoint,
    FilePath,
    Indices,
    LayerName,
    Node,
    Shorthand,
    Tagged,
    TensorFile,
)
from fvis.expression import parse_expression

M = TypeVar("M", bound=BaseModel)

# Every objective kind's schema class, in the order of definition (filled by ObjectiveNode).
KINDS: dict[str, type[ObjectiveNode]] = {}
# Models with fields holding objectives: rebuilt, in this order, when a kind is added late.
HOLDERS: list[type[BaseModel]] = []


class ObjectiveNode(Node):
    """Fields shared by every objective: its weight and the batch items it applies to."""

    positional: ClassVar[tuple[str, ...]] = ()
    builds: ClassVar[str] = ""
    cross_batch: ClassVar[bool] = False
    regularizer: ClassVar[bool] = False

    weight: float = Field(1.0, description="Scalar factor applied to this term.")
    batch: Indices | None = Field(
        None, description="Batch item(s) this term applies to (default: all); 0 elsewhere."
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Register a subclass that declares a `kind`; one added after the built-in kinds (a
        test's, or a library's) is then added to every model that holds objectives."""
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("kind")
        if field is None:
            return
        (kind,) = get_args(field.annotation)
        if not cls.builds:
            raise TypeError(f"objective kind {kind!r} must name the class it builds (builds=)")
        KINDS[kind] = cls
        for holder in HOLDERS:
            holder.model_rebuild(force=True)


def holds_objectives(model: type[M]) -> type[M]:
    """Mark a model whose fields hold objectives, so that later kinds reach it too."""
    HOLDERS.append(model)
    return model


def parse_objective(value: Any) -> Any:
    """An expression string parsed into a tree, with the kinds callable in expressions."""
    callable_kinds = {kind: node.positional for kind, node in KINDS.items() if node.positional}
    return parse_expression(value, callable_kinds)


def _tagged_union(kinds: tuple[type[ObjectiveNode], ...], handler: GetCoreSchemaHandler) -> Any:
    union = Union[kinds]  # type: ignore[valid-type]  # noqa: UP007 (built at run time)
    return handler.generate_schema(Annotated[union, Tagged("kind")])


class _AnyKind:
    """The tagged union of every registered kind, built when a model's schema is built."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return _tagged_union(tuple(KINDS.values()), handler)


class _AnyRegularizer:
    """The tagged union of the kinds allowed under `regularizers:`."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return _tagged_union(tuple(n for n in KINDS.values() if n.regularizer), handler)


if TYPE_CHECKING:  # to a type checker, any objective node
    Objective = ObjectiveNode
    Regularizer = ObjectiveNode
else:
    Objective = Annotated[
        _AnyKind,
        Shorthand(
            parse_objective,
            "An expression, e.g. 'channel(conv3, 5) - 1e-4 * l1(image)': the tree it spells.",
            {"type": "string", "minLength": 1},
        ),
    ]
    # Penalties allowed under `regularizers:`; each is subtracted from the objective.
    Regularizer = _AnyRegularizer


class ChannelObjective(ObjectiveNode):
    """Mean activation of a channel over all positions (several channels: the sum of means)."""

    kind: Literal["channel"]
    positional = ("layer", "channel")
    builds = "fvis.objectives.activation:Channel"
    layer: LayerName
    channel: Indices = Field(
        description="Channel index, or a list of them: the sum of their means (keras-vis's "
        "filter_indices)."
    )


class NeuronObjective(ObjectiveNode):
    """Activation of a channel at one position (x = column, y = row; default: the centre)."""

    kind: Literal["neuron"]
    positional = ("layer", "channel", "x", "y")
    builds = "fvis.objectives.activation:Neuron"
    layer: LayerName
    channel: Indices = Field(description="Channel index, or a list of them, summed.")
    x: int | None = Field(None, ge=0, description="Column; default the centre column.")
    y: int | None = Field(None, ge=0, description="Row; default the centre row.")


class LayerObjective(ObjectiveNode):
    """Mean activation of a whole layer."""

    kind: Literal["layer"]
    positional = ("layer",)
    builds = "fvis.objectives.activation:LayerMean"
    layer: LayerName


class ClassLogitObjective(ObjectiveNode):
    """Sum of class logits (pre-softmax scores) at a [B, classes] layer."""

    kind: Literal["class_logit"]
    positional = ("index", "layer")
    builds = "fvis.objectives.activation:ClassLogit"
    index: Indices = Field(description="Class index or list of indices, summed.")
    layer: LayerName = "output"


class TotalVariationObjective(ObjectiveNode):
    """Total variation: sum of absolute differences between neighbouring pixels, per item."""

    kind: Literal["total_variation"]
    positional = ("layer",)
    builds = "fvis.objectives.activation:TotalVariation"
    regularizer = True
    layer: LayerName = "image"


class BlurObjective(ObjectiveNode):
    """High-frequency energy: sum of (a - Gaussian blur of a)^2, per item (a frequency penalty)."""

    kind: Literal["blur"]
    positional = ("layer", "sigma")
    builds = "fvis.objectives.frequency:BlurResidual"
    regularizer = True
    layer: LayerName = "image"
    sigma: float = Field(1.0, gt=0, le=64, description="Blur sigma in pixels.")


class PriorObjective(ObjectiveNode):
    """A learned prior's pull toward the data: regularization by denoising (Romano et al. 2017),
    1/2 ||x - D(x)||^2 per item, its gradient x - D(x), with D a denoiser of the data's images
    (`fvis prior train`); a penalty."""

    kind: Literal["prior"]
    positional = ("file",)
    builds = "fvis.prior:DenoiserPrior"
    regularizer = True
    file: str = Field(
        "zoo:shapes",
        description="The prior: a file `fvis prior train` wrote, or zoo:NAME for the one a "
        "built-in model ships with.",
    )
    layer: LayerName = "image"
    control: bool = Field(
        False,
        description="Also render the config on the control network (model.control: shuffled) "
        "into RUN/control/, and compare the two in RUN/control.json: what the prior draws alone.",
    )


class _DistancePenalty(ObjectiveNode):
    """Shared by the norms of (activation - constant): on the image unless told otherwise."""

    positional = ("layer", "constant")
    regularizer = True
    layer: LayerName = "image"
    constant: float = Field(0.0, description="Value subtracted before taking the norm.")


class L1Objective(_DistancePenalty):
    """L1 norm of (activation - constant), per item."""

    kind: Literal["l1"]
    builds = "fvis.objectives.activation:L1"


class L2Objective(_DistancePenalty):
    """L2 norm of (activation - constant), per item."""

    kind: Literal["l2"]
    builds = "fvis.objectives.activation:L2"


class L2MeanObjective(_DistancePenalty):
    """Mean squared distance to a constant, per item (captum's L2Mean)."""

    kind: Literal["l2_mean"]
    builds = "fvis.objectives.activation:L2Mean"


class DeepDreamObjective(ObjectiveNode):
    """DeepDream: mean of the squared activations of a layer."""

    kind: Literal["deepdream"]
    positional = ("layer",)
    builds = "fvis.objectives.activation:DeepDream"
    layer: LayerName


class RandomTensor(Node):
    """A standard-normal random tensor from a seed, shaped to fit the layer."""

    random: int = Field(ge=0, le=2**63 - 1, description="Seed.")
    shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="Shape, where the layer does not determine it (tensor_direction)."
    )


class ImageTarget(Node):
    """The activations an image produces at a layer (resized to the render's size, through the
    model's preprocessing): as a direction, their mean over positions (a caricature)."""

    image: FilePath = Field(description="Image file; relative paths are from the config's folder.")
    layer: LayerName | None = Field(
        None, description="The layer whose activations are taken; default the objective's own."
    )


FORMS: dict[str, type[Node]] = {"file": TensorFile, "random": RandomTensor, "image": ImageTarget}


def _spelled(*forms: str) -> Discriminator:
    """Tells the spellings of a tensor apart by the key its mapping holds (`file`, `random`,
    `image`), so that a mistake in one is reported once, in that spelling's terms, rather than
    once for every spelling it is not. The tags ("{file}") are no keys, so the loader drops them
    from error locations as it drops every union tag."""

    def form(value: Any) -> str | None:
        if isinstance(value, list):
            return "[numbers]"
        if isinstance(value, dict):
            key = next((key for key in forms if key in value), None)
        else:
            key = next((key for key in forms if isinstance(value, FORMS[key])), None)
        return None if key is None else f"{{{key}}}"

    shown = ", ".join(f"{{{key}: ...}}" for key in forms)
    return Discriminator(
        form,
        custom_error_type="tensor",
        custom_error_message=f"expected a list of numbers or one of {shown}",
    )


TensorSpec = Annotated[
    Annotated[list[Any], Tag("[numbers]")]
    | Annotated[TensorFile, Tag("{file}")]
    | Annotated[RandomTensor, Tag("{random}")],
    _spelled("file", "random"),
    Field(description="Inline numbers (nested lists), {file: ..., key: ...} or {random: SEED}."),
]
# A tensor, or the activations of an image: what an inversion reproduces, a direction (their
# mean over positions: a caricature), a tensor direction (all of them).
TargetSpec = Annotated[
    Annotated[list[Any], Tag("[numbers]")]
    | Annotated[TensorFile, Tag("{file}")]
    | Annotated[RandomTensor, Tag("{random}")]
    | Annotated[ImageTarget, Tag("{image}")],
    _spelled("file", "random", "image"),
]


class DirectionalNode(ObjectiveNode):
    """Fields shared by the direction family."""

    layer: LayerName
    vector: TargetSpec = Field(
        description="Inline numbers (nested lists), {file: ..., key: ...}, {random: SEED}, or "
        "{image: FILE, layer: L}: the image's activations at L (default the objective's layer) "
        "averaged over positions (a caricature)."
    )
    transform: TensorSpec | None = Field(
        None,
        description="Matrix M [D, C] applied to activations and vector before comparing them, "
        "e.g. Cov^-1/2 for a whitened inner product.",
    )


def _cossim_pow(default: float) -> Any:
    """The power of the cosine factor of dot x cosine^n (0: the plain dot product)."""
    return Field(default, ge=0, le=16, description="Power of the cosine factor.")


def _floor() -> Any:
    """The floor of dot x cosine^n's cosine factor (anti-aligned activations stay negative)."""
    return Field(0.1, ge=0, le=1, description="Lower bound of the cosine factor.")


class _DotCosine(DirectionalNode):
    """Shared by the kinds scoring dot(a, v) * max(cos(a, v), floor)^cossim_pow."""

    cossim_pow: float = _cossim_pow(0.0)
    floor: float = _floor()


class DirectionObjective(_DotCosine):
    """Mean over positions of dot(a, v) * max(cos(a, v), floor)^cossim_pow (captum Direction)."""

    kind: Literal["direction"]
    positional = ("layer", "vector", "cossim_pow")
    builds = "fvis.objectives.direction:Direction"


class DotCossimObjective(_DotCosine):
    """lucid's dot x cosine^n with a floor on the cosine (anti-aligned never scores positive):
    `direction` with cossim_pow 1 by default."""

    kind: Literal["dot_cossim"]
    positional = ("layer", "vector", "cossim_pow", "floor")
    builds = "fvis.objectives.direction:DotCossim"
    cossim_pow: float = _cossim_pow(1.0)


class CosineObjective(DirectionalNode):
    """Mean over positions of the cosine similarity between activations and a direction."""

    kind: Literal["cosine"]
    positional = ("layer", "vector")
    builds = "fvis.objectives.direction:Cosine"


class _AtPosition(_DotCosine):
    """Shared by the directions at one position of the layer (default the centre)."""

    positional = ("layer", "vector", "x", "y")
    x: int | None = Field(None, ge=0, description="Column (token index on [B, T, C] layers).")
    y: int | None = Field(None, ge=0, description="Row.")


class NeuronDirectionObjective(_AtPosition):
    """dot(a, v) * max(cos, floor)^cossim_pow at one position (default the centre)."""

    kind: Literal["neuron_direction"]
    builds = "fvis.objectives.direction:NeuronDirection"


class AngledNeuronDirectionObjective(_AtPosition):
    """`neuron_direction` with cossim_pow 4 by default (captum's AngledNeuronDirection)."""

    kind: Literal["angled_neuron_direction"]
    builds = "fvis.objectives.direction:AngledNeuronDirection"
    cossim_pow: float = _cossim_pow(4.0)


class DotOrthogonalObjective(DirectionalNode):
    """dot(a, v/|v|) - penalty * |component of a orthogonal to v|, mean over positions."""

    kind: Literal["dot_orthogonal_penalty"]
    positional = ("layer", "vector", "penalty")
    builds = "fvis.objectives.direction:DotOrthogonal"
    penalty: float = Field(1.0, ge=0, description="Weight of the orthogonal L2 penalty.")


class VectorObjective(DirectionalNode):
    """Mean over positions of relu(dot(a, v)) (captum VectorLoss)."""

    kind: Literal["vector"]
    positional = ("layer", "vector")
    builds = "fvis.objectives.direction:VectorLoss"
    relu: bool = Field(True, description="Apply a ReLU to the projection.")


class TensorDirectionObjective(ObjectiveNode):
    """dot x cosine^n of a [C, h, w] direction tensor with the centred window of a layer."""

    kind: Literal["tensor_direction"]
    positional = ("layer", "tensor")
    builds = "fvis.objectives.direction:TensorDirection"
    layer: LayerName
    tensor: TargetSpec = Field(
        description="A [C, h, w] tensor: inline numbers, {file: ..., key: ...}, {random: SEED, "
        "shape: [C, h, w]}, or {image: FILE, layer: L}: the image's [C, H, W] activations at L "
        "(default the objective's layer), a spatially aligned caricature."
    )
    cossim_pow: float = _cossim_pow(0.0)
    floor: float = _floor()


class ActivationWeightsObjective(ObjectiveNode):
    """Mean over positions of sum_c w_c a_c; weights per channel [C] or per element."""

    kind: Literal["activation_weights"]
    positional = ("layer", "weights")
    builds = "fvis.objectives.direction:ActivationWeights"
    layer: LayerName
    weights: TensorSpec


class FacetObjective(ObjectiveNode):
    """Facet loss: a direction at a late layer plus facet weights on an earlier layer."""

    kind: Literal["facet"]
    positional = ("layer", "ultimate", "vector", "weights", "strength")
    builds = "fvis.objectives.direction:Facet"
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
    positional = ("layer", "target")
    builds = "fvis.objectives.direction:L2Inversion"
    layer: LayerName
    target: TargetSpec = Field(
        description="The activation to reproduce: a tensor, or {image: FILE, layer: L} (the "
        "image's activations at L, default the objective's layer)."
    )


class DiversityObjective(ObjectiveNode):
    """Minus the Gram-matrix cosine similarity with the other batch items."""

    kind: Literal["diversity"]
    positional = ("layer",)
    builds = "fvis.objectives.batch:Diversity"
    cross_batch = True
    layer: LayerName


class AlignmentObjective(ObjectiveNode):
    """Minus the squared activation difference with neighbouring batch items."""

    kind: Literal["alignment"]
    positional = ("layer", "decay", "distance")
    builds = "fvis.objectives.batch:Alignment"
    cross_batch = True
    layer: LayerName
    decay: float = Field(2.0, gt=0, description="Neighbours at distance d weigh decay^-d.")
    distance: int = Field(4, ge=1, le=64, description="Farthest neighbour compared.")


class SumObjective(ObjectiveNode):
    """Weighted sum of terms."""

    kind: Literal["sum"]
    builds = "fvis.objectives.algebra:Sum"
    terms: list[Objective] = Field(min_length=1, description="The terms added together.")


class NegObjective(ObjectiveNode):
    """The negation of a term (minimize it)."""

    kind: Literal["neg"]
    builds = "fvis.objectives.algebra:Scaled"
    term: Objective = Field(description="The negated term.")


class ProductObjective(ObjectiveNode):
    """Product of terms, item by item."""

    kind: Literal["product"]
    builds = "fvis.objectives.algebra:Product"
    terms: list[Objective] = Field(min_length=2, description="The terms multiplied together.")


class PowerObjective(ObjectiveNode):
    """A term raised to a power."""

    kind: Literal["power"]
    builds = "fvis.objectives.algebra:Power"
    term: Objective = Field(description="The base.")
    exponent: float = Field(description="The exponent.")


class InterpolateObjective(ObjectiveNode):
    """Item b of B maximizes (1 - t) * start + t * end, t = b / (B - 1) (interpolation)."""

    kind: Literal["interpolate"]
    positional = ("start", "end")
    builds = "fvis.objectives.algebra:Interpolate"
    cross_batch = True
    start: Objective = Field(description="The objective of the first item.")
    end: Objective = Field(description="The objective of the last item.")


class PluginObjective(ObjectiveNode):
    """An objective from your own code: `factory` is called with `layer` (resolved like any layer
    name, when given) and every other key of the node, and returns an fvis Objective (a
    `fvis.objectives.Leaf` subclass, or any composition). This runs that module's code."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["plugin"]
    positional = ("factory", "layer")
    builds = "fvis.objectives.plugin:Plugin"
    factory: EntryPoint
    layer: LayerName | None = Field(None, description="The layer the objective reads, if any.")


for _holder in (SumObjective, ProductObjective, NegObjective, PowerObjective, InterpolateObjective):
    holds_objectives(_holder).model_rebuild(force=True)


def objective_kinds() -> dict[str, type[ObjectiveNode]]:
    """Every objective kind and its schema class, in the order of definition."""
    return dict(KINDS)
