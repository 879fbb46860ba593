"""Tests of the network-free class recovery, validated on real generated images."""

from __future__ import annotations

import math

import pytest
import torch

from fvis.zoo.data import CLASSES, generate_class
from fvis.zoo.quality import (
    UNKNOWN,
    high_frequency_share,
    orientation_shares,
    recover_class,
    signature,
    structure_coherence,
)

PER_CLASS = 100
VALIDATION_SEED = 2024


def _grid(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return y, x


def _grey(pattern: torch.Tensor) -> torch.Tensor:
    return pattern.expand(3, *pattern.shape).clone()


def _grating(theta_deg: float, period: float = 8.0) -> torch.Tensor:
    y, x = _grid()
    theta = math.radians(theta_deg)
    return _grey(
        0.5 + 0.4 * torch.cos(2 * math.pi * (x * math.sin(theta) + y * math.cos(theta)) / period)
    )


@pytest.fixture(scope="module")
def recovery_table() -> dict[str, dict[str, int]]:
    """For each class, how many of its generated images were recovered as each class."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    table: dict[str, dict[str, int]] = {}
    for cls, name in enumerate(CLASSES):
        counts: dict[str, int] = {}
        for image in generate_class(cls, PER_CLASS, generator):
            guess = recover_class(image)
            counts[guess] = counts.get(guess, 0) + 1
        table[name] = counts
    print(f"\n{'class':<13}{'recovered':>10}  confusions")
    for name, counts in table.items():
        wrong = {k: v for k, v in counts.items() if k != name}
        print(f"{name:<13}{counts.get(name, 0) / PER_CLASS:>10.0%}  {wrong or ''}")
    return table


@pytest.mark.parametrize("name", CLASSES)
def test_recover_class_on_generated_images(
    recovery_table: dict[str, dict[str, int]], name: str
) -> None:
    counts = recovery_table[name]
    assert counts.get(name, 0) >= 0.98 * PER_CLASS, f"{name}: {counts}"


def test_high_frequency_share_of_constant_image_is_zero() -> None:
    assert high_frequency_share(torch.full((3, 64, 64), 0.3)) == 0.0


def test_high_frequency_share_of_pixel_checkerboard_is_near_one() -> None:
    y, x = _grid()
    checks = _grey(((x + y) % 2).float())
    assert high_frequency_share(checks) > 0.95


def test_high_frequency_share_of_low_frequency_sinusoid_is_near_zero() -> None:
    assert high_frequency_share(_grating(30.0, period=16.0)) < 0.01


def test_high_frequency_share_of_dataset_images_is_low() -> None:
    images = generate_class(0, 20, torch.Generator().manual_seed(1))
    shares = torch.tensor([high_frequency_share(img) for img in images])
    assert float(shares.median()) < 0.05


@pytest.mark.parametrize("theta", [0, 45, 90, 135])
def test_orientation_bins_follow_the_stripe_convention(theta: int) -> None:
    shares = orientation_shares(_grating(float(theta)))
    assert shares[theta] > 0.95


def test_horizontal_stripes_are_stripes_0() -> None:
    y, _ = _grid()
    horizontal = _grey(0.5 + 0.4 * torch.sign(torch.sin(2 * math.pi * y / 10)))
    assert recover_class(horizontal) == "stripes_0"


def test_rings_are_oriented_but_inconsistent() -> None:
    y, x = _grid()
    rings = _grey(0.5 + 0.4 * torch.cos(2 * math.pi * torch.hypot(x - 30, y - 34) / 8))
    coherence, consistency = structure_coherence(rings)
    assert coherence > 0.6
    assert consistency < 0.5
    assert recover_class(rings) == "curves"


def test_colour_decides_before_texture() -> None:
    image = _grating(0.0)
    image[1:, 10:40, 10:40] *= 0.2
    assert recover_class(image) == "red"


def test_signature_keys() -> None:
    stats = signature(torch.rand(3, 64, 64))
    assert set(stats) == {
        "red",
        "green",
        "blue",
        "contrast",
        "orient_0",
        "orient_45",
        "orient_90",
        "orient_135",
        "axes",
        "diagonals",
        "coherence",
        "consistency",
        "high_frequency",
    }
    assert all(math.isfinite(v) for v in stats.values())


def test_flat_image_has_no_class() -> None:
    assert recover_class(torch.full((3, 64, 64), 0.4)) == UNKNOWN


def test_white_noise_has_no_class() -> None:
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert recover_class(noise) == UNKNOWN


def test_other_image_sizes_work() -> None:
    assert recover_class(_grating(90.0)[:, :48, :]) == "stripes_90"


def test_rejects_non_rgb_input() -> None:
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        recover_class(torch.rand(64, 64))
