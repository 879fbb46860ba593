"""A render config: the top-level node of the YAML file `fvis render` reads."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    Field,
)

from fvis.config.base import ModulePath, Node
from fvis.config.data import DataSpec
from fvis.config.model import ModelSpec, ZooModelSpec
from fvis.config.objective import (
    ClassLogitObjective,
    Objective,
    Regularizer,
    holds_objectives,
)
from fvis.config.optim import OptimSpec
from fvis.config.output import OutputSpec
from fvis.config.param import FFTParam, Param
from fvis.config.transforms import StandardTransform, Transform

DeviceName = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]


@holds_objectives
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
        # An alias outside the key pattern is an error, as it is to pydantic.
        json_schema_extra={"additionalProperties": False},
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
        default_factory=lambda: [StandardTransform(kind="standard")],  # type: ignore[arg-type]
        description="Random transforms applied before each forward pass (robustness).",
    )
    optim: OptimSpec = Field(default_factory=OptimSpec, description="The optimizer.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Outputs.")
    data: DataSpec | None = Field(
        None,
        description="Images to run the model over (fvis examples, stats, probe train; --data "
        "overrides it).",
    )
