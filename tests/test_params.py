"""Image parameterizations: shape, range, gradients, determinism, and the 1/f spectrum."""

from __future__ import annotations

import pytest
import torch

from fvis.build import streams_for
from fvis.config import FFTParam, PixelParam
from fvis.params import IMAGENET_COLOR_SQRT, FourierImage, build_param, color_matrix


def make(kind: str, seed: int = 0, batch: int = 2, size=(16, 24), **kw) -> torch.nn.Module:
    spec = FFTParam(**kw) if kind == "fft" else PixelParam(kind="pixel", **kw)
    return build_param(spec, size, 3, None, streams_for(seed, list(range(batch))))


@pytest.mark.parametrize("kind", ["pixel", "fft"])
@pytest.mark.parametrize("squash", ["sigmoid", "clamp"])
def test_shape_range_and_gradient(kind: str, squash: str) -> None:
    param = make(kind, squash=squash)
    image = param()
    assert image.shape == (2, 3, 16, 24)
    assert image.min() >= 0 and image.max() <= 1
    image.mean().backward()
    grads = [p.grad for p in param.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", ["pixel", "fft"])
def test_seeded_and_item_keyed(kind: str) -> None:
    assert torch.equal(make(kind, seed=1)(), make(kind, seed=1)())
    assert not torch.equal(make(kind, seed=1)(), make(kind, seed=2)())
    # item 1 of a batch of 2 equals item 1 of a batch of 3: streams are keyed by item
    assert torch.equal(make(kind, batch=2)()[1], make(kind, batch=3)()[1])


def test_grayscale_and_no_decorrelation() -> None:
    spec = PixelParam(kind="pixel", decorrelate=False)
    assert build_param(spec, (8, 8), 1, None, streams_for(0, [0]))().shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="decorrelate needs 3 channels"):
        build_param(PixelParam(kind="pixel"), (8, 8), 1, None, streams_for(0, [0]))


def test_color_matrix_is_normalized_to_unit_largest_column() -> None:
    m = color_matrix(IMAGENET_COLOR_SQRT)
    assert m.norm(dim=0).max().item() == pytest.approx(1.0)


def test_fft_scale_follows_inverse_frequency() -> None:
    param = FourierImage(FFTParam(decay=1.0), (32, 32), 3, None, streams_for(0, [0]))
    scale = param.scale / param.scale[0, 0]
    # frequency 1/32 (one cycle across the image) is the clamp floor: same scale as DC;
    # frequency 4/32 has a quarter of it; (4, 3)/32 has 1/5 of it (a 3-4-5 triangle).
    assert scale[0, 1].item() == pytest.approx(1.0)
    assert scale[0, 4].item() == pytest.approx(0.25)
    assert scale[3, 4].item() == pytest.approx(0.2)


def test_fft_is_orthonormal() -> None:
    """Unit coefficients give an image of the same energy: learning rates carry across sizes."""
    for size in ((16, 16), (64, 48)):
        param = FourierImage(FFTParam(decay=0.0), size, 1, None, streams_for(0, [0]))
        h, w = size
        coeffs = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0))
        spectrum = torch.fft.rfft2(coeffs, norm="ortho")
        with torch.no_grad():
            param.spectrum.copy_(torch.view_as_real(spectrum))
        out = param.basis() / param.scale[0, 0]
        assert torch.allclose(out, coeffs, atol=1e-5)
