"""Image parameterizations: shape, range, gradients, determinism, init images, shared parameters,
alpha, the 1/f spectrum, CPPN sizes and MACO's fixed magnitude."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter

from fvis.build import build_plan, streams_for
from fvis.compare import ssim
from fvis.config import FFTParam, Param, PixelParam, load_config
from fvis.io import read_image, to_pil
from fvis.params import (
    IMAGENET_COLOR_SQRT,
    CPPNImage,
    FourierImage,
    MacoImage,
    build_param,
    color_matrix,
    energy_std,
    load_cppn,
    radial_frequency,
)
from fvis.render import Renderer
from fvis.zoo.data import generate_class

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KINDS = ["pixel", "fft", "laplacian", "lowres", "cppn", "maco"]
EXACT = ["pixel", "fft", "laplacian", "maco"]  # kinds that can hold any image


def spec(kind: str, **kw: object) -> Param:
    return TypeAdapter(Param).validate_python({"kind": kind, **kw})


def make(kind: str, seed: int = 0, batch: int = 2, size=(16, 24), channels: int = 3, **kw):
    return build_param(
        spec(kind, **kw), size, channels, None, streams_for(seed, list(range(batch)))
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("squash", ["sigmoid", "clamp"])
def test_shape_range_and_gradient(kind: str, squash: str) -> None:
    param = make(kind, squash=squash)
    image = param()
    assert image.shape == (2, 3, 16, 24)
    assert image.min() >= 0 and image.max() <= 1
    image.mean().backward()
    grads = [p.grad for p in param.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_and_shared_parameters_get_gradients(kind: str) -> None:
    param = make(kind, alpha=True, shared=0.5)
    image = param()
    assert image.shape == (2, 4, 16, 24)  # colours and alpha
    assert image.min() >= 0 and image.max() <= 1
    image[:, :3].mean().backward(retain_graph=True)
    image[:, 3].mean().backward()
    names = [name for name, _ in param.named_parameters()]
    assert any(n.startswith("own.") for n in names) and any(n.startswith("common.") for n in names)
    for name, p in param.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_and_item_keyed(kind: str) -> None:
    assert torch.equal(make(kind, seed=1)(), make(kind, seed=1)())
    assert not torch.equal(make(kind, seed=1)(), make(kind, seed=2)())
    # item 1 of a batch of 2 equals item 1 of a batch of 3: streams are keyed by item
    assert torch.equal(make(kind, batch=2)()[1], make(kind, batch=3)()[1])
    # so is the common part: the same in any batch
    assert torch.equal(make(kind, batch=2, shared=0.3)()[1], make(kind, batch=3, shared=0.3)()[1])


def test_shared_weight_mixes_a_common_component() -> None:
    alone = make("fft", batch=3, shared=0.0)()
    same = make("fft", batch=3, shared=1.0)()
    half = make("fft", batch=3, shared=0.5)()
    assert torch.allclose(same[0], same[1]) and torch.allclose(same[1], same[2])
    assert not torch.allclose(half[0], half[1])
    spread = [(x - x.mean((2, 3), keepdim=True)).std().item() for x in (alone, half, same)]
    assert spread[1] == pytest.approx(spread[0], rel=0.3)  # mixing keeps the init's spread


def test_grayscale_and_no_decorrelation() -> None:
    spec_ = PixelParam(kind="pixel", decorrelate=False)
    assert build_param(spec_, (8, 8), 1, None, streams_for(0, [0]))().shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="decorrelate needs 3 channels"):
        build_param(PixelParam(kind="pixel"), (8, 8), 1, None, streams_for(0, [0]))


def test_color_matrix_is_normalized_to_unit_largest_column() -> None:
    m = color_matrix(IMAGENET_COLOR_SQRT)
    assert m.norm(dim=0).max().item() == pytest.approx(1.0)


def test_fft_scale_follows_inverse_frequency() -> None:
    param = FourierImage(FFTParam(decay=1.0), (32, 32), 3, None)
    scale = param.scale / param.scale[0, 0]
    # frequency 1/32 (one cycle across the image) is the clamp floor: same scale as DC;
    # frequency 4/32 has a quarter of it; (4, 3)/32 has 1/5 of it (a 3-4-5 triangle).
    assert scale[0, 1].item() == pytest.approx(1.0)
    assert scale[0, 4].item() == pytest.approx(0.25)
    assert scale[3, 4].item() == pytest.approx(0.2)


def test_fft_scale_stops_growing_beyond_the_period() -> None:
    """Frequencies under 1/period take the scale of 1/period; without a period (lucid), the
    floor is one cycle across the image."""
    floored = FourierImage(FFTParam(decay=1.0, period=32), (128, 128), 3, None).scale
    lucid = FourierImage(FFTParam(decay=1.0, period=None), (128, 128), 3, None).scale
    assert torch.equal(floored[0, :5], floored[0, :1].expand(5))  # f = 0 .. 4/128 = 1/32
    assert floored[0, 8].item() == pytest.approx(floored[0, 0].item() / 2)  # f = 1/16
    assert torch.equal(floored[0, 4:], lucid[0, 4:])
    assert lucid[0, 4].item() == pytest.approx(lucid[0, 0].item() / 4)


def test_an_image_no_larger_than_the_period_keeps_lucids_scale() -> None:
    for size in ((64, 64), (48, 64), (32, 32)):
        default = FourierImage(FFTParam(), size, 3, None).scale
        assert torch.equal(default, FourierImage(FFTParam(period=None), size, 3, None).scale)


def test_the_period_keeps_a_large_render_from_collapsing_into_image_wide_fields() -> None:
    """192 px, three items from three starts: lucid's floor puts a quarter to a third of each
    render's power in periods over 64 px and the items look alike; the default period 64 takes
    that share down and the items apart (mean pairwise 1 - SSIM up)."""

    def render(period: str) -> torch.Tensor:
        sets = [
            "param.size=192",
            f"param.period={period}",
            "optim.steps=48",
            'objective={"kind": "channel", "layer": "conv3", "channel": 0}',
        ]
        config = load_config(CONFIGS / "quickstart.yaml", sets).config
        return Renderer(build_plan(config, CONFIGS)).run().final.images

    def coarse_share(image: torch.Tensor) -> float:
        grey = image.mean(0) - image.mean()
        power = torch.fft.rfft2(grey).abs().square()
        coarse = radial_frequency((grey.shape[0], grey.shape[1])) < 1 / 64
        return float(power[coarse].sum() / power.sum())

    def diversity(images: torch.Tensor) -> float:
        pairs = list(itertools.combinations(images, 2))
        return sum(1 - ssim(a, b) for a, b in pairs) / len(pairs)

    lucid, default = render("null"), render("64")
    assert all(coarse_share(a) > 1.5 * coarse_share(b) for a, b in zip(lucid, default, strict=True))
    assert diversity(default) > diversity(lucid) + 0.02


def test_fft_is_orthonormal() -> None:
    """Unit coefficients give an image of the same energy: learning rates carry across sizes."""
    for size in ((16, 16), (64, 48)):
        param = FourierImage(FFTParam(decay=0.0), size, 1, None)
        h, w = size
        coeffs = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0))
        spectrum = torch.view_as_real(torch.fft.rfft2(coeffs, norm="ortho"))
        out = param.generate({"spectrum": spectrum}, size) / param.scale[0, 0]
        assert torch.allclose(out, coeffs, atol=1e-5)


# ----------------------------------------------------------------------------- init images


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A detailed photo (a generated red-blob image with texture and noise) and a smooth one."""
    folder = tmp_path_factory.mktemp("photos")
    photo = generate_class(7, 1, torch.Generator().manual_seed(0))[0]
    smooth = F.avg_pool2d(photo[None], 9, 1, 4, count_include_pad=False)[0]
    paths = {"detailed": folder / "detailed.png", "smooth": folder / "smooth.png"}
    to_pil(photo).save(paths["detailed"])
    to_pil(smooth).save(paths["smooth"])
    return paths


def _load(path: Path, size: int = 32) -> torch.Tensor:
    return read_image(path, "RGB", (size, size))


@pytest.mark.parametrize("kind", KINDS)
def test_init_image_is_the_image_at_step_0(kind: str, photos: dict[str, Path]) -> None:
    """Exact kinds reproduce a detailed photo; lowres and cppn, which cannot hold every
    detail, fit a smooth one closely."""
    which = "detailed" if kind in EXACT else "smooth"
    target = _load(photos[which])
    param = make(kind, batch=2, size=(32, 32), init=str(photos[which]), shared=0.5)
    image = param().detach()
    error = (image - target).abs()
    print(f"\n{kind} init ({which} photo): max error {error.max():.4f}, mean {error.mean():.4f}")
    if kind in EXACT:
        assert error.max() < 4e-3  # the sigmoid cannot reach 0 or 1 exactly (logit clip 1e-3)
    else:
        assert error.mean() < 0.02 and error.max() < 0.1


def test_init_image_path_is_relative_to_the_config(write_config, workdir: Path) -> None:
    from conftest import tiny_config
    from fvis.build import build_plan
    from fvis.config import load_config

    to_pil(torch.rand(3, 24, 24)).save(workdir / "start.png")
    path = write_config(tiny_config(param={"size": 24, "kind": "pixel", "init": "start.png"}))
    plan = build_plan(load_config(path).config, path.parent)
    assert (plan.param()[0] - _load(workdir / "start.png", 24)).abs().max() < 4e-3


def test_init_errors_point_at_the_key(cli, write_config) -> None:
    from conftest import tiny_config

    missing = write_config(tiny_config(param={"size": 24, "init": "nope.png"}))
    result = cli("render", missing, "--quiet")
    assert result.exit_code == 2 and "param.init" in result.stderr and "nope.png" in result.stderr
    weights = write_config(tiny_config(param={"size": 24, "init": "cfg.yaml"}), "w.yaml")
    result = cli("render", weights, "--quiet")
    assert result.exit_code == 2 and "param.init" in result.stderr


# ----------------------------------------------------------------------------- cppn, maco


def test_cppn_renders_at_two_sizes_from_the_same_weights(tmp_path: Path) -> None:
    param = make("cppn", batch=2, size=(32, 48))
    assert isinstance(param, CPPNImage)
    small, large = param.render_at((32, 48)), param.render_at((64, 96))
    assert torch.allclose(small, param().detach())
    assert large.shape == (2, 3, 64, 96)
    # the large image is the same pattern, sampled twice as finely
    assert (F.avg_pool2d(large, 2) - small).abs().mean() < 0.01
    # saved and loaded, the weights render the same images at any size
    from safetensors.torch import save_file

    tensors, meta = param.save()
    save_file(tensors, tmp_path / "cppn.safetensors", metadata=meta)
    again = load_cppn(tmp_path / "cppn.safetensors", (64, 96))
    assert torch.allclose(again.render_at((64, 96)), large, atol=1e-5)


def test_maco_magnitude_stays_equal_to_the_template_after_optimization() -> None:
    param = make("maco", batch=2, size=(32, 40))
    assert isinstance(param, MacoImage)
    phase_before = param.own["phase"].detach().clone()
    adam = torch.optim.Adam(param.parameters(), lr=0.1)
    target = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    for _ in range(25):
        loss = (param() - target).square().mean()
        adam.zero_grad()
        loss.backward()
        adam.step()
    assert (param.own["phase"] - phase_before).abs().mean() > 0.05  # the phase did move
    basis = param.basis().detach()
    magnitude = torch.fft.rfft2(basis - basis.mean((2, 3), keepdim=True), norm="ortho").abs()
    template = param.template.expand_as(magnitude)
    assert torch.allclose(magnitude, template, atol=1e-4, rtol=1e-4)
    # the power law's per-pixel standard deviation is param.contrast
    assert energy_std(param.template, (32, 40)) == pytest.approx(torch.ones(3), rel=1e-5)


def test_maco_init_image_keeps_its_own_magnitude(photos: dict[str, Path]) -> None:
    param = make("maco", batch=1, size=(32, 32), init=str(photos["detailed"]))
    basis = param.basis().detach()
    magnitude = torch.fft.rfft2(basis - basis.mean((2, 3), keepdim=True), norm="ortho").abs()
    assert torch.allclose(magnitude[0], param.template, atol=1e-3)
