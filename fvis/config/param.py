"""The `param:` node: the image parameterization."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from fvis.config.base import FilePath, Node, Shorthand, Size, Tagged, TensorFile

# The key `fvis stats` writes the colour matrix under, read when `decorrelate: {file}` names none.
COLOR_KEY = "color_correlation"


def _decorrelation_form(value: Any) -> str | None:
    """`bool` or `{file}`: the spelling of `decorrelate`, so that a mistake is reported once, in
    that spelling's terms."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return "bool"
    if isinstance(value, dict | TensorFile):
        return "{file}"
    return None


def _file_name(value: Any) -> Any:
    """A file name alone means {file: NAME}."""
    return {"file": value} if isinstance(value, str) else value


Decorrelation = Annotated[
    Annotated[bool, Tag("bool")] | Annotated[TensorFile, Tag("{file}")],
    Discriminator(
        _decorrelation_form,
        custom_error_type="decorrelate",
        custom_error_message="expected true, false, a file name or {file: ..., key: ...}",
    ),
    Shorthand(
        _file_name,
        "A file name: {file: NAME}, its matrix under the key color_correlation.",
        {"type": "string", "minLength": 1},
    ),
]


class ParamNode(Node):
    """Fields shared by every image parameterization."""

    size: Size | None = Field(
        None, description="Image size [height, width] (or one int); default the model's input."
    )
    batch: int = Field(1, ge=1, le=4096, description="Number of images optimized together.")
    channels: int | None = Field(
        None, ge=1, le=64, description="Image channels; default the model's input channels."
    )
    decorrelate: Decorrelation = Field(
        True,
        description="Optimize in a decorrelated colour space (3-channel images only). true: the "
        "model's colour statistics when it has them, ImageNet's otherwise; {file: ..., key: ...} "
        "(or a file name): a 3x3 colour-correlation root from a file (`fvis stats` writes one "
        "under the key color_correlation, the default key).",
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
    init: FilePath | None = Field(
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
    # 1.5 and 0.04, not lucid's 1.0 and 0.01: benchmarks/quality.md measured fvis against
    # lucent on the built-in model at 64 and 224 px; 1/f^1.5 removed the fine chromatic noise
    # and gave colour its full saturation, the larger start kept renders of different seeds apart.
    decay: float = Field(
        1.5, ge=0, le=4, description="Power of the 1/f scaling; higher is smoother."
    )
    sd: float = Field(
        0.04, gt=0, le=10, description="Standard deviation of the random Fourier coefficients."
    )
    # lucid floors f at 1/size, so every doubling of the size adds an octave of ever larger
    # steps and, with decay 1.5, a 224 px render collapses into a few image-wide colour fields
    # that every seed shares (diversity 0.91 against lucent's 0.96 on the built-in model's
    # classes). Flooring at 1/64 keeps renders up to 64 px as they were and gave 0.96.
    period: int | None = Field(
        64,
        ge=2,
        description="Longest period in pixels that 1/f^decay favours: coarser frequencies take "
        "its scale. null: the image's size (lucid).",
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
    spectrum: FilePath | None = Field(
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
    Tagged("kind", default="fft"),
]
