"""`fvis groups`: NMF of a layer's activations into neuron groups, their maps and renders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fvis import groups
from fvis.data import Batch
from fvis.errors import UserError
from fvis.io import read_image
from fvis.zoo.quality import orientation_shares

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def halves(path: Path) -> Path:
    """A 64 px image: horizontal stripes (period 8 px) in the left half, two green blobs on
    grey in the right half."""
    y, x = np.mgrid[0:64, 0:64]
    stripes = np.repeat((0.5 + 0.4 * np.sin(2 * np.pi * y / 8.0))[..., None], 3, axis=2)
    blobs = ((x - 48) ** 2 + (y - 18) ** 2 < 100) | ((x - 46) ** 2 + (y - 46) ** 2 < 120)
    right = np.where(blobs[..., None], [0.1, 0.85, 0.15], 0.5)
    image = np.where((x >= 32)[..., None], right, stripes)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)
    return path


def test_two_groups_of_conv3_separate_stripes_from_green_blobs(
    tmp_path: Path, cli: Callable[..., object]
) -> None:
    # The measure: each group's map lies at least 80 % in its own half, and the stripe
    # group's render has horizontal stripes (the dominant orientation of its spectrum).
    image = halves(tmp_path / "halves.png")
    out = tmp_path / "groups"
    result = cli(
        "groups", QUICKSTART, "--image", image, "--layer", "conv3", "--groups", "2",
        "--out", out, "--set", "optim.steps=96", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "groups.png"), str(out / "groups.json")]
    maps = load_file(str(out / "groups.safetensors"))["maps"]
    assert maps.shape == (2, 16, 16)
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:, :8] = True
    shares = [groups.region_share(m, left) for m in maps]
    stripe = int(np.argmax(shares))
    assert shares[stripe] >= 0.8 and 1 - shares[1 - stripe] >= 0.8, shares
    index = json.loads((out / "groups.json").read_text())
    render = read_image(out / index["groups"][stripe]["render"])
    orientation = orientation_shares(render)
    assert max(orientation, key=orientation.get) == 0, orientation
    # the picture holds the image column and a column per group, two rows
    assert Image.open(out / "groups.png").size == (3 * (groups.CELL + 4), 16 + 2 * 132)
    assert index["positions"] == 256 and index["render"]["layer"] == "conv3"
    assert index["render"]["render_row_0"].startswith("fvis render ")


def test_factor_recovers_known_parts_largest_first() -> None:
    # A = W H with two non-overlapping parts: the factors come back (up to scale), the part
    # with more total activation first, and the error is ~0.
    h = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0]])
    w = torch.zeros(6, 2)
    w[:2, 1] = 1.0  # the second part at two positions
    w[2:, 0] = 3.0  # the first at four, stronger: it is group 0
    acts = w @ h
    image = acts.T.reshape(4, 2, 3)
    factors = groups.factor(acts, 2, seed=0, image=image)
    assert factors.error < 1e-3
    unit = factors.channels / factors.channels.norm(dim=1, keepdim=True)
    assert torch.allclose(unit, h / h.norm(dim=1, keepdim=True), atol=1e-3)
    on = factors.maps.flatten(1)  # [2, 6]
    assert torch.equal(on[0] > 1e-3, w[:, 0] > 0) and torch.equal(on[1] > 1e-3, w[:, 1] > 0)


def test_negative_activations_are_set_to_zero_and_all_negative_is_refused() -> None:
    acts = torch.tensor([[1.0, -5.0], [2.0, -1.0], [0.5, -3.0]])
    factors = groups.factor(acts, 1, seed=0)
    assert factors.channels[0, 1] == 0 and factors.channels[0, 0] > 0
    with pytest.raises(UserError, match="all zero or negative"):
        groups.factor(-acts.abs(), 1, seed=0)


def test_check_groups_names_the_limit() -> None:
    with pytest.raises(UserError, match="--groups 5: expected 1 to 3"):
        groups.check_groups(5, torch.ones(10, 3))
    groups.check_groups(3, torch.ones(10, 3))


def test_positions_do_not_depend_on_batches() -> None:
    acts = torch.randn(6, 5, 9)  # [images, C, P]

    def sample(cuts: list[int]) -> torch.Tensor:
        positions = groups.Positions("l", per_image=2, seed=3)
        for a, b in zip([0, *cuts], [*cuts, 6], strict=True):
            ids = torch.arange(a, b)
            batch = Batch(torch.zeros(b - a, 3, 1, 1), torch.zeros(b - a), ids)
            positions.update(batch, {"l": acts[a:b]})
        return positions.vectors()

    once = sample([])
    assert once.shape == (12, 5)
    assert torch.equal(once, sample([1, 4]))
    assert torch.equal(once[:2], acts[0].T[torch.randperm(9, generator=_g(3, 0))[:2]])


def _g(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def test_region_share_and_overlay_by_hand() -> None:
    group_map = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    region = torch.tensor([[False, True], [False, False]])
    assert groups.region_share(group_map, region) == pytest.approx(0.75)
    assert groups.region_share(torch.zeros(2, 2), region) == 0.0
    image = torch.full((3, 2, 2), 0.5)
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    painted = groups.overlay(image, maps)
    # where a group is at its maximum: 30 % image, 70 % its colour; where none is: the image
    expected = 0.3 * 0.5 + 0.7 * torch.tensor(groups.PALETTE[0])
    assert torch.allclose(painted[:, 0, 0], expected)
    assert torch.allclose(painted[:, 1, 1], 0.3 * 0.5 + 0.7 * torch.tensor(groups.PALETTE[1]))
    assert torch.allclose(painted[:, 0, 1], image[:, 0, 1])


def test_groups_over_a_dataset(tmp_path: Path, cli: Callable[..., object]) -> None:
    out = tmp_path / "g"
    args = ["groups", QUICKSTART, "--data", "zoo:shapes:24", "--layer", "conv4", "--groups", "3"]
    sets = ["--set", "optim.steps=8", "--out", out, "--workers", "0", "--quiet"]
    result = cli(*args, *sets)
    assert result.exit_code == 0, result.output
    tensors = load_file(str(out / "groups.safetensors"))
    assert tensors["vectors"].shape == (24 * 4, 64) and "maps" not in tensors
    index = json.loads((out / "groups.json").read_text())
    assert index["positions"] == 96 and len(index["groups"]) == 3
    assert not (out / groups.CHECKPOINT).exists()
    again = cli(*args, *sets)  # the folder exists: refused without --force
    assert again.exit_code == 2 and "pass --force" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "pass --image IMG (the groups of one image), --data SOURCE, or both"),
        (["--image", "halves.png", "--layer", "conv9"], "--layer conv9: unknown layer"),
        (["--image", "halves.png", "--groups", "12", "--layer", "logits"], "groups need a"),
        (["--image", "missing.png"], "missing.png"),
    ],
)
def test_groups_errors_are_one_line(
    tmp_path: Path, cli: Callable[..., object], args: list[str], message: str
) -> None:
    halves(tmp_path / "halves.png")
    args = [a if not a.endswith(".png") else str(tmp_path / a) for a in args]
    if "--layer" not in args:
        args += ["--layer", "conv3"]
    result = cli("groups", QUICKSTART, *args, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
