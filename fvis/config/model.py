"""The `model:` node: where the network comes from and how images become its input."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
)

from fvis.config.base import EntryPoint, FilePath, Node, Size, Tagged


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


Control = Annotated[
    Literal["shuffled"] | None,
    Field(
        description="A control network instead of the learned one: `shuffled` permutes the "
        "entries of every weight tensor (seed 0), keeping the architecture and each tensor's "
        "statistics but no learned feature: what a render owes to the network, not to its "
        "prior or parameterization, is what it loses on the control."
    ),
]


class ZooModelSpec(Node):
    """A model of fvis's own zoo, shipped with the package (see `fvis zoo list`)."""

    source: Literal["zoo"] = "zoo"
    name: str = Field("shapes", description="Zoo model name.")
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")
    control: Control = None


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
    control: Control = None


class CheckpointModelSpec(Node):
    """A local state dict (.pt/.pth loaded with weights_only=True, or .safetensors)."""

    source: Literal["checkpoint"]
    path: FilePath = Field(
        description="Checkpoint file; relative paths are from the config's folder."
    )
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
    control: Control = None


class TorchScriptModelSpec(Node):
    """A TorchScript file (torch.jit.save). Only its output can be hooked."""

    source: Literal["torchscript"]
    path: FilePath = Field(
        description="TorchScript file; relative paths are from the config's folder."
    )
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")
    control: Control = None


class FactoryModelSpec(Node):
    """A 'module:function' entry point returning an nn.Module. This runs the module's code."""

    source: Literal["factory"]
    factory: EntryPoint
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the factory."
    )
    input: InputSpec = Field(default_factory=InputSpec, description="Input preprocessing.")
    control: Control = None


ModelSpec = Annotated[
    ZooModelSpec
    | TorchvisionModelSpec
    | CheckpointModelSpec
    | TorchScriptModelSpec
    | FactoryModelSpec,
    Tagged("source", default="zoo"),
]
