"""The quality of fvis's pictures against torch-lucent's, each tool with its own defaults, on the
built-in ShapesNet: is fvis's speed paid for in picture quality?

Both tools render every class logit of `shapes` (`logits`, 10 items) and 16 channels each of
`conv3` and `conv4`, at 64 and 224 px, at several step counts (each step count its own run from
the first step, never a snapshot of a longer one), from three seeds.

* fvis renders through its own API as its commands do, so that a default changed in fvis
  (parameterization, transforms, learning rate) is measured without touching this script: the
  classes as `fvis render configs/classes.yaml` (one batch of 10 items, item k maximizing class
  k), the channels as `fvis sweep configs/objectives/channel.yaml --set objective.layer=conv3
  --over objective.channel=0:16` (batched as the sweep batches them), with only `optim.steps`,
  `param.size` and `seed` set (and `optim.thresholds` to the last step: no snapshot between,
  which changes no pixel). `--variant 'param.period=32'` adds rows of fvis with those sets
  after them (a tool named `fvis param.period=32`): a trade-off study in the same run. A file
  in a variant is named from the repository root (`param.decorrelate=benchmarks/...`).
* lucent renders with `render_vis` and its defaults: `param.image(size, batch=N)` (FFT,
  decorrelated colour), `transform.standard_transforms`, Adam at 0.05, one batch whose item k
  maximizes `objectives.channel(layer, k-th target, batch=k)`; the network is wrapped with
  ShapesNet's dataset normalization (`preprocess=False`: lucent's own would apply ImageNet's).
  `render_vis` resizes an image under 224 px to 224 px before the network (a habit of ImageNet
  models); `fixed_image_size=0` turns that off, so that the network sees both tools' images at
  their own scale, as lucent does at 224 px (`--lucent-upsample` keeps lucent's resize).
  `torch.manual_seed` and `numpy.random.seed` (its transforms draw from numpy) take the seed.

Measured on each final image, clean (no transforms), averaged over the items and the seeds:
the objective through the same network (the intended logit, or the intended channel's mean
activation), the high-frequency share (`fvis.zoo.quality.high_frequency_share`: power above
1/3 cycle per pixel of the grey image), the mean HSV saturation, the share of pixels one
channel dominates (`fvis.zoo.quality.colour_dominance`, summed over the three channels), on
the class renders the dominance of the intended channel on the red, green and blue classes,
the share whose class signature `fvis.zoo.quality.recover_class` recovers, and the transfer to
an independently trained ShapesNet (`tests/assets/shapes-seed1.safetensors`, `fvis zoo train
--seed 1`): its top-1 accuracy and mean probability of the intended class; across the seeds,
the diversity (mean pairwise 1 - SSIM of one target's renders, `fvis.compare.ssim`); and the
wall time of each render, in a process of its own. The share of clipped values (0 or 255 in a
PNG) is shown beside them, not compared: it explains a loss of diversity. Per size, a
scorecard picture (STEM-SIZE-score.png) colours each fvis row's measures green or red against
lucent's longest render: a trade-off between variants reads at a glance.

    python benchmarks/quality.py          # the full run: writes benchmarks/quality.md
    python benchmarks/quality.py --quick  # 64 px, the classes, fvis 128 and 256 steps against
                                          # lucent 512, one seed: 3 min on 2 busy CPU cores

The full run renders fvis at 64, 128, 192 and 256 steps (256 is its default) and lucent at its
standard 512 (`--lucent-steps 64 128 256 512` adds lucent's own curve, more than doubling the
time, most of it at 224 px): 2 sizes x 3 target sets x 5 renders x 3 seeds, 90 renders; its
time is in the report's header (over an hour on 2 CPU cores, most of it lucent's 224 px
renders, 170-305 s each on an AMD EPYC). `--sizes`, `--steps`, `--targets` and `--seeds`
restrict it. Other processes on the machine lengthen every time: the report gives the load
average at the start and at the end. Each finished render is kept in `outputs/quality-cache`
(`--cache`, `--no-cache`), so a run stopped part-way resumes when the same command runs again,
on the same kind of machine with the same code (`RenderCache`), and lucent's renders, which
depend on the built-in model alone, are kept when fvis changes: a run after tuning fvis
renders fvis only. The report says how many renders it took from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import inspect
import io
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from bench import machine  # the machine line every benchmark report opens with
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file
from torch import Tensor, nn

from fvis import zoo
from fvis.compare import ssim
from fvis.curves import private_matplotlib
from fvis.io import png_bytes, to_pil, write_atomic
from fvis.zoo.net import ShapesNet
from fvis.zoo.quality import colour_dominance, high_frequency_share, recover_class

if TYPE_CHECKING:
    from fvis.render import Result

ROOT = Path(__file__).resolve().parent.parent
CLASSES_CONFIG = ROOT / "configs" / "classes.yaml"
CHANNEL_CONFIG = ROOT / "configs" / "objectives" / "channel.yaml"
TRANSFER = ROOT / "tests" / "assets" / "shapes-seed1.safetensors"
SHAPES = zoo.MODELS["shapes"]
CHANNELS = 16
# target set: (layer, items rendered: class or channel indices)
TARGETS: dict[str, tuple[str, tuple[int, ...]]] = {
    "classes": ("logits", tuple(range(len(SHAPES.classes)))),
    "conv3": ("conv3", tuple(range(CHANNELS))),
    "conv4": ("conv4", tuple(range(CHANNELS))),
}
COLOURS = ("red", "green", "blue")
SIZES = (64, 224)
# fvis up to its default 256 steps; lucent at its standard 512 only, the reference every fvis
# row is held to (lucent at 64-512 steps as well would more than double the run's time, most
# of it at 224 px: `--lucent-steps 64 128 256 512` when its curve is wanted).
STEPS = (64, 128, 192, 256)
LUCENT_STEPS = (512,)
SEEDS = (0, 1, 2)
QUICK: dict[str, tuple[Any, ...]] = {
    "sizes": (64,),
    "targets": ("classes",),
    "steps": (128, 256),
}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# The table's measures: key, heading, format, True where higher is better (None: not quality).
MEASURES: tuple[tuple[str, str, str, bool | None], ...] = (
    ("objective", "objective", "{:.2f}", True),
    ("high_frequency", "HF share", "{:.4f}", False),
    ("saturation", "saturation", "{:.3f}", True),
    ("dominated", "dominated", "{:.3f}", True),
    ("clipped", "clipped", "{:.3f}", None),
    *((c, f"{c} on {c}", "{:.3f}", True) for c in COLOURS),
    ("recovered", "recovered", "{:.2f}", True),
    ("top1", "transfer top-1", "{:.2f}", True),
    ("probability", "transfer p", "{:.3f}", True),
    ("diversity", "diversity", "{:.3f}", True),
    ("seconds", "seconds", "{:.1f}", None),
)
Row = dict[str, Any]
TIME_BAR = 1 / 3  # fvis's aim: at most a third of lucent's time for pictures as good
SCORE_SPAN = 0.1  # a scorecard cell 10% (or more) ahead or behind is full green or red
LABEL_VALUE = 12  # the longest value a picture column's heading shows whole


# ----------------------------------------------------------------------------- the networks


class Normalized(ShapesNet):
    """ShapesNet taking images in [0, 1]: the dataset normalization first, then the network
    (its layer names stay top-level: `conv3`, `logits`, as lucent's hooks name them)."""

    mean: Tensor
    std: Tensor

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__()
        self.load_state_dict(state)
        self.register_buffer("mean", torch.tensor(SHAPES.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(SHAPES.std).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward((x - self.mean) / self.std)


def shapes_network() -> Normalized:
    """The shipped `shapes` model (sha256-checked), normalized."""
    return Normalized(zoo.load("shapes").state_dict())


def transfer_network(path: Path = TRANSFER) -> Normalized:
    """An independently trained ShapesNet (`fvis zoo train --seed N`), normalized."""
    return Normalized(load_file(str(path)))


# ----------------------------------------------------------------------------- the renders


def fvis_render(
    target: str,
    size: int,
    steps: int,
    seed: int,
    items: Sequence[int] | None = None,
    variant: Sequence[str] = (),
) -> tuple[Tensor, float]:
    """fvis's final images [N, 3, H, W] of `target`'s items, rendered as `fvis render
    configs/classes.yaml` (classes) or `fvis sweep configs/objectives/channel.yaml` (channels)
    render them with only steps, size and seed set (and a variant's `--set`s after them), and
    the wall seconds of building the plans and running them."""
    from fvis.build import build_plan
    from fvis.config import load_config
    from fvis.render import Renderer

    layer, indices = _items(target, items)
    sets = [
        f"optim.steps={steps}",
        f"optim.thresholds=[{steps}]",
        f"param.size={size}",
        f"seed={seed}",
        *rooted(variant),
    ]
    start = time.perf_counter()
    if target == "classes":
        if list(indices) != list(TARGETS["classes"][1]):
            sets += _class_subset(indices)
        config = load_config(CLASSES_CONFIG, sets).config
        results = [Renderer(build_plan(config, CLASSES_CONFIG.parent)).run()]
    else:
        sets.append(f"objective.layer={layer}")
        over = [f"objective.channel={','.join(map(str, indices))}"]
        results = sweep_render(CHANNEL_CONFIG, sets, over)
    _sync()
    seconds = time.perf_counter() - start
    return final_images(results, f"fvis {target} {size} px {steps} steps"), seconds


def sweep_render(config: Path, sets: Sequence[str], over: Sequence[str]) -> list[Result]:
    """The results of `fvis sweep CONFIG --set ... --over ...`, batched as the sweep batches."""
    from fvis import sweep
    from fvis.build import build_plan
    from fvis.render import Renderer

    found = sweep.expand(config, list(sets), list(over))
    batch = sweep.default_batch(found[0], config.parent)
    return [
        Renderer(build_plan(part[0].config, config.parent, part)).run()
        for part in sweep.groups(found, batch)
    ]


def final_images(results: Sequence[Result], what: str) -> Tensor:
    """The final images of `results` [N, 3, H, W] on the CPU; a failed render raises."""
    for result in results:
        if result.failure:
            raise RuntimeError(f"{what}: {result.failure}")
    return torch.cat([r.final.images for r in results]).float().cpu()


def _class_subset(indices: Sequence[int]) -> list[str]:
    """`--set`s rendering only the classes `indices` of configs/classes.yaml, one per item."""
    terms = yaml.safe_load(CLASSES_CONFIG.read_text())["objective"]["terms"]
    by_class = {term["index"]: term for term in terms}
    chosen = [{**by_class[c], "batch": k} for k, c in enumerate(indices)]
    return [f"objective.terms={json.dumps(chosen)}", f"param.batch={len(indices)}"]


def lucent_render(
    target: str,
    size: int,
    steps: int,
    seed: int,
    items: Sequence[int] | None = None,
    upsample: bool = False,
) -> tuple[Tensor, float]:
    """lucent's final images [N, 3, H, W] of `target`'s items, one batch, with lucent's
    defaults, and the wall seconds of building the network and running `render_vis`."""
    layer, indices = _items(target, items)
    state = zoo.load("shapes").state_dict()
    start = time.perf_counter()
    # A fresh network each time: lucent hooks every module of the model it renders and never
    # removes the hooks.
    model = Normalized(state).to(DEVICE)
    # fixed_image_size 0: no resize (render_vis tests `if new_size`)
    images = lucent_channels(model, layer, indices, size, steps, seed, None if upsample else 0)
    _sync()
    return images, time.perf_counter() - start


def lucent_channels(
    model: nn.Module,
    layer: str,
    indices: Sequence[int],
    size: int,
    steps: int,
    seed: int,
    fixed_image_size: int | None = None,
) -> Tensor:
    """lucent's `render_vis` with its defaults (`param.image`, `standard_transforms`, no
    preprocessing: `model` takes images in [0, 1]), item k maximizing channel `indices[k]` of
    `layer` (lucent's name for the module); the final images [N, 3, H, W]. `torch` and `numpy`
    (lucent's transforms draw from it) are seeded with `seed`."""
    import numpy as np
    from lucent.optvis import objectives, param, render, transform

    objective = objectives.Objective.sum(
        [objectives.channel(layer, index, batch=k) for k, index in enumerate(indices)]
    )
    torch.manual_seed(seed)
    np.random.seed(seed)
    images = render.render_vis(
        model,
        objective,
        param_f=lambda: param.image(size, batch=len(indices)),
        transforms=transform.standard_transforms,
        thresholds=(steps,),
        preprocess=False,
        progress=False,
        show_image=False,
        fixed_image_size=fixed_image_size,
    )
    return torch.from_numpy(images[-1]).permute(0, 3, 1, 2).float().contiguous()


def variant_tool(sets: str) -> str:
    """The tool name of fvis with `sets` (`KEY=VALUE;KEY=VALUE`, as `--set` takes them)."""
    return f"fvis {sets}"


def is_fvis(tool: str) -> bool:
    return tool == "fvis" or tool.startswith("fvis ")


def variant_sets(tool: str) -> list[str]:
    """The `--set`s of an fvis tool name (none for plain `fvis`, or lucent)."""
    if not is_fvis(tool):
        return []
    return [s for s in tool.removeprefix("fvis").strip().split(";") if s]


def rooted(sets: Sequence[str]) -> list[str]:
    """`sets` with each value that names a file relative to the repository root made absolute:
    `--set` reads paths relative to the config's folder, which differs between the two configs
    rendered (configs/, configs/objectives/), so a variant names files from the root."""
    out = []
    for s in sets:
        key, _, value = s.partition("=")
        path = ROOT / value
        out.append(f"{key}={path}" if value and path.is_file() else s)
    return out


def _items(target: str, items: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
    """The layer of `target` and the class or channel indices rendered (default all)."""
    layer, indices = TARGETS[target]
    return layer, tuple(indices if items is None else items)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def render(
    tool: str,
    target: str,
    size: int,
    steps: int,
    seed: int,
    items: Sequence[int] | None = None,
    upsample: bool = False,
) -> tuple[Tensor, float]:
    """One tool's render of one target set, in this process; `fvis SET;SET`: fvis with those
    `--set`s (a variant of its defaults)."""
    if is_fvis(tool):
        return fvis_render(target, size, steps, seed, items, variant_sets(tool))
    return lucent_render(target, size, steps, seed, items, upsample)


def render_alone(
    tool: str,
    target: str,
    size: int,
    steps: int,
    seed: int,
    items: Sequence[int] | None = None,
    upsample: bool = False,
) -> tuple[Tensor, float]:
    """`render(...)` in a fresh process, so that its time is its own."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "images.pt"
        spec = {
            "tool": tool,
            "target": target,
            "size": size,
            "steps": steps,
            "seed": seed,
            "items": None if items is None else list(items),
            "upsample": upsample,
            "out": str(out),
        }
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            what = f"{tool} {target} {size} px {steps} steps seed {seed}"
            raise SystemExit(f"{what} failed:\n{done.stderr.strip()[-2000:]}")
        seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        return torch.load(out, weights_only=True), seconds


def _one(spec: dict[str, Any]) -> None:
    """The child of `render_alone`: render, save the images, print the seconds."""
    out = Path(spec.pop("out"))
    # What any first optimizer pays once in a process (Adam imports torch._dynamo, seconds on
    # a busy CPU), paid before the clock starts.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    images, seconds = render(**spec)
    torch.save(images, out)
    print(json.dumps({"seconds": seconds}))


# ----------------------------------------------------------------------------- resuming


class RenderCache:
    """Finished renders on disk (images and seconds), so that a run stopped part-way (Ctrl-C, a
    crash, a cut-off session) resumes where it stopped when the same command runs again.

    Renders are kept under a fingerprint of everything their tool's renders depend on besides
    their case (`render_fingerprint`): any change there renders afresh, so a cached render is
    one this code would make now, timed on this kind of machine. lucent's depend on the
    built-in model and not on the rest of fvis, so a run after tuning fvis renders fvis alone."""

    def __init__(self, folder: Path) -> None:
        self.root = folder
        self.hits = 0  # renders taken from the cache by `load`
        self._fingerprints: dict[str, str] = {}

    def folder(self, tool: str) -> Path:
        """Where `tool`'s renders are kept: under its kind's (fvis or lucent) fingerprint."""
        kind = "fvis" if is_fvis(tool) else "lucent"
        if kind not in self._fingerprints:
            self._fingerprints[kind] = render_fingerprint(kind)
        return self.root / self._fingerprints[kind]

    def _path(self, case: dict[str, Any]) -> Path:
        key = hashlib.sha256(json.dumps(case, sort_keys=True).encode()).hexdigest()[:24]
        return self.folder(case["tool"]) / f"{key}.pt"

    def load(self, case: dict[str, Any]) -> tuple[Tensor, float] | None:
        path = self._path(case)
        if not path.is_file():
            return None
        found = torch.load(path, weights_only=True)
        self.hits += 1
        return found["images"], float(found["seconds"])

    def save(self, case: dict[str, Any], images: Tensor, seconds: float) -> None:
        buffer = io.BytesIO()
        torch.save({"images": images, "seconds": seconds}, buffer)
        path = self._path(case)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())


def render_fingerprint(kind: str) -> str:
    """A digest of what the renders of `kind` (`fvis`, with its variants, or `lucent`) depend
    on beyond their case: the machine line (processor, threads, torch), lucent's and kornia's
    versions, the source of the functions that render them, and the files they read: for
    fvis its whole package (code and shipped weights) and the two configs, for lucent the
    built-in model's (fvis/zoo)."""
    digest = hashlib.sha256()
    versions = (machine(), _version("torch-lucent"), _version("kornia"))
    digest.update(json.dumps(versions).encode())
    if kind == "fvis":
        functions: tuple[Any, ...] = (fvis_render, sweep_render)
        package, configs = ROOT / "fvis", [("classes", CLASSES_CONFIG), ("channel", CHANNEL_CONFIG)]
    else:
        functions = (lucent_render, lucent_channels, Normalized.__init__, Normalized.forward)
        package, configs = ROOT / "fvis" / "zoo", []
    for function in (*functions, render, _one):
        digest.update(inspect.getsource(function).encode())
    files = sorted(f for f in package.rglob("*") if "__pycache__" not in f.parts)
    named = [(f.relative_to(ROOT).as_posix(), f) for f in files if f.is_file()]
    for name, path in [*named, *configs]:
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- the measures


@torch.no_grad()
def objective_values(
    network: Normalized, images: Tensor, target: str, items: Sequence[int] | None = None
) -> list[float]:
    """Per item, the objective on its clean image: the intended class's logit, or the intended
    channel's activation averaged over positions."""
    layer, indices = _items(target, items)
    captured: dict[str, Tensor] = {}
    module = network.get_submodule(layer)
    hook = module.register_forward_hook(lambda _m, _i, output: captured.update(out=output))
    try:
        network(images)
    finally:
        hook.remove()
    out = captured["out"]
    values = [out[k, index] for k, index in enumerate(indices)]
    return [float(v.mean()) for v in values]


def clipped(image: Tensor) -> float:
    """The share of an image's channel values that an 8-bit PNG stores as 0 or 255: colour
    at the gamut's edge, where the sigmoid is flat. Not a quality measure but an explanation:
    clipped regions look alike from seed to seed, which lowers the diversity."""
    return float(((image < 0.5 / 255) | (image >= 254.5 / 255)).double().mean())


def saturation(image: Tensor) -> float:
    """Mean HSV saturation (max - min) / max of a [3, H, W] image in [0, 1] (0 where black)."""
    high, low = image.amax(0), image.amin(0)
    return float(torch.where(high > 0, (high - low) / high.clamp_min(1e-12), 0.0).mean())


def measure_images(
    images: Tensor,
    target: str,
    network: Normalized,
    transfer: Normalized | None,
    items: Sequence[int] | None = None,
) -> dict[str, list[float]]:
    """Every per-item measure of one render (the seed-wise ones, diversity and time, aside)."""
    _, indices = _items(target, items)
    shares = [colour_dominance(img) for img in images]
    found: dict[str, list[float]] = {
        "objective": objective_values(network, images, target, items),
        "high_frequency": [high_frequency_share(img) for img in images],
        "saturation": [saturation(img) for img in images],
        "dominated": [sum(share.values()) for share in shares],
        "clipped": [clipped(img) for img in images],
    }
    if target != "classes":
        return found
    names = [SHAPES.classes[c] for c in indices]
    for colour in COLOURS:
        found[colour] = [s[colour] for s, name in zip(shares, names, strict=True) if name == colour]
    found["recovered"] = [
        float(recover_class(img) == name) for img, name in zip(images, names, strict=True)
    ]
    if transfer is not None:
        with torch.no_grad():
            p = transfer(images).softmax(1)
        found["top1"] = [float(p[k].argmax() == c) for k, c in enumerate(indices)]
        found["probability"] = [float(p[k, c]) for k, c in enumerate(indices)]
    return found


def diversity(by_seed: Sequence[Tensor]) -> float | None:
    """Mean over items of the mean pairwise 1 - SSIM of an item's renders across seeds (None
    with fewer than two seeds)."""
    if len(by_seed) < 2:
        return None
    per_item = []
    for k in range(by_seed[0].shape[0]):
        pairs = itertools.combinations([images[k] for images in by_seed], 2)
        per_item.append(_mean([1 - ssim(a, b) for a, b in pairs]))
    return _mean(per_item)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def row(
    tool: str,
    size: int,
    steps: int,
    target: str,
    by_seed: Sequence[Tensor],
    seconds: Sequence[float],
    network: Normalized,
    transfer: Normalized | None,
    items: Sequence[int] | None = None,
) -> Row:
    """The table row of one tool, size, step count and target set: every measure averaged over
    the items and the seeds, the diversity across the seeds, the fastest render's seconds."""
    per_seed = [measure_images(images, target, network, transfer, items) for images in by_seed]
    out: Row = {"tool": tool, "size": size, "steps": steps, "target": target}
    for key, *_ in MEASURES:
        values = [v for found in per_seed for v in found.get(key, [])]
        out[key] = _mean(values) if values else None
    out["diversity"] = diversity(by_seed)
    out["seconds"] = min(seconds)
    return out


# ----------------------------------------------------------------------------- the report


def _shown(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    fmt = next(fmt for k, _, fmt, _ in MEASURES if k == key)
    return fmt.format(value)


def margin(key: str, candidate: Row, reference: Row) -> float | None:
    """How far `candidate` is ahead of `reference` on a quality measure, as the table shows
    them (a tie at its precision is 0): the difference over the reference's magnitude,
    positive where better; None for a measure that either row lacks or that is no quality."""
    higher = next(h for k, _, _, h in MEASURES if k == key)
    if higher is None or candidate.get(key) is None or reference.get(key) is None:
        return None
    mine, theirs = float(_shown(key, candidate[key])), float(_shown(key, reference[key]))
    ahead = mine - theirs if higher else theirs - mine
    if theirs:
        return ahead / abs(theirs)
    return math.copysign(1.0, ahead) if ahead else 0.0  # against a zero: all or nothing


def short_keys(candidate: Row, reference: Row) -> list[str]:
    """The quality measures (their keys) on which `candidate` is worse than `reference`, as
    the table shows them (a tie at the table's precision matches); measures either row lacks
    are skipped."""
    return [
        key
        for key, *_ in MEASURES
        if (found := margin(key, candidate, reference)) is not None and found < 0
    ]


def shortfalls(candidate: Row, reference: Row) -> list[str]:
    """Each measure `candidate` falls short on, with both values: `HF share 0.2 vs 0.1`."""
    return [
        f"{_heading(key)} {_shown(key, candidate[key])} vs {_shown(key, reference[key])}"
        for key in short_keys(candidate, reference)
    ]


def _heading(key: str) -> str:
    return next(heading for k, heading, *_ in MEASURES if k == key)


def _pace(match: Row, ref: Row) -> str:
    return (
        f"**{match['steps']} steps** ({match['seconds']:.1f} s,"
        f" {match['seconds'] / ref['seconds']:.2f}x lucent's time,"
        f" {match['steps'] / ref['steps']:.2f}x its steps)"
    )


def quality_per_second(rows: Sequence[Row]) -> list[str]:
    """Per size and target set: the fewest fvis steps whose every quality measure matches or
    beats lucent's longest render (its 512 steps in the full run), with the seconds; or none,
    with what falls short at each fvis step count, and then the fewest steps that match on
    every measure but those no step count matches."""
    lines = []
    tools = list(dict.fromkeys(r["tool"] for r in rows if is_fvis(r["tool"])))
    for (size, target), tool in itertools.product(
        sorted({(r["size"], r["target"]) for r in rows}), tools
    ):
        here = [r for r in rows if r["size"] == size and r["target"] == target]
        lucent = [r for r in here if r["tool"] == "lucent"]
        fvis = sorted((r for r in here if r["tool"] == tool), key=lambda r: r["steps"])
        if not lucent or not fvis:
            continue
        ref = max(lucent, key=lambda r: r["steps"])
        what = f"{size} px, {target}: lucent's {ref['steps']} steps take {ref['seconds']:.1f} s"
        name = "fvis" if tool == "fvis" else f"`{tool}`"
        short = {r["steps"]: short_keys(r, ref) for r in fvis}
        match = next((r for r in fvis if not short[r["steps"]]), None)
        if match is not None:
            lines.append(f"- {what}; {name} matches or beats every measure at {_pace(match, ref)}.")
            continue
        falls = "; ".join(f"at {r['steps']} steps {', '.join(shortfalls(r, ref))}" for r in fvis)
        line = f"- {what}; {name} matches at **none** of its step counts: {falls}."
        never = [k for k in short[fvis[0]["steps"]] if all(k in v for v in short.values())]
        rest = next((r for r in fvis if set(short[r["steps"]]) <= set(never)), None)
        if len(fvis) > 1 and rest is not None:
            left = ", ".join(_heading(k) for k in never)
            line += f" Leaving out {left}, which none matches, it matches at {_pace(rest, ref)}."
        lines.append(line)
    return lines


def table(rows: Sequence[Row]) -> list[str]:
    """The markdown table of one size's rows, with fvis's time over that of lucent's longest
    render of the same target (the reference the quality per second holds fvis to)."""
    by_steps = sorted((r for r in rows if r["tool"] == "lucent"), key=lambda r: r["steps"])
    longest = {r["target"]: r["seconds"] for r in by_steps}
    headings = ["tool", "steps", "target", *(h for _, h, _, _ in MEASURES), "s / lucent's s"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for r in rows:
        ratio = longest.get(r["target"]) if is_fvis(r["tool"]) else None
        cells = [r["tool"], str(r["steps"]), r["target"]]
        cells += [_shown(key, r.get(key)) for key, *_ in MEASURES]
        cells.append(f"{r['seconds'] / ratio:.2f}x" if ratio else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


@dataclasses.dataclass(frozen=True)
class Panel:
    """One target's part of a scorecard: a row per fvis render (tool and step count), a column
    per quality measure lucent's longest render has, then the time; each cell's margin over
    lucent (`margin`; None where the row lacks the measure) and its value as the table shows."""

    target: str
    columns: list[str]
    rows: list[str]
    margins: list[list[float | None]]
    values: list[list[str]]


def score_panels(rows: Sequence[Row], size: int) -> list[Panel]:
    """The scorecard of one size: per target, fvis's rows against lucent's longest render.
    The time column's margin is against TIME_BAR, a third of lucent's time."""
    panels = []
    for target in dict.fromkeys(r["target"] for r in rows if r["size"] == size):
        here = [r for r in rows if r["size"] == size and r["target"] == target]
        lucent = [r for r in here if r["tool"] == "lucent"]
        fvis = [r for r in here if is_fvis(r["tool"])]
        if not lucent or not fvis:
            continue
        ref = max(lucent, key=lambda r: r["steps"])
        keys = [k for k, *_, higher in MEASURES if higher is not None and ref.get(k) is not None]
        headings = {k: h for k, h, *_ in MEASURES}
        columns = [f"{headings[k]}\nlucent {_shown(k, ref[k])}" for k in keys]
        columns.append(f"time\n<= {TIME_BAR:.2f}x")
        margins, values = [], []
        for r in fvis:
            ratio = r["seconds"] / ref["seconds"]
            margins.append([*(margin(k, r, ref) for k in keys), (TIME_BAR - ratio) / TIME_BAR])
            values.append([*(_shown(k, r.get(k)) for k in keys), f"{ratio:.3f}x"])
        labels = [_label(r["tool"], r["steps"]) for r in fvis]
        panels.append(Panel(target, columns, labels, margins, values))
    return panels


def scorecard(panels: Sequence[Panel], title: str) -> bytes:
    """A PNG of `panels` one above the other: each cell fvis's value, green where it matches
    or beats lucent, red where it falls short, however slightly, deeper the further, in full
    at SCORE_SPAN (10%); the column headings give lucent's value. Where people would rather
    look than read the table."""
    with private_matplotlib():
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: bench-only
        from matplotlib.figure import Figure  # lazy: bench-only

    width = 2.6 + 0.95 * max(len(p.columns) for p in panels)
    heights = [1.1 + 0.32 * len(p.rows) for p in panels]
    figure = Figure(figsize=(width, 0.4 + sum(heights)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        ax.imshow([[_cell_colour(m) for m in line] for line in panel.margins])
        for i, line in enumerate(panel.values):
            for j, text in enumerate(line):
                ink = "white" if _depth(panel.margins[i][j]) > 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=ink)
        ax.set_aspect("auto")
        ax.set_xticks(range(len(panel.columns)), panel.columns, fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks(range(len(panel.rows)), panel.rows, fontsize=8)
        ax.set_ylabel(panel.target)
        ax.tick_params(length=0)
    figure.suptitle(title, fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _depth(found: float | None) -> float:
    """How deep a cell's colour is, 0.2 (a tie) to 1 (SCORE_SPAN or more ahead or behind)."""
    return 0.0 if found is None else 0.2 + 0.8 * min(abs(found) / SCORE_SPAN, 1.0)


def _cell_colour(found: float | None) -> tuple[float, ...]:
    """White for no value; from white towards green (matches or beats) or red (short)."""
    full = (0.10, 0.50, 0.22) if found is None or found >= 0 else (0.75, 0.10, 0.12)
    return tuple(1.0 + (c - 1.0) * _depth(found) for c in full)


def picture(columns: Sequence[tuple[str, Tensor]], names: Sequence[str]) -> Image.Image:
    """Rows: the items (named on the left); columns: the renders, labelled on a header row
    (a label wider than its column wraps). Images under 128 px are enlarged (nearest) to show
    their pixels."""
    size = columns[0][1].shape[-1]
    cell = size * max(1, -(-128 // size))
    font = ImageFont.load_default()
    label_w, line, gap = 90, 12, 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [
        wrap(label, cell - 4, lambda text: measure.textlength(text, font=font))
        for label, _ in columns
    ]
    header = 4 + line * max(len(lines) for lines in labels)
    width = label_w + len(columns) * (cell + gap)
    height = header + len(names) * (cell + gap)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, ((_, images), lines) in enumerate(zip(columns, labels, strict=True)):
        x = label_w + j * (cell + gap)
        for k, text in enumerate(lines):
            draw.text((x + 2, 2 + k * line), text, fill=(0, 0, 0), font=font)
        for i, image in enumerate(images):
            tile = to_pil(image).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (x, header + i * (cell + gap)))
    for i, name in enumerate(names):
        draw.text((2, header + i * (cell + gap) + cell // 2 - 6), name, fill=(0, 0, 0), font=font)
    return sheet


def wrap(text: str, width: float, length: Callable[[str], float]) -> list[str]:
    """`text` in lines no wider than `width` by `length`: broken between words, and inside a
    word that is wider alone."""
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and length(joined) <= width:
            lines[-1] = joined
            continue
        piece = ""
        for char in word:
            if piece and length(piece + char) > width:
                lines.append(piece)
                piece = ""
            piece += char
        lines.append(piece)
    return lines or [""]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def document(
    rows: Sequence[Row],
    pictures: dict[int, str],
    command: str,
    seconds: float,
    seeds: Sequence[int],
    upsample: bool,
    load: tuple[float, float] | None = None,
    resumed: int = 0,
    scores: dict[int, str] | None = None,
) -> str:
    """benchmarks/quality.md: the header, a table per size (with its pictures and its
    scorecard, `scores`), the quality per second. `resumed`: how many renders came from the
    cache of an earlier run."""
    resize = (
        "resized to 224 px before the network under 224 px (lucent's default)"
        if upsample
        else "fed to the network at its own size (`fixed_image_size=0`: lucent's resize of"
        " images under 224 px to 224 px turned off, as fvis feeds it)"
    )
    seed_text = ", ".join(map(str, seeds))
    busy = (
        f" 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on"
        f" {os.cpu_count()} cores (other processes lengthen every time)."
        if load
        else ""
    )
    lines = [
        "# fvis vs torch-lucent: picture quality on the built-in ShapesNet",
        "",
        f"{datetime.date.today().isoformat()}. Machine: {machine()}; torch-lucent"
        f" {_version('torch-lucent')}, kornia {_version('kornia')}. Command: `{command}`;"
        f" the run took {seconds / 60:.1f} min.{busy}{_resumed(resumed)}",
        "",
        "Each tool with its own defaults (see the docstring of `benchmarks/quality.py`): fvis as"
        " `fvis render configs/classes.yaml` and `fvis sweep configs/objectives/channel.yaml`"
        " render, with only `optim.steps`, `param.size` and `seed` set; lucent's `render_vis`"
        " with `param.image(size, batch=N)` and `transform.standard_transforms`, the network"
        f" wrapped with ShapesNet's normalization, the image {resize}. Each step count is a run"
        f" of its own. Seeds: {seed_text}. A tool named `fvis SET;SET` is fvis with those"
        " `--set`s on top of its defaults (`--variant`).",
        "",
        "Measures, on the clean final image, averaged over the items (10 classes, channels 0-15)"
        " and the seeds: **objective**, the intended logit or channel's mean activation through"
        " the shipped network; **HF share**, the share of the grey image's spectral power above"
        " 1/3 cycle per pixel (lower: less fine noise); **saturation**, the mean HSV"
        " saturation; **dominated**, the share of pixels where one channel exceeds both others"
        " by 0.15 after a 13 px blur (`fvis.zoo.quality.colour_dominance`); **clipped**, the"
        " share of channel values stored as 0 or 255 (no quality: flat clipped regions look"
        " alike from seed to seed, which lowers the diversity); **red on red** (and"
        " green, blue), that share for the intended channel on the class's own render;"
        " **recovered**, the share of class renders whose signature"
        " `fvis.zoo.quality.recover_class` reads as the intended class; **transfer top-1** and"
        " **transfer p**, the top-1 accuracy and mean probability of the intended class under a"
        " ShapesNet trained with another seed (`tests/assets/shapes-seed1.safetensors`);"
        " **diversity**, the mean pairwise 1 - SSIM of one target's renders across the seeds"
        " ('-' with one seed); **seconds**, the wall time of one render of the whole target set"
        " (network built, render run, images back), each in a fresh process with nothing else"
        " of the benchmark running, the fastest over the seeds; **s / lucent's s**, fvis's"
        " seconds over those of lucent's longest render of the same target.",
    ]
    for size in sorted({r["size"] for r in rows}):
        here = [r for r in rows if r["size"] == size]
        lines += ["", f"## {size} px", "", *table(here)]
        if size in pictures:
            lines += ["", f"![{size} px: lucent | fvis]({pictures[size]})"]
        if scores and size in scores:
            lines += ["", f"![{size} px: fvis against lucent, measure by measure]({scores[size]})"]
    lines += [
        "",
        "## Quality per second",
        "",
        "The fewest fvis steps whose every quality measure above (time aside) matches or beats"
        " lucent's longest render, at the table's precision:",
        "",
        *quality_per_second(rows),
    ]
    return "\n".join(lines) + "\n"


def _resumed(renders: int) -> str:
    if not renders:
        return ""
    return (
        f" It took {renders} renders (their seconds included) from the cache of an earlier run,"
        " made by the same code on the same kind of machine (lucent's: with the same built-in"
        " model); the minutes above count this run alone."
    )


# ----------------------------------------------------------------------------- the run


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(
    sizes: Sequence[int],
    targets: Sequence[str],
    steps: dict[str, Sequence[int]],
    seeds: Sequence[int],
    transfer: Normalized | None,
    repeats: int = 1,
    items: Sequence[int] | None = None,
    upsample: bool = False,
    renderer: Callable[..., tuple[Tensor, float]] = render_alone,
    cache: RenderCache | None = None,
) -> tuple[list[Row], dict[int, list[tuple[str, Tensor]]]]:
    """Every render of the benchmark; its rows, and per size the class renders of the first
    seed (lucent's longest, then fvis's) for the pictures. `steps`: per tool (`lucent`,
    `fvis`, or a variant `fvis SET;SET`), its step counts, in the order rendered. Renders
    `cache` holds are taken from it, and each new one is added as soon as it is done."""
    network = shapes_network()
    cases = [
        (size, target, tool, n)
        for size in sizes
        for target in targets
        for tool in steps
        for n in steps[tool]
    ]
    rows: list[Row] = []
    columns: dict[int, list[tuple[str, Tensor]]] = {}
    for i, (size, target, tool, n) in enumerate(cases, 1):
        by_seed, seconds = [], []
        for seed in seeds:
            for repeat in range(repeats):
                case = {"tool": tool, "target": target, "size": size, "steps": n, "seed": seed}
                listed = None if items is None else list(items)
                case |= {"items": listed, "upsample": upsample, "repeat": repeat}
                found = cache.load(case) if cache else None
                if found is None:
                    images, took = renderer(tool, target, size, n, seed, items, upsample)
                    if cache:
                        cache.save(case, images, took)
                else:
                    images, took = found
                seconds.append(took)
                what = f"{tool} {size} px {target} {n} steps seed {seed}"
                note(f"[{i}/{len(cases)}] {what}: {took:.1f} s{' (cached)' if found else ''}")
                if repeat == 0:
                    by_seed.append(images)
        rows.append(row(tool, size, n, target, by_seed, seconds, network, transfer, items))
        if target == "classes" and (is_fvis(tool) or n == max(steps.get("lucent", [n]))):
            columns.setdefault(size, []).append((_label(tool, n), by_seed[0]))
    return rows, columns


def _label(tool: str, steps: int) -> str:
    """A picture column's heading: `fvis 256 steps`; a variant by its settings' last names and
    short values (`period=32 256 steps`, a file by its stem, a long value cut), to fit the
    column."""
    names = []
    for s in variant_sets(tool):
        key, _, value = s.partition("=")
        if "/" in value and not value.startswith(("[", "{")):
            value = Path(value).stem
        elif len(value) > LABEL_VALUE:
            value = value[: LABEL_VALUE - 3] + "..."
        names.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return f"{' '.join(names) or tool} {steps} steps"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="64 px, the classes, one seed")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"image sizes (default {SIZES})")
    parser.add_argument("--steps", type=int, nargs="+", help=f"step counts (default {STEPS})")
    parser.add_argument(
        "--lucent-steps",
        type=int,
        nargs="+",
        help=f"lucent's step counts (default {LUCENT_STEPS})",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SET;SET",
        help="also render fvis with these --sets (e.g. 'param.period=32'; a file named from "
        "the repository root), at fvis's step counts; repeatable",
    )
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), help="target sets")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {SEEDS})")
    parser.add_argument(
        "--items", type=int, nargs="+", help="class or channel indices (default all)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each render, fastest kept")
    parser.add_argument("--transfer", type=Path, default=TRANSFER, help="independent ShapesNet")
    parser.add_argument(
        "--lucent-upsample", action="store_true", help="keep lucent's resize to 224 px"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "outputs" / "quality-cache",
        help="finished renders, so that a stopped run resumes (default outputs/quality-cache)",
    )
    parser.add_argument("--no-cache", action="store_true", help="render everything afresh")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "quality.md",
        help="the report (default benchmarks/quality.md); its pictures STEM-SIZE.png beside it",
    )
    args = parser.parse_args()
    if args.one:
        _one(json.loads(args.one))
        return
    began, load = time.perf_counter(), os.getloadavg()[0]
    quick = QUICK if args.quick else {}
    sizes = args.sizes or quick.get("sizes", SIZES)
    targets = args.targets or quick.get("targets", list(TARGETS))
    fvis_steps = args.steps or quick.get("steps", STEPS)
    lucent_steps = args.lucent_steps or LUCENT_STEPS
    seeds = args.seeds or ((0,) if args.quick else SEEDS)
    transfer = transfer_network(args.transfer) if args.transfer.is_file() else None
    if transfer is None:
        note(f"no {args.transfer}: the transfer columns stay empty")
    cache = None if args.no_cache else RenderCache(args.cache)
    rows, columns = run(
        sizes,
        targets,
        {
            "lucent": lucent_steps,
            "fvis": fvis_steps,
            **{variant_tool(v): fvis_steps for v in args.variant},
        },
        seeds,
        transfer,
        args.repeats,
        args.items,
        args.lucent_upsample,
        cache=cache,
    )
    pictures = {}
    for size, cols in columns.items():
        path = args.out.parent / f"{args.out.stem}-{size}.png"
        names = [SHAPES.classes[c] for c in _items("classes", args.items)[1]]
        write_atomic(path, png_bytes(picture(cols, names)))
        pictures[size] = path.name
    scores = {}
    for size in sizes:
        panels = score_panels(rows, size)
        if panels:
            path = args.out.parent / f"{args.out.stem}-{size}-score.png"
            title = f"{size} px: fvis against lucent's longest render (green: as good or better)"
            write_atomic(path, scorecard(panels, title))
            scores[size] = path.name
    command = "python benchmarks/quality.py " + shlex.join(sys.argv[1:])
    seconds, loads = time.perf_counter() - began, (load, os.getloadavg()[0])
    resumed = cache.hits if cache else 0
    text = document(
        rows,
        pictures,
        command.strip(),
        seconds,
        seeds,
        args.lucent_upsample,
        loads,
        resumed,
        scores,
    )
    write_atomic(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
