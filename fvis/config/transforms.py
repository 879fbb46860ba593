"""The `transforms:` list: random transforms applied before each forward pass."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from fvis.config.base import Node, Shorthand, Tagged

FRAME = (
    "Let the model see the whole padded canvas, the border framing the image (lucid's "
    "transforms): terms that average over positions also read the frame's; terms that index "
    "positions read the image's own. false: cropped back to the image's size."
)


class PadTransform(Node):
    """Pad every side (before the other transforms, as lucid does)."""

    kind: Literal["pad"]
    pixels: int = Field(ge=0, le=512, description="Padding on each side.")
    mode: Literal["constant", "reflect", "replicate"] = Field(
        "constant", description="How the border is filled (also used for pixels shifted in)."
    )
    value: float = Field(0.5, ge=0, le=1, description="Fill value for mode: constant.")
    # lucid feeds the padded canvas to the model; fvis crops it back unless asked (`frame`).
    # benchmarks/quality-frame.md measured the frame on the built-in model.
    frame: bool = Field(False, description=FRAME)


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
    frame: bool = Field(False, description=f"Of the stack's pad: {FRAME}")


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
        Shorthand(_span, "One number s: always that sigma, [s, s]."),
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
    Tagged("kind"),
]
