"""Image parameterizations: modules whose parameters map to a batch of images in [0, 1].

An image is built in three stages: a basis gives unconstrained values in a decorrelated colour
space; a fixed 3x3 matrix maps them to the model's colours; a squash (sigmoid or clamp) maps them
into [0, 1]. Olah et al. 2017, "Feature Visualization", explain why the basis and decorrelated
colours precondition the optimization: they change the path of descent, not the minima.

The bases (`param.kind`):

* `pixel`: one value per pixel; `fft`: Fourier coefficients scaled by 1/f^decay;
* `laplacian`: a Laplacian pyramid of learnable levels summed after upsampling;
* `lowres`: an image at 1/factor of the size, upsampled bilinearly or bicubically;
* `cppn`: a compositional pattern-producing network (Stanley 2007; Mordvintsev et al. 2018,
  "Differentiable Image Parameterizations") over (x, y, r), renderable at any size;
* `maco`: a fixed Fourier magnitude and a learned phase (Fel et al. 2023, "Unlocking Feature
  Visualization for Deeper Networks with MAgnitude Constrained Optimization").

Every kind shares the same machinery: per-item parameters drawn from each item's random stream
(so an item starts the same in any batch) or fitted to an init image; an optional component
common to the batch (`shared`); an optional alpha channel; and hooks on the image gradient.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from fvis import filters
from fvis.config import (
    CPPNParam,
    FFTParam,
    LaplacianParam,
    LowResParam,
    MacoParam,
    Param,
    ParamNode,
    PixelParam,
    Preconditioning,
)
from fvis.errors import SpecError, UserError
from fvis.io import read_image, resolve
from fvis.spectrum import basis_magnitude

# Square root of ImageNet's colour covariance (lucid's published constants), for models
# that do not provide their own.
IMAGENET_COLOR_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))

# lucid scales the inverse FFT output by 1/4; keeping it lets its learning rates carry over.
FFT_OUTPUT_SCALE = 0.25

# An init image is clipped to [EPS, 1 - EPS] before the sigmoid is inverted (logit(0) = -inf).
INIT_EPS = 1e-3

CPPN_FORMAT = "fvis-cppn-1"
CPPN_FIT_STEPS = 200
CPPN_FIT_LR = 0.01  # in weight units
CPPN_FIT_SIDE = 64  # a larger init image is fitted downscaled to this longer side (bounded cost)
# A CPPN's weights are its parameters times this, so the default optim.lr (0.05) moves them by
# about 0.002 per step: the rate at which CPPNs optimize well (faster saturates the image).
CPPN_STEP_SCALE = 0.04
# atan(z) and atan(z)^2 standardized for z ~ N(0, 1): E atan^2 = 0.4497, sd(atan^2) = 0.3961.
ATAN_SD, ATAN_SQ_MEAN, ATAN_SQ_SD = 0.6706, 0.4497, 0.3961

Params = dict[str, Tensor]
GradientHook = Callable[[Tensor], Tensor | None]


# The largest condition number a colour matrix from a file may have: its inverse maps an init
# image and maco's spectrum into the decorrelated space, and the data of a matrix past this
# (a covariance whose eigenvalues differ by 10^8) is all but grey: nothing to decorrelate.
MAX_COLOR_CONDITION = 1e4

ColorRoot = Sequence[Sequence[float]] | Tensor


def color_matrix(sqrt_cov: ColorRoot) -> torch.Tensor:
    """The colour-covariance square root normalized so that its largest column norm is 1."""
    m = torch.as_tensor(sqrt_cov, dtype=torch.float32)
    return m / m.norm(dim=0).max()


def check_color_root(m: Tensor) -> None:
    """A colour-covariance square root from a file (`fvis.zoo.stats.color_correlation_sqrt`'s
    form) must be a finite, invertible 3x3 matrix; a ValueError says what this one is not."""
    if tuple(m.shape) != (3, 3):
        raise ValueError(f"the colour matrix must be [3, 3], got {list(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("the colour matrix holds NaN or infinite values")
    condition = torch.linalg.cond(m.double()).item()
    if not condition <= MAX_COLOR_CONDITION:  # NaN (a zero matrix) included
        raise ValueError(
            f"the colour matrix is singular or nearly (condition number {condition:.3g}, at "
            f"most {MAX_COLOR_CONDITION:g}): its data's colours vary along fewer than 3 "
            "directions"
        )


class ImageParam(nn.Module):
    """Base class: `forward()` returns the current images [B, C(+1 alpha), H, W] in [0, 1].

    A kind defines `draw` (one item's random parameters), `fit` (parameters reproducing a given
    basis) and `generate` (parameters -> basis [N, D, H, W], D = C + alpha). The parameters of
    item b are `own_b`, or `(1 - shared) own_b + shared * common` with a shared component.
    """

    color: Tensor | None
    importance: Tensor

    def __init__(
        self, spec: ParamNode, size: tuple[int, int], channels: int, color: Tensor | None
    ) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.channels = channels
        self.squash = spec.squash
        self.alpha = spec.alpha
        self.shared = spec.shared
        self.sd = spec.sd
        self.depth = channels + int(spec.alpha)
        self.register_buffer("color", color)
        self.own = nn.ParameterDict()
        self.common = nn.ParameterDict()
        self.gradient_hooks: list[GradientHook] = []

    # ------------------------------------------------------------------ defined by each kind

    def draw(self, g: torch.Generator) -> Params:
        """One item's random initial parameters (leading dimension 1), from its own stream."""
        raise NotImplementedError

    def fit(self, basis: Tensor, image: Tensor) -> Params:
        """Parameters (leading dimension 1) whose image is `image` ([1, D, H, W] in [0, 1]) or
        as close as the kind can get; `basis` is the same image before colours and squash."""
        raise NotImplementedError

    def generate(self, params: Params, size: tuple[int, int]) -> Tensor:
        """The basis [N, D, H, W] of N items' parameters."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared machinery

    def initialize(
        self, streams: Sequence[torch.Generator], init: Tensor | Params | None = None
    ) -> None:
        """Random parameters per item (and for the common part), or all fitted to `init`.

        `init` is an image [1, C, H, W] in [0, 1] or per-item parameters [B or 1, ...]. Random
        draws of the mixed parameters keep the spec's spread: both parts are scaled by
        1 / sqrt((1 - s)^2 + s^2), the standard deviation of a mix of two unit draws.
        """
        batch = len(streams)
        s = self.shared
        if init is None:
            items = [self.draw(g) for g in streams]
            own = {k: torch.cat([item[k] for item in items]) for k in items[0]}
            common = self.draw(_shared_stream(streams)) if s else {}
            if s:
                spread = 1.0 / math.hypot(1 - s, s)
                own = {k: v * spread for k, v in own.items()}
                common = {k: v * spread for k, v in common.items()}
        else:
            if isinstance(init, Tensor):
                init = self.fit(self.to_basis(init), self.with_alpha(init))
            own = {k: v.expand(batch, *v.shape[1:]).clone() for k, v in init.items()}
            common = {k: v.mean(0, keepdim=True) for k, v in own.items()} if s else {}
            if 0 < s < 1:  # own_b such that the mix is exactly the given parameters
                own = {k: (v - s * common[k]) / (1 - s) for k, v in own.items()}
        self.own = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in own.items()})
        self.common = nn.ParameterDict(
            {k: nn.Parameter(v.detach().clone()) for k, v in common.items()}
        )

    def params(self) -> Params:
        """Every item's effective parameters, the shared component mixed in."""
        if not len(self.common):
            return dict(self.own.items())
        s = self.shared
        return {k: (1 - s) * v + s * self.common[k] for k, v in self.own.items()}

    def basis(self) -> Tensor:
        """Unconstrained values [B, D, H, W] in the (possibly decorrelated) colour space."""
        return self.generate(self.params(), self.size)

    def finish(self, x: Tensor) -> Tensor:
        """Basis -> colours (decorrelation matrix) -> [0, 1] (squash); alpha is not mixed."""
        if self.alpha:
            rgb, a = x[:, : self.channels], x[:, self.channels :]
            if self.color is not None:
                rgb = torch.einsum("ck,bkhw->bchw", self.color, rgb)
            x = torch.cat([rgb, a], 1)
        elif self.color is not None:
            x = torch.einsum("ck,bkhw->bchw", self.color, x)
        if self.squash == "sigmoid":
            return torch.sigmoid(x)
        return (x + 0.5).clamp(0.0, 1.0)

    def forward(self) -> Tensor:
        image = self.finish(self.basis())
        if torch.is_grad_enabled() and image.requires_grad:
            for hook in self.gradient_hooks:
                image.register_hook(hook)
        return image

    def opaque(self, image: Tensor) -> Tensor:
        """The colour channels as the model sees them: with alpha, composited over mid-grey."""
        if not self.alpha:
            return image
        rgb, a = image[:, : self.channels], image[:, self.channels :]
        return rgb * a + 0.5 * (1 - a)

    def to_basis(self, image: Tensor) -> Tensor:
        """The basis whose image is `image` [1, C, H, W]: squash and colours inverted; alpha 0
        (half opaque, where its gradient is largest)."""
        x = image.float()
        sigmoid = self.squash == "sigmoid"
        x = torch.logit(x.clamp(INIT_EPS, 1 - INIT_EPS)) if sigmoid else x - 0.5
        if self.color is not None:
            x = torch.einsum("kc,bchw->bkhw", torch.linalg.inv(self.color), x)
        if self.alpha:
            x = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        return x

    def with_alpha(self, image: Tensor) -> Tensor:
        """`image` with the alpha channel `to_basis` gives it (0.5), when the param has one."""
        image = image.float()
        if not self.alpha:
            return image
        return torch.cat([image, torch.full_like(image[:, :1], 0.5)], 1)

    # ------------------------------------------------------------------ gradient hooks

    def track_importance(self) -> None:
        """Accumulate |d loss / d image| per item and pixel over the optimization (summed over
        colour channels): MACO's attribution map, written as transparency_<i>.png."""
        self.register_buffer("importance", torch.zeros(len(self.own_first()), *self.size))
        self.gradient_hooks.append(self._accumulate)

    def _accumulate(self, grad: Tensor) -> None:
        self.importance += grad[:, : self.channels].detach().abs().sum(1).to(self.importance)

    def own_first(self) -> Tensor:
        return next(iter(self.own.values()))


def _shared_stream(streams: Sequence[torch.Generator]) -> torch.Generator:
    """The common component's random stream: keyed by the run (item 0's seed), not the batch."""
    digest = hashlib.sha256(f"{streams[0].initial_seed()}/shared".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(1, *shape, generator=g)


def _fixed_size(param: ImageParam, size: tuple[int, int]) -> None:
    if tuple(size) != param.size:
        raise ValueError(f"{type(param).__name__} renders at {param.size} only, not {size}")


# ----------------------------------------------------------------------------- pixel, fft


class PixelImage(ImageParam):
    """One free parameter per pixel and channel. Init image: the exact inverse."""

    def __init__(
        self, spec: PixelParam, size: tuple[int, int], channels: int, color: Tensor | None
    ) -> None:
        super().__init__(spec, size, channels, color)

    def draw(self, g: torch.Generator) -> Params:
        return {"pixels": _randn(g, self.depth, *self.size) * self.sd}

    def fit(self, basis: Tensor, image: Tensor) -> Params:
        return {"pixels": basis}

    def generate(self, params: Params, size: tuple[int, int]) -> Tensor:
        _fixed_size(self, size)
        return params["pixels"]


def radial_frequency(size: tuple[int, int]) -> Tensor:
    """|f| in cycles per pixel of each real-FFT bin of an H x W image: [H, W//2+1]."""
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return (fx.square() + fy.square()).sqrt()


class FourierImage(ImageParam):
    """Real-FFT coefficients scaled by 1 / max(f, 1/p)^decay, inverted orthonormally, where p
    is the longest period favoured: `period`, or the image's size where smaller (or unset).

    The orthonormal inverse keeps the image's scale independent of its size, so one learning
    rate fits every size; the 1/f scaling gives low frequencies larger steps (preconditioning).
    Init image: the exact inverse (forward FFT divided by the scale).
    """

    scale: Tensor

    def __init__(
        self, spec: FFTParam, size: tuple[int, int], channels: int, color: Tensor | None
    ) -> None:
        super().__init__(spec, size, channels, color)
        longest = min(max(size), spec.period or max(size))
        scale = radial_frequency(size).clamp(min=1.0 / longest).pow(-spec.decay) * FFT_OUTPUT_SCALE
        self.register_buffer("scale", scale)

    def draw(self, g: torch.Generator) -> Params:
        h, w = self.size
        return {"spectrum": _randn(g, self.depth, h, w // 2 + 1, 2) * self.sd}

    def fit(self, basis: Tensor, image: Tensor) -> Params:
        coeffs = torch.fft.rfft2(basis, norm="ortho") / self.scale
        return {"spectrum": torch.view_as_real(coeffs).contiguous()}

    def generate(self, params: Params, size: tuple[int, int]) -> Tensor:
        _fixed_size(self, size)
        coeffs = torch.view_as_complex(params["spectrum"]) * self.scale
        return torch.fft.irfft2(coeffs, s=size, norm="ortho")


# ----------------------------------------------------------------------------- laplacian, lowres


class LaplacianImage(ImageParam):
    """Learnable Laplacian-pyramid levels L_0 (full size) ... L_K (1/2^K), image
    L_0 + up(L_1 + up(L_2 + ...)) with bilinear upsampling. Adam moves every level at the same
    pace, so coarse structure forms as fast as detail. Init image: its exact pyramid
    (area downsampling, `fvis.filters.pyramid`)."""

    def __init__(
        self, spec: LaplacianParam, size: tuple[int, int], channels: int, color: Tensor | None
    ) -> None:
        super().__init__(spec, size, channels, color)
        self.sizes = filters.level_sizes(self.size, spec.levels)

    def draw(self, g: torch.Generator) -> Params:
        return {f"level{k}": _randn(g, self.depth, *s) * self.sd for k, s in enumerate(self.sizes)}

    def fit(self, basis: Tensor, image: Tensor) -> Params:
        levels = filters.pyramid(basis, len(self.sizes))
        return {f"level{k}": level for k, level in enumerate(levels)}

    def generate(self, params: Params, size: tuple[int, int]) -> Tensor:
        _fixed_size(self, size)
        return filters.collapse([params[f"level{k}"] for k in range(len(self.sizes))])


def interpolation_matrix(n_out: int, n_in: int, mode: str) -> Tensor:
    """The [n_out, n_in] matrix of 1-D bilinear or bicubic upsampling (align_corners=False)."""
    eye = torch.eye(n_in).view(n_in, 1, n_in, 1)
    out = F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=False)
    return out.view(n_in, n_out).T


class LowResImage(ImageParam):
    """Pixels at ceil(size / factor), upsampled bilinearly or bicubically (align_corners=False):
    nothing finer than the factor can appear. Init image: the least-squares fit (the upsampling
    is separable and linear, U = U_y (x) U_x, so P = pinv(U_y) X pinv(U_x)^T)."""

    def __init__(
        self, spec: LowResParam, size: tuple[int, int], channels: int, color: Tensor | None
    ) -> None:
        super().__init__(spec, size, channels, color)
        self.mode = spec.mode
        self.low = (-(-self.size[0] // spec.factor), -(-self.size[1] // spec.factor))

    def draw(self, g: torch.Generator) -> Params:
        return {"pixels": _randn(g, self.depth, *self.low) * self.sd}

    def fit(self, basis: Tensor, image: Tensor) -> Params:
        uy = interpolation_matrix(self.size[0], self.low[0], self.mode).to(basis)
        ux = interpolation_matrix(self.size[1], self.low[1], self.mode).to(basis)
        pixels = torch.einsum(
            "yY,bcYX,xX->bcyx", torch.linalg.pinv(uy), basis, torch.linalg.pinv(ux)
        )
        return {"pixels": pixels}

    def generate(self, params: Params, size: tuple[int, int]) -> Tensor:
        _fixed_size(self, size)
        return filters.upsample(params["pixels"], size, self.mode)


# ----------------------------------------------------------------------------- cppn


def cppn_coordinates(size: tuple[int, int]) -> Tensor:
    """(x, y, r) at every pixel centre [H*W, 3]; the longer side spans [-1, 1], so a larger
    size samples the same pattern more finely."""
    h, w = size
    m = max(h, w)
    y = (torch.arange(h) + 0.5 - h / 2) / (m / 2)
    x = (torch.arange(w) + 0.5 - w / 2) / (m / 2)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy, (xx.square() + yy.square()).sqrt()], -1).view(h * w, 3)


class CPPNImage(ImageParam):
    """A compositional pattern-producing network: (x, y, r) -> `depth` hidden layers of `width`
    units, each z = W h + b followed by the composite activation [atan(z), atan(z)^2]
    (standardized for z ~ N(0, 1); Mordvintsev et al. 2018), then a linear layer to the basis
    channels.

    The image is a function of continuous coordinates, so the same weights render at any size
    (`render_at`, `fvis cppn`). Weights are drawn N(0, 1/fan_in) per item, and are the
    parameters times CPPN_STEP_SCALE (a per-kind learning rate). Init image: fitted by
    CPPN_FIT_STEPS Adam steps on the mean squared pixel error, on the image downscaled to at most
    CPPN_FIT_SIDE px (approximate: a small network cannot hold every detail of a photo; a few
    seconds on a CPU). Init weights file: used as they are.
    """

    def __init__(
        self, spec: CPPNParam, size: tuple[int, int], channels: int, color: Tensor | None
    ) -> None:
        super().__init__(spec, size, channels, color)
        self.width, self.layers = spec.width, spec.depth

    def shapes(self) -> list[tuple[int, int]]:
        """(fan in, fan out) of each linear layer, the output layer last."""
        ins = [3] + [2 * self.width] * self.layers
        return [(ins[i], self.width) for i in range(self.layers)] + [(ins[-1], self.depth)]

    def draw(self, g: torch.Generator) -> Params:
        out: Params = {}
        for i, (fan_in, fan_out) in enumerate(self.shapes()):
            out[f"w{i}"] = _randn(g, fan_in, fan_out) / (math.sqrt(fan_in) * CPPN_STEP_SCALE)
            out[f"b{i}"] = _randn(g, 1, fan_out) * (0.1 / CPPN_STEP_SCALE)
        return out

    def fit(self, basis: Tensor, image: Tensor) -> Params:
        shrink = min(1.0, CPPN_FIT_SIDE / max(self.size))
        size = (max(1, round(self.size[0] * shrink)), max(1, round(self.size[1] * shrink)))
        image = F.interpolate(image, size=size, mode="area") if size != self.size else image
        params = {k: v.to(image).requires_grad_() for k, v in self.draw(_fit_stream()).items()}
        adam = torch.optim.Adam(params.values(), lr=CPPN_FIT_LR / CPPN_STEP_SCALE)
        with torch.enable_grad():
            for _ in range(CPPN_FIT_STEPS):
                loss = (self.finish(self.generate(params, size)) - image).square().mean()
                adam.zero_grad()
                loss.backward()
                adam.step()
        return {k: v.detach() for k, v in params.items()}

    def generate(self, params: Params, size: tuple[int, int]) -> Tensor:
        w = {k: v * CPPN_STEP_SCALE for k, v in params.items()}
        n = w["w0"].shape[0]
        h = cppn_coordinates(size).to(w["w0"]).expand(n, -1, -1)
        last = len(self.shapes()) - 1
        for i in range(last):
            a = torch.atan(torch.baddbmm(w[f"b{i}"], h, w[f"w{i}"]))
            h = torch.cat([a / ATAN_SD, (a.square() - ATAN_SQ_MEAN) / ATAN_SQ_SD], -1)
        out = torch.baddbmm(w[f"b{last}"], h, w[f"w{last}"])
        return out.transpose(1, 2).reshape(n, self.depth, *size)

    def render_at(self, size: tuple[int, int]) -> Tensor:
        """The current images at another size, from the same weights."""
        with torch.no_grad():
            return self.finish(self.generate(self.params(), size))

    def weights(self) -> Params:
        """Each item's effective weights (the mixed parameters times CPPN_STEP_SCALE)."""
        return {k: v.detach() * CPPN_STEP_SCALE for k, v in self.params().items()}

    def save(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Tensors and metadata of a cppn.safetensors: each item's weights, the colour matrix,
        and what is needed to rebuild the network (`load_cppn`)."""
        tensors = {k: v.float().cpu().contiguous() for k, v in self.weights().items()}
        if self.color is not None:
            tensors["color"] = self.color.detach().float().cpu().contiguous()
        meta = {
            "format": CPPN_FORMAT,
            "width": str(self.width),
            "depth": str(self.layers),
            "channels": str(self.channels),
            "alpha": str(int(self.alpha)),
            "squash": self.squash,
            "size": f"{self.size[0]}x{self.size[1]}",
        }
        return tensors, meta


def _fit_stream() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def load_cppn(path: Path, size: tuple[int, int] | None = None) -> CPPNImage:
    """The CPPN a run saved in cppn.safetensors, rendering at `size` (default its own)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iteration)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    if meta.get("format") != CPPN_FORMAT:
        raise ValueError(f"{path}: not a cppn.safetensors written by fvis")
    spec = CPPNParam(
        kind="cppn",
        width=int(meta["width"]),
        depth=int(meta["depth"]),
        alpha=bool(int(meta["alpha"])),
        squash=meta["squash"],  # type: ignore[arg-type]
    )
    own_size = tuple(int(v) for v in meta["size"].split("x"))
    color = tensors.pop("color", None)
    param = CPPNImage(spec, size or own_size, int(meta["channels"]), color)  # type: ignore[arg-type]
    params = {k: v / CPPN_STEP_SCALE for k, v in tensors.items()}
    param.initialize([torch.Generator()] * tensors["w0"].shape[0], params)
    return param


def _cppn_weights(param: CPPNImage, path: Path, batch: int) -> Params:
    """Weights from a cppn.safetensors for `param`, checked against its spec and batch."""
    saved = load_cppn(path)
    mismatch = [
        name
        for name in ("width", "layers", "channels", "alpha", "squash")
        if getattr(saved, name) != getattr(param, name)
    ]
    if mismatch:
        raise ValueError(
            f"{path}: the saved CPPN differs from param in {', '.join(mismatch)} "
            f"(saved: width {saved.width}, depth {saved.layers}, channels {saved.channels}, "
            f"alpha {saved.alpha}, squash {saved.squash})"
        )
    params = {k: v.detach() for k, v in saved.params().items()}
    n = params["w0"].shape[0]
    if n not in (1, batch):
        raise ValueError(f"{path}: holds {n} images; param.batch must be 1 or {n}, not {batch}")
    return params


# ----------------------------------------------------------------------------- maco


def self_conjugate(size: tuple[int, int]) -> Tensor:
    """Mask [H, W//2+1] of the real-FFT bins equal to their own conjugate (the DC and, for even
    sides, the Nyquist corners): their phase can only be 0 or pi."""
    h, w = size
    mask = torch.zeros(h, w // 2 + 1, dtype=torch.bool)
    for ky in {0, h // 2} if h % 2 == 0 else {0}:
        for kx in {0, w // 2} if w % 2 == 0 else {0}:
            mask[ky, kx] = True
    return mask


def energy_std(magnitude: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-pixel standard deviation of the image a half-spectrum magnitude [..., H, W//2+1]
    gives (orthonormal FFT, Parseval): sqrt(sum_k w_k M_k^2 / (H W)), w_k = 2 for bins that
    stand for a conjugate pair, 1 for columns 0 and W/2."""
    h, w = size
    weight = torch.full((w // 2 + 1,), 2.0, dtype=magnitude.dtype, device=magnitude.device)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    return (magnitude.square() * weight).sum((-2, -1)).div(h * w).sqrt()


def power_law(size: tuple[int, int], decay: float, contrast: float) -> Tensor:
    """Magnitude 1 / max(f, 1/max(H, W))^decay [H, W//2+1], scaled to a per-pixel standard
    deviation of `contrast`, self-conjugate bins at 0."""
    m = radial_frequency(size).clamp(min=1.0 / max(size)).pow(-decay)
    m = m.masked_fill(self_conjugate(size), 0.0)
    return m * (contrast / energy_std(m, size))


class MacoImage(ImageParam):
    """Magnitude-constrained optimization: basis = irfft2(M exp(i phi)) + mean, M fixed.

    Only the phase phi (and the per-channel mean, which the DC bin would otherwise pin) is
    learned: the image keeps the template's spectrum, so it cannot drift into high-frequency
    noise. The phase is made conjugate-symmetric on columns 0 and W/2 (phi(-ky) = -phi(ky)), so
    the image is real and its spectrum's magnitude is exactly M. Template (`spectrum_template`):
    a `fvis spectrum` file, the init image's own magnitude, or 1/f^decay. Random init: uniform
    phases from each item's stream. Init image: its phase and mean (exact with its own
    magnitude, except at the 2-3 Nyquist bins where M is 0).
    """

    template: Tensor
    flip: Tensor
    symmetric: Tensor

    def __init__(
        self,
        spec: MacoParam,
        size: tuple[int, int],
        channels: int,
        color: Tensor | None,
        template: Tensor,
        fixed: bool,
    ) -> None:
        super().__init__(spec, size, channels, color)
        self.fixed_template = fixed
        self.decay, self.contrast = spec.decay, spec.contrast
        self.register_buffer("template", template)
        h, w = self.size
        self.register_buffer("flip", (-torch.arange(h)) % h)
        columns = torch.zeros(w // 2 + 1, dtype=torch.bool)
        columns[0] = True
        if w % 2 == 0:
            columns[-1] = True
        self.register_buffer("symmetric", columns)

    def draw(self, g: torch.Generator) -> Params:
        h, w = self.size
        phase = (torch.rand(1, self.depth, h, w // 2 + 1, generator=g) * 2 - 1) * math.pi
        return {"phase": phase, "mean": torch.zeros(1, self.depth, 1, 1)}

    def fit(self, basis: Tensor, image: Tensor) -> Params:
        mean = basis.mean((2, 3), keepdim=True)
        spectrum = torch.fft.rfft2(basis - mean, norm="ortho")
        if not self.fixed_template:
            magnitude = spectrum[0].abs().masked_fill(self_conjugate(self.size).to(basis.device), 0)
            if self.alpha:  # the init's alpha is flat: keep the power law for it
                magnitude[-1] = self.template[-1]
            self.template.copy_(magnitude)
        return {"phase": spectrum.angle(), "mean": mean}

    def phase(self, raw: Tensor) -> Tensor:
        """phi with phi(-ky) = -phi(ky) on the columns that hold conjugate pairs."""
        return torch.where(self.symmetric, (raw - raw[..., self.flip, :]) / 2, raw)

    def generate(self, params: Params, size: tuple[int, int]) -> Tensor:
        _fixed_size(self, size)
        phase = self.phase(params["phase"])
        coeffs = torch.polar(self.template.expand_as(phase), phase)
        return torch.fft.irfft2(coeffs, s=size, norm="ortho") + params["mean"]


def spectrum_template(
    spec: MacoParam,
    size: tuple[int, int],
    channels: int,
    color: Tensor | None,
    base: Path,
) -> tuple[Tensor, bool]:
    """The magnitude template [D, H, W//2+1] and whether it is fixed (not the init's own)."""
    depth = channels + int(spec.alpha)
    law = power_law(size, spec.decay, spec.contrast)
    template = law.expand(depth, -1, -1).clone()
    if spec.spectrum is None:
        return template, spec.init is None
    path = resolve(base, spec.spectrum)
    try:
        magnitude = basis_magnitude(path, size, channels, color)
    except (OSError, ValueError) as exc:
        raise SpecError(("param", "spectrum"), str(exc)) from None
    magnitude = magnitude.masked_fill(self_conjugate(size), 0.0)
    rms = energy_std(magnitude, size).square().mean().sqrt()
    template[:channels] = magnitude * (spec.contrast / rms)
    return template, True


# ----------------------------------------------------------------------------- building


def build_param(
    spec: Param,
    size: tuple[int, int],
    channels: int,
    color_sqrt: ColorRoot | None,
    streams: Sequence[torch.Generator],
    *,
    base: Path | None = None,
    preconditioning: Preconditioning | None = None,
    transparency: bool = False,
) -> ImageParam:
    """The parameterization a spec names, initialized, with its gradient hooks.

    Decorrelation applies to 3-channel images only, with `color_sqrt` (the root of the colour
    covariance: the model's, or `decorrelate`'s file's, read by the caller) or ImageNet's where
    None. `base` is the folder relative `init` and `spectrum` paths start from;
    `preconditioning` filters the image gradient; `transparency` accumulates the absolute image
    gradient for transparency maps.
    """
    base = base or Path()
    root = IMAGENET_COLOR_SQRT if color_sqrt is None else color_sqrt
    color = None if spec.decorrelate is False else color_matrix(root)
    if color is not None and channels != 3:
        raise ValueError(f"decorrelate needs 3 channels, the image has {channels}")
    param: ImageParam
    if isinstance(spec, MacoParam):
        template, fixed = spectrum_template(spec, size, channels, color, base)
        param = MacoImage(spec, size, channels, color, template, fixed)
    else:
        kinds: dict[type, type[ImageParam]] = {
            PixelParam: PixelImage,
            FFTParam: FourierImage,
            LaplacianParam: LaplacianImage,
            LowResParam: LowResImage,
            CPPNParam: CPPNImage,
        }
        param = kinds[type(spec)](spec, size, channels, color)  # type: ignore[call-arg]
    param.initialize(streams, _init(spec, param, base, len(streams)))
    if transparency:
        param.track_importance()
    add_gradient_hooks(param, preconditioning)
    return param


def _init(spec: Param, param: ImageParam, base: Path, batch: int) -> Tensor | Params | None:
    """The init image [1, C, H, W] in [0, 1] (resized to the param's size), CPPN weights, or
    None for a random init."""
    if spec.init is None:
        return None
    path = resolve(base, spec.init)
    if not path.is_file():
        raise SpecError(("param", "init"), f"{path}: no such file")
    if path.suffix == ".safetensors":
        if not isinstance(param, CPPNImage):
            raise SpecError(
                ("param", "init"), "weights (.safetensors) initialize kind cppn only; give an image"
            )
        try:
            return _cppn_weights(param, path, batch)
        except (OSError, ValueError, KeyError) as exc:
            raise SpecError(("param", "init"), str(exc)) from None
    try:
        return read_image(path, "L" if param.channels == 1 else "RGB", param.size)[None]
    except UserError as exc:
        raise SpecError(("param", "init"), str(exc)) from None


def add_gradient_hooks(param: ImageParam, preconditioning: Preconditioning | None) -> None:
    """Hooks on the image gradient, run in order after the importance map (which records the
    raw gradient): gradient blurring, then pyramid normalization.

    Preconditioning changes the direction of descent without changing the loss: Adam then
    steps along the smoothed (or band-balanced) gradient.
    """
    if preconditioning is None:
        return
    if preconditioning.grad_blur > 0:
        sigma = preconditioning.grad_blur
        param.gradient_hooks.append(lambda grad: filters.gaussian_blur(grad, sigma))
    if preconditioning.grad_pyramid > 0:
        levels = preconditioning.grad_pyramid
        param.gradient_hooks.append(lambda grad: filters.normalize_levels(grad, levels))
