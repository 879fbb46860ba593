"""Attributions on the built-in model mean what they should: integrated gradients are complete,
and Grad-CAM and integrated gradients find the colour blob that decides a colour class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fvis.attribution.run import Outcome, build, run
from fvis.config.attribution import AttributionConfig
from fvis.zoo.data import CLASSES

COLOURS = ("red", "green", "blue")
DOMINANCE = 0.1
"""A blob pixel's colour channel exceeds the other two by >= 0.33 (see fvis.zoo.data); the grey
background's channels differ by a few hundredths: 0.1 separates them, soft edges included."""


def _run(inputs: list[dict], methods: list[dict], **overrides: object) -> Outcome:
    data = {
        "device": "cpu",
        "inputs": inputs,
        "methods": methods,
        "metrics": None,
        **overrides,
    }
    config = AttributionConfig.model_validate(data)
    return run(build(config, Path.cwd()))


def test_integrated_gradients_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    """sum(a) = f(x) - f(b) for the target logit, within 1% (64 Gauss-Legendre steps)."""
    inputs = [{"kind": "zoo_class", "class": c, "seed": 4} for c in (*COLOURS, "stripes_45")]
    outcome = _run(
        inputs,
        [{"kind": "integrated_gradients", "n_steps": 64, "integration": "gausslegendre"}],
        baseline={"kind": "zeros"},
    )
    plan, result = outcome.plan, outcome.results[0]
    x = plan.images.tensor
    rows = torch.arange(len(x))
    with torch.no_grad():
        gap = (
            plan.network(x)[rows, plan.targets]
            - plan.network(torch.zeros_like(x))[rows, plan.targets]
        )
    total = result.output.raw.sum((1, 2, 3))
    error = ((total - gap).abs() / gap.abs()).tolist()
    with capsys.disabled():
        print("\nIG completeness: relative error per image", [f"{e:.5f}" for e in error])
    assert max(error) < 0.01
    assert result.output.delta is not None
    assert torch.allclose(result.output.delta, total - gap, atol=1e-3 * float(gap.abs().max()))


def blob_masks(images: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """[B, H, W]: pixels whose class colour channel dominates the other two by DOMINANCE."""
    masks = []
    for image, cls in zip(images, classes, strict=True):
        channel = COLOURS.index(CLASSES[cls])
        others = [c for c in range(3) if c != channel]
        masks.append(image[channel] - image[others].amax(0) > DOMINANCE)
    return torch.stack(masks).float()


def inside_fraction(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive mass that lies inside the mask."""
    positive = maps.clamp(min=0)
    return (positive * masks).sum((1, 2)) / positive.sum((1, 2))


def test_gradcam_and_integrated_gradients_find_the_blob(
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = [{"kind": "zoo_class", "class": c, "count": 3, "seed": 0} for c in COLOURS]
    outcome = _run(
        inputs,
        [
            {"kind": "layer_grad_cam", "layer": "conv3"},
            {"kind": "integrated_gradients", "n_steps": 32},
        ],
        baseline={"kind": "constant", "value": 0.5},
        target="predicted",
    )
    plan = outcome.plan
    labels = [label for label in plan.images.labels if label is not None]
    assert plan.targets.tolist() == labels  # the model gets every blob's colour right
    masks = blob_masks(plan.images.tensor, labels)
    area = masks.mean((1, 2))
    lines = [f"\nblob area: {' '.join(f'{a:.2f}' for a in area.tolist())}"]
    for result in outcome.results:
        assert result.output.map is not None
        fraction = inside_fraction(result.output.map, masks)
        lines.append(
            f"{result.prepared.name}: positive mass inside the blob "
            f"{' '.join(f'{f:.2f}' for f in fraction.tolist())} (mean {fraction.mean():.2f})"
        )
        assert fraction.mean() > 0.55, result.prepared.name
        assert (fraction > 1.2 * area).all(), result.prepared.name  # well above chance
    with capsys.disabled():
        print("\n".join(lines))


@pytest.mark.parametrize("space", [{"kind": "blend"}, {"kind": "presence", "keep": 0.8}])
def test_lime_base_finds_the_blob(capsys: pytest.CaptureFixture[str], space: dict) -> None:
    """LimeBase's surrogate on 64 segments of 8x8 px: most positive mass on the blob's
    segments, in whichever interpretable space it samples."""
    inputs = [{"kind": "zoo_class", "class": c, "seed": 0} for c in COLOURS]
    method = {
        "kind": "lime_base",
        "space": space,
        "mask": {"kind": "grid", "size": 8},
        "n_samples": 128,
        "perturbations_per_eval": 64,
    }
    outcome = _run(inputs, [method], baseline={"kind": "constant", "value": 0.5})
    plan, result = outcome.plan, outcome.results[0]
    labels = [label for label in plan.images.labels if label is not None]
    masks = blob_masks(plan.images.tensor, labels)
    assert result.output.map is not None
    fraction = inside_fraction(result.output.map, masks)
    with capsys.disabled():
        values = " ".join(f"{f:.2f}" for f in fraction.tolist())
        print(f"\nlime_base {space}: positive mass inside the blob {values}")
    assert fraction.mean() > 0.55
    assert (fraction > 1.2 * masks.mean((1, 2))).all()  # well above chance
