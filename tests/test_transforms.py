"""Robustness transforms: exact shifts, per-item draws independent of batch position."""

from __future__ import annotations

import torch

from fvis import transforms
from fvis.build import streams_for
from fvis.config import StandardTransform
from fvis.transforms import Jitter, Pad, Pipeline, Rotate, Scale, build_transforms, standard


def test_jitter_shifts_by_whole_pixels() -> None:
    x = torch.rand(1, 3, 12, 12)
    (g,) = streams_for(0, [0])
    dx, dy = torch.randint(-3, 4, (2,), generator=torch.Generator().manual_seed(g.initial_seed()))
    out = Pipeline([Jitter(3)])(x, streams_for(0, [0]))
    expected = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
    # compare away from the borders, where the shifted-in pixels are filled
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert torch.allclose(out[inner], expected[inner], atol=1e-5)


def test_identity_when_amounts_are_zero() -> None:
    x = torch.rand(2, 3, 10, 14)
    pipeline = Pipeline([Jitter(0), Scale(1.0, 1.0), Rotate(0.0)])
    assert torch.allclose(pipeline(x, streams_for(0, [0, 1])), x, atol=1e-5)


def test_pad_then_fill_with_the_pad_value() -> None:
    x = torch.zeros(1, 1, 8, 8)
    out = Pipeline([Pad(2, "constant", 0.5), Scale(0.5, 0.5)])(x, streams_for(0, [0]))
    assert out.shape == (1, 1, 8, 8)  # the padded canvas is cropped back to the image's size
    assert out[0, 0, 0, 0].item() == 0.5  # zooming out brings in the fill value, not black
    assert out[0, 0, 4, 4].item() == 0.0


def test_a_constant_pad_before_geometric_transforms_is_skipped_without_changing_the_image() -> None:
    x = torch.rand(2, 3, 24, 24, requires_grad=True)
    steps = [Jitter(4), Scale(0.8, 1.2), Rotate(20.0)]
    pipeline = Pipeline([Pad(6, "constant", 0.3), *steps])
    assert not any(isinstance(step, Pad) for step in pipeline.steps)
    out = pipeline(x, streams_for(0, [0, 1]))
    # The reference pads for real, transforms the 36 px canvas, then crops its centre.
    canvas = Pipeline(steps)  # no pad given: fills with 0.5, so fill with 0.3 by hand below
    canvas.fill = 0.3
    padded = torch.nn.functional.pad(x, (6,) * 4, value=0.3)
    reference = canvas(padded, streams_for(0, [0, 1]))[..., 6:30, 6:30]
    assert out.shape == x.shape
    assert torch.allclose(out, reference, atol=1e-5)
    grad, reference_grad = (torch.autograd.grad(y.square().sum(), x)[0] for y in (out, reference))
    assert torch.allclose(grad, reference_grad, atol=1e-5)


def test_a_pad_that_a_filter_follows_is_kept() -> None:
    pipeline = Pipeline([Pad(2, "constant", 0.5), transforms.Blur(1.0, 1.0, 1.0)])
    assert isinstance(pipeline.steps[0], Pad)


def test_rotation_keeps_non_square_images_undistorted(monkeypatch) -> None:
    monkeypatch.setattr(transforms, "_uniform", lambda g, lo, hi: hi)  # exactly +90 degrees
    x = torch.zeros(1, 1, 20, 40)
    x[0, 0, 9:11, 14:26] = 1.0  # a 12x2 horizontal bar centred in a 20x40 image
    out = Pipeline([Rotate(90.0)])(x, streams_for(0, [0]))[0, 0]
    rows, cols = (out > 0.5).nonzero().T
    assert out.shape == (20, 40)
    assert cols.min() == 19 and cols.max() == 20  # now 2 wide...
    assert rows.min() == 4 and rows.max() == 15  # ...and 12 tall: no aspect-ratio stretch


def test_each_item_draws_its_own_transform_by_key() -> None:
    x = torch.rand(1, 3, 16, 16).expand(3, -1, -1, -1)
    pipeline = build_transforms([StandardTransform(kind="standard")], (16, 16))
    out = pipeline(x, streams_for(0, ["a", "b", "c"]))
    assert not torch.allclose(out[0], out[1])
    alone = pipeline(x[:1], streams_for(0, ["b"]))
    assert torch.allclose(out[1], alone[0])


def test_standard_preset_scales_with_the_image() -> None:
    big, small = standard((224, 224)), standard((64, 64))
    assert big[0].pixels == 12 and big[1].pixels == 8 and big[-1].pixels == 4
    assert small[0].pixels == 3 and small[1].pixels == 2 and small[-1].pixels == 1


def test_gradient_flows_through_the_pipeline() -> None:
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    pipeline = build_transforms([StandardTransform(kind="standard")], (16, 16))
    pipeline(x, streams_for(0, [0, 1])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
