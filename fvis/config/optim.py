"""The `optim:` node: the optimizer, the device options and the gradient preconditioners.

The YAML keeps them in one flat node; the code reads them in three typed parts, each in one
place: `schedule` (the render loop), `device_options` (building the network and running it) and
`preconditioning` (the image parameterization's gradient hooks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from fvis.config.base import Node


@dataclass(frozen=True)
class Schedule:
    """What the render loop steps by: Adam's learning rate (annealed to `lr_end` if set), the
    number of steps, the steps whose snapshots are kept (the last always one), and the warm-up
    steps of redirected ReLUs."""

    lr: float
    steps: int
    snapshot_steps: tuple[int, ...]
    redirected_relu: int
    lr_end: float | None

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (1 to `steps`): `lr` throughout, or annealed from
        `lr` at the first step to `lr_end` at the last along a half cosine (Loshchilov & Hutter
        2017, SGDR, without restarts)."""
        if self.lr_end is None or self.steps == 1:
            return self.lr
        t = (step - 1) / (self.steps - 1)
        return self.lr_end + (self.lr - self.lr_end) * (1 + math.cos(math.pi * t)) / 2


@dataclass(frozen=True)
class DeviceOptions:
    """How the network is prepared (dtype, BatchNorm folding, memory format) and run (autocast,
    compile, cuDNN's autotuner)."""

    precision: Literal["fp32", "bf16", "fp16"]
    float64: bool
    fold_batchnorm: bool
    channels_last: bool | Literal["auto"]
    compile: bool
    cudnn_benchmark: bool


@dataclass(frozen=True)
class Preconditioning:
    """What the image gradient goes through before each step: a Gaussian blur of this sigma
    (pixels) and a Laplacian pyramid of this many normalized levels; 0 turns each off."""

    grad_blur: float
    grad_pyramid: int


class OptimSpec(Node):
    """The optimization: Adam on the image parameters."""

    lr: float = Field(0.05, gt=0, le=10, description="Adam learning rate.")
    lr_end: float | None = Field(
        None,
        ge=0,
        description="Anneal the learning rate from lr at the first step to this at the last, "
        "along a half cosine; null: constant.",
    )
    # 256 (half lucent's 512, in under a fifth of its time): benchmarks/quality.md's 224 px
    # renders of the built-in model fall short of lucent's on 3 measures at 256 steps, on 9 at
    # 192; at 64 px the extra steps trade diversity and fine noise for colour (README, Picture
    # quality).
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
        "with a warning); the image and its optimizer stay fp32. Not faster on every network "
        "(benchmarks/results.md), hence fp32 by default.",
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
        "the benchmark shows it pays (benchmarks/results.md), off on GPUs, where it does not.",
    )
    compile: bool = Field(
        False, description="torch.compile the network (slow first steps, then faster on GPUs)."
    )
    cudnn_benchmark: bool = Field(
        False,
        description="On CUDA, let cuDNN time its convolution algorithms on the first step and "
        "keep the fastest (torch.backends.cudnn.benchmark); the choice may vary between runs, "
        "and the benchmark found no steady gain (benchmarks/results.md).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> OptimSpec:
        if self.float64 and self.precision != "fp32":
            raise ValueError(f"float64 and precision {self.precision} exclude each other")
        if self.lr_end is not None and self.lr_end > self.lr:
            raise ValueError(f"lr_end ({self.lr_end}) exceeds lr ({self.lr}): it anneals down")
        late = [t for t in self.thresholds or [] if t > self.steps]
        if late:
            raise ValueError(f"thresholds {late} exceed steps ({self.steps})")
        return self

    @property
    def schedule(self) -> Schedule:
        """The render loop's part (snapshots at the thresholds, by default at 1/8, 1/4, 1/2 and
        all of the steps)."""
        if self.thresholds:
            snapshots = sorted({*self.thresholds, self.steps})
        else:
            snapshots = sorted({max(1, self.steps * k // 8) for k in (1, 2, 4, 8)})
        return Schedule(self.lr, self.steps, tuple(snapshots), self.redirected_relu, self.lr_end)

    @property
    def device_options(self) -> DeviceOptions:
        """The device's part."""
        return DeviceOptions(
            self.precision,
            self.float64,
            self.fold_batchnorm,
            self.channels_last,
            self.compile,
            self.cudnn_benchmark,
        )

    @property
    def preconditioning(self) -> Preconditioning:
        """The gradient preconditioners' part."""
        return Preconditioning(self.grad_blur, self.grad_pyramid)
