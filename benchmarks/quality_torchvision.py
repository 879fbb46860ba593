"""fvis's FFT defaults on a torchvision architecture at 224 px: no worse than before its
`param.period`, and than lucent?

ShapesNet is the model `benchmarks/quality.py` tunes fvis's defaults on; this checks that what
it chose holds on an ImageNet-sized architecture. No weights can be downloaded here, so the
network is resnet18 with random weights (drawn once from `--net-seed`, saved as a checkpoint
both tools load): its channels have no learned meaning, but how high a render drives them and
how much fine noise it carries still compare. Rendered: channels 0-3 of `layer3` at 224 px,
one batch, by

* `fvis`, its defaults (`param.period: 64`), as `fvis sweep` renders a channel config on a
  `source: checkpoint` model (ImageNet preprocessing and colour decorrelation);
* `fvis param.period=null`, lucid's floor of the 1/f scale at one cycle per image (fvis before
  the period);
* `lucent`, `render_vis` with `param.image(224, batch=4)` and `standard_transforms`, the
  network wrapped with ImageNet's normalization.

Measured as `benchmarks/quality.py` measures: the objective (the channel's mean activation on
the clean image), the HF share, the saturation, the diversity across the seeds, the seconds.

    python benchmarks/quality_torchvision.py   # writes benchmarks/quality-torchvision.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from bench import machine
from quality import (
    diversity,
    final_images,
    high_frequency_share,
    lucent_channels,
    saturation,
    sweep_render,
)
from safetensors.torch import save_file
from torch import Tensor, nn

from fvis.io import write_atomic
from fvis.models import IMAGENET_MEAN, IMAGENET_STD

ARCH, LAYER, CHANNELS, SIZE = "resnet18", "layer3", (0, 1, 2, 3), 224
TOOLS = ("lucent", "fvis", "fvis param.period=null")


class ImageNetInput(nn.Module):
    """`net` taking images in [0, 1]: ImageNet's normalization first."""

    mean: Tensor
    std: Tensor

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def random_network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(ARCH, weights=None).eval()


def fvis_images(checkpoint: Path, tool: str, steps: int, seed: int) -> Tensor:
    """fvis's renders of CHANNELS, as `fvis sweep` renders a channel config on `checkpoint`."""
    config = checkpoint.parent / "channel.yaml"
    config.write_text(
        f"model: {{source: checkpoint, path: {checkpoint.name}, arch: {ARCH}}}\n"
        f"objective: {{kind: channel, layer: {LAYER}, channel: 0}}\n"
    )
    sets = [f"optim.steps={steps}", f"optim.thresholds=[{steps}]", f"param.size={SIZE}"]
    sets += [f"seed={seed}", *tool.removeprefix("fvis").split()]
    over = [f"objective.channel={','.join(map(str, CHANNELS))}"]
    return final_images(sweep_render(config, sets, over), f"{tool} seed {seed}")


def lucent_images(net: nn.Module, steps: int, seed: int) -> Tensor:
    """lucent's renders of CHANNELS with its defaults, one batch."""
    return lucent_channels(ImageNetInput(net), f"net_{LAYER}", CHANNELS, SIZE, steps, seed)


@torch.no_grad()
def objective(net: nn.Module, images: Tensor) -> float:
    """The mean over items of each intended channel's mean activation on its clean image."""
    captured: dict[str, Tensor] = {}
    hook = net.get_submodule(LAYER).register_forward_hook(lambda _m, _i, o: captured.update(o=o))
    try:
        ImageNetInput(net)(images)
    finally:
        hook.remove()
    return float(torch.stack([captured["o"][k, c].mean() for k, c in enumerate(CHANNELS)]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=128, help="steps of every render")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="image seeds")
    parser.add_argument("--net-seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "quality-torchvision.md"
    )
    args = parser.parse_args()
    net = random_network(args.net_seed)
    lines = [
        "| tool | objective | HF share | saturation | diversity | seconds |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "net.safetensors"
        save_file(net.state_dict(), str(checkpoint))
        for tool in TOOLS:
            by_seed, seconds = [], []
            for seed in args.seeds:
                start = time.perf_counter()
                if tool == "lucent":
                    images = lucent_images(random_network(args.net_seed), args.steps, seed)
                else:
                    images = fvis_images(checkpoint, tool, args.steps, seed)
                seconds.append(time.perf_counter() - start)
                by_seed.append(images)
                print(f"{tool} seed {seed}: {seconds[-1]:.1f} s", flush=True)
            every = torch.cat(by_seed)
            found = diversity(by_seed)
            cells = [
                tool,
                f"{sum(objective(net, im) for im in by_seed) / len(by_seed):.3f}",
                f"{sum(map(high_frequency_share, every)) / len(every):.4f}",
                f"{sum(map(saturation, every)) / len(every):.3f}",
                "-" if found is None else f"{found:.3f}",
                f"{min(seconds):.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(
        [
            f"# fvis's FFT defaults on {ARCH} (random weights) at {SIZE} px",
            "",
            f"{machine()}. Command: `python benchmarks/quality_torchvision.py --steps"
            f" {args.steps} --seeds {' '.join(map(str, args.seeds))} --net-seed {args.net_seed}`."
            f" Channels {CHANNELS[0]}-{CHANNELS[-1]} of `{LAYER}`, {args.steps} steps each tool;"
            " see the script's docstring for what each row renders and measures.",
            "",
            *lines,
        ]
    )
    write_atomic(args.out, (text + "\n").encode())
    print(text)


if __name__ == "__main__":
    main()
