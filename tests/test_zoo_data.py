"""Tests of the procedural shapes dataset: determinism, format, balance, nuisance variation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fvis.zoo.data import CLASSES, TINT, generate, generate_class, sample

TEXTURE_CLASSES = range(7)
COLOUR_CLASSES = (7, 8, 9)


def test_classes_are_the_documented_ten_in_order() -> None:
    assert CLASSES == (
        "stripes_0",
        "stripes_45",
        "stripes_90",
        "stripes_135",
        "checkerboard",
        "curves",
        "dots",
        "red",
        "green",
        "blue",
    )


def test_shapes_dtype_and_range() -> None:
    images, labels = generate(30, seed=0)
    assert images.shape == (30, 3, 64, 64)
    assert images.dtype == torch.float32
    assert labels.shape == (30,)
    assert labels.dtype == torch.int64
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0
    assert int(labels.min()) >= 0
    assert int(labels.max()) < len(CLASSES)


def test_same_seed_same_tensors() -> None:
    a_images, a_labels = generate(40, seed=7)
    b_images, b_labels = generate(40, seed=7)
    assert torch.equal(a_images, b_images)
    assert torch.equal(a_labels, b_labels)


def test_different_seed_different_tensors() -> None:
    a_images, a_labels = generate(40, seed=7)
    b_images, b_labels = generate(40, seed=8)
    assert not torch.equal(a_images, b_images)
    assert not torch.equal(a_labels, b_labels)


def test_generator_state_fully_determines_a_class_batch() -> None:
    a = generate_class(3, 5, torch.Generator().manual_seed(11))
    b = generate_class(3, 5, torch.Generator().manual_seed(11))
    assert torch.equal(a, b)


def test_classes_are_balanced_and_shuffled() -> None:
    _, labels = generate(103, seed=1)
    counts = torch.bincount(labels, minlength=len(CLASSES))
    assert int(counts.min()) == 10
    assert int(counts.max()) == 11
    assert not torch.equal(labels, torch.arange(103) % len(CLASSES))


def test_sample_labels_match_generated_classes() -> None:
    images, labels = sample(20, torch.Generator().manual_seed(3))
    for cls in COLOUR_CLASSES:
        chosen = images[labels == cls]
        others = [c for c in range(3) if c != cls - 7]
        lead = chosen[:, cls - 7] - chosen[:, others].amax(1)
        assert bool(((lead > 0.3).flatten(1).float().mean(1) > 0.01).all())


@pytest.mark.parametrize("cls", range(len(CLASSES)))
def test_each_class_has_nuisance_variation(cls: int) -> None:
    images = generate_class(cls, 8, torch.Generator().manual_seed(cls))
    pairwise = (images[:, None] - images[None]).abs().mean((2, 3, 4))
    off_diagonal = pairwise[~torch.eye(8, dtype=torch.bool)]
    assert float(off_diagonal.min()) > 0.02, "two images of a class are nearly identical"
    brightness = images.mean((1, 2, 3))
    assert float(brightness.std()) > 0.01, "brightness does not vary within the class"


@pytest.mark.parametrize("cls", TEXTURE_CLASSES)
def test_texture_classes_are_nearly_colourless(cls: int) -> None:
    images = generate_class(cls, 20, torch.Generator().manual_seed(100 + cls))
    blurred = F.avg_pool2d(images, 5, stride=1)
    spread = blurred.amax(1) - blurred.amin(1)
    assert float(spread.max()) < 2 * TINT + 0.07


@pytest.mark.parametrize("cls", COLOUR_CLASSES)
def test_colour_classes_have_a_dominant_channel(cls: int) -> None:
    images = generate_class(cls, 20, torch.Generator().manual_seed(200 + cls))
    channel = cls - 7
    others = [c for c in range(3) if c != channel]
    blurred = F.avg_pool2d(images, 5, stride=1)
    lead = blurred[:, channel] - blurred[:, others].amax(1)
    share = (lead > 0.2).flatten(1).float().mean(1)
    assert float(share.min()) > 0.03


def test_bad_class_index_is_rejected() -> None:
    with pytest.raises(ValueError, match="out of range"):
        generate_class(10, 1, torch.Generator())


def test_empty_request() -> None:
    images, labels = generate(0, seed=0)
    assert images.shape == (0, 3, 64, 64)
    assert labels.shape == (0,)
