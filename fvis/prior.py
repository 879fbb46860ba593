"""Learned priors, the fourth cure Olah et al. 2017 list for high-frequency noise: a model of the
data's images, and the regularizer it gives a render.

The model is a small denoiser D of a data source's images (DnCNN's residual form, Zhang et al.
2017: a stack of 3x3 convolutions predicts the noise, D(x) = x - predicted noise), trained on
random crops with Gaussian noise of a standard deviation drawn from SIGMAS. Blind to the noise
level and fully convolutional, it denoises an image of any size.

The regularizer (objective kind `prior`) is regularization by denoising (RED, Romano, Elad and
Milanfar 2017): E(x) = 1/2 x . (x - D(x)), whose gradient, for a denoiser locally homogeneous
with a symmetric Jacobian, is x - D(x): every step moves the image toward its denoised self.
fvis computes 1/2 ||x - sg(D(x))||^2 per item (sg: no gradient through D), which has exactly
that gradient and costs one forward of D a step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from fvis import zoo
from fvis.data import Images
from fvis.errors import Interrupted, SpecError, UserError, YamlPath
from fvis.hooks import IMAGE
from fvis.io import resolve, tensors_bytes, write_atomic
from fvis.objectives.algebra import Leaf, TermError, label

if TYPE_CHECKING:
    from fvis.objectives.compile import Context

FORMAT = "fvis-prior-1"
SIGMAS = (0.02, 0.25)
"""The range of the noise's standard deviation (images in [0, 1]) a denoiser is trained on."""
THREADS = 2
"""Threads a training runs on, whatever the machine: the same seed gives the same weights."""
LAYOUT = torch.channels_last
"""The denoiser's memory format, in training and in renders: its convolutions run about three
times faster on a CPU than in the default layout."""
CROPS_PER_IMAGE = 4
"""Crops a training takes from each image it reads."""
CHECKPOINT_EVERY = 30.0
"""Seconds between two checkpoints of a training (and one when it is interrupted)."""


class Denoiser(nn.Module):
    """D(x) = x - body(x): `depth` 3x3 convolutions of `width` channels (ReLU between) predict
    the noise of an image of `channels` channels in [0, 1]."""

    def __init__(self, channels: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.channels, self.width, self.depth = channels, width, depth

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)


@dataclass(frozen=True)
class Settings:
    """A training: `steps` of Adam (`lr`, cosine decay) on `batch` random `crop` x `crop` crops
    of the source's images fitted to `size` px, from `seed`; the denoiser's shape."""

    steps: int = 1500
    batch: int = 32
    crop: int = 32
    size: int = 64
    lr: float = 2e-3
    seed: int = 0
    width: int = 16
    depth: int = 4


@dataclass(frozen=True)
class Trained:
    """What `train` wrote: the file, the final loss (mean over its last 100 steps), the
    denoised error against the noisy input's on held-out crops (PSNR gain, dB), seconds."""

    path: Path
    loss: float
    gain_db: float
    seconds: float


Progress = Callable[[int, int, float], None]
"""(steps done, steps in all, the last step's loss)."""


def train(
    images: Images,
    settings: Settings,
    out: Path,
    resume: bool = False,
    progress: Progress | None = None,
    described: dict[str, Any] | None = None,
) -> Trained:
    """Train a denoiser on `images` and write it to `out` (canonical safetensors, with the
    settings and `described` in its metadata). A checkpoint beside `out` is kept every
    CHECKPOINT_EVERY seconds and on Ctrl-C; with `resume` the training goes on from it and ends
    in the weights an uninterrupted one reaches."""
    start = time.perf_counter()
    checkpoint = partial_path(out)
    identity = {"settings": asdict(settings), "data": described or {}}
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        state = _resume(checkpoint, identity) if resume else None
        model, losses = _fit(images, settings, state, checkpoint, identity, progress)
        gain = _gain(model, images, settings)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
    loss = sum(losses[-100:]) / max(1, len(losses[-100:]))
    metadata = {
        "format": FORMAT,
        "settings": json.dumps(asdict(settings)),
        "sigmas": json.dumps(list(SIGMAS)),
        "loss": f"{loss:.6g}",
        "gain_db": f"{gain:.3f}",
        **{key: json.dumps(value) for key, value in (described or {}).items()},
    }
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomic(out, tensors_bytes(state_dict, metadata))
    checkpoint.unlink(missing_ok=True)
    return Trained(out, loss, gain, time.perf_counter() - start)


def partial_path(out: Path) -> Path:
    """The checkpoint of a training into `out`: a hidden file beside it."""
    return out.with_name(f".{out.name}.partial")


def _fit(
    images: Images,
    settings: Settings,
    state: dict[str, Any] | None,
    checkpoint: Path,
    identity: dict[str, Any],
    progress: Progress | None,
) -> tuple[Denoiser, list[float]]:
    """Adam on the mean squared error of D(noisy crop) against the crop."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = Denoiser(images.channels, settings.width, settings.depth)
    model = model.to(memory_format=LAYOUT)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    step, losses = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, losses = int(state["step"]), list(state["losses"])
    saved = time.monotonic()
    model.train()
    try:
        while step < settings.steps:
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
            clean = crops(images, settings, generator).contiguous(memory_format=LAYOUT)
            sigma = torch.empty(len(clean), 1, 1, 1).uniform_(*SIGMAS, generator=generator)
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
            loss = F.mse_loss(model(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, losses = step + 1, [*losses[-99:], loss.item()]
            if progress:
                progress(step, settings.steps, losses[-1])
            if time.monotonic() - saved > CHECKPOINT_EVERY:
                _save(checkpoint, identity, model, optimizer, generator, step, losses)
                saved = time.monotonic()
    except KeyboardInterrupt:
        _save(checkpoint, identity, model, optimizer, generator, step, losses)
        raise Interrupted(
            f"interrupted at step {step} of {settings.steps}; kept in {checkpoint}: run the "
            "same command with --resume to go on"
        ) from None
    model.eval()
    return model, losses


def crops(images: Images, settings: Settings, generator: torch.Generator) -> Tensor:
    """`batch` random crops [B, C, crop, crop] of random images of the source, CROPS_PER_IMAGE
    from each image read (reading, or generating, an image costs more than a step spends on
    it); an image that cannot be read is replaced by another draw."""
    picked: list[Tensor] = []
    failures = 0
    while len(picked) < settings.batch:
        index = int(torch.randint(len(images), (1,), generator=generator))
        try:
            image = images.read(index)
        except UserError:
            failures += 1
            if failures > 10 * settings.batch:
                raise UserError("the data source's images cannot be read") from None
            continue
        h, w = image.shape[-2:]
        for _ in range(min(CROPS_PER_IMAGE, settings.batch - len(picked))):
            top = int(torch.randint(h - settings.crop + 1, (1,), generator=generator))
            left = int(torch.randint(w - settings.crop + 1, (1,), generator=generator))
            picked.append(image[:, top : top + settings.crop, left : left + settings.crop])
    return torch.stack(picked)


@torch.no_grad()
def _gain(model: Denoiser, images: Images, settings: Settings) -> float:
    """PSNR gain (dB) of the denoised crops over the noisy ones, on 256 crops drawn from
    another seed with noise at the middle of SIGMAS."""
    generator = torch.Generator().manual_seed(settings.seed + 1_000_003)
    held = Settings(**{**asdict(settings), "batch": 256})
    clean = crops(images, held, generator)
    noisy = clean + sum(SIGMAS) / 2 * torch.randn(clean.shape, generator=generator)
    before = F.mse_loss(noisy, clean).item()
    after = F.mse_loss(model(noisy).clamp(0, 1), clean).item()
    return 10 * math.log10(before / max(after, 1e-12))


def _save(
    path: Path,
    identity: dict[str, Any],
    model: Denoiser,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    losses: list[float],
) -> None:
    import io  # lazy: only checkpoints need it

    buffer = io.BytesIO()
    torch.save(
        {
            "identity": json.dumps(identity, sort_keys=True),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "step": step,
            "losses": losses,
        },
        buffer,
    )
    write_atomic(path, buffer.getvalue())


def _resume(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """A training's checkpoint (loaded without running code), refused for other settings."""
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint to resume from (run without --resume)")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # any unreadable file is the user's to fix
        raise UserError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("identity") != json.dumps(identity, sort_keys=True):
        raise UserError(
            f"{path}: made by a training with other settings or data; rerun without --resume"
        )
    return state


# ----------------------------------------------------------------------------- reading one


def load(path: Path) -> Denoiser:
    """The denoiser a prior file holds, frozen, in eval mode; UserError naming the file when it
    is not one."""
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: not a readable prior ({exc})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an fvis prior (train one with `fvis prior train`)")
    try:
        settings = json.loads(meta["settings"])
        channels = state["body.0.weight"].shape[1]
        model = Denoiser(channels, settings["width"], settings["depth"])
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: its weights do not fit its settings ({exc})") from None
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def locate(file: str, base: Path, loc: YamlPath) -> Denoiser:
    """The denoiser of a `prior` node's `file`: zoo:NAME (the one a built-in model ships with)
    or a path from `base`; every problem a SpecError at `loc`."""
    if file.startswith("zoo:"):
        try:
            path = zoo.prior_file(file.removeprefix("zoo:"))
        except ValueError as exc:
            raise SpecError(loc, str(exc)) from None
    else:
        path = resolve(base, Path(file))
        if not path.is_file():
            raise SpecError(loc, f"no such file: {path}")
    try:
        return load(path)
    except UserError as exc:
        raise SpecError(loc, str(exc)) from None


@dataclass(eq=False)
class DenoiserPrior(Leaf):
    """Regularization by denoising: 1/2 ||x - sg(D(x))||^2 per item of the image `x`, whose
    gradient is x - D(x) (see the module's docstring); a penalty."""

    denoiser: Denoiser
    file: str = "zoo:shapes"
    layer: str = IMAGE

    def __post_init__(self) -> None:
        self.name = label("prior", repr(self.file))

    @classmethod
    def from_node(cls, node: Any, loc: YamlPath, ctx: Context) -> DenoiserPrior:
        denoiser = locate(node.file, ctx.base, (*loc, "file"))
        return cls(denoiser, node.file, ctx.layer(loc))

    def check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        shape = shapes[self.layer]
        if len(shape) != 4 or shape[1] != self.denoiser.channels:
            raise TermError(
                "layer",
                f"the prior denoises [B, {self.denoiser.channels}, H, W] images, got {list(shape)}",
            )

    def value(self, x: Tensor) -> Tensor:
        denoiser = self.denoiser.to(x.device, x.dtype).to(memory_format=LAYOUT)
        with torch.no_grad():
            denoised = denoiser(x.contiguous(memory_format=LAYOUT))
        return 0.5 * (x - denoised).square().flatten(1).sum(1)
