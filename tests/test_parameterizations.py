"""Cures for high-frequency noise: filters, frequency transforms and penalties, gradient
preconditioning, alpha and transparency outputs, CPPN and spectrum commands, and their effect
on the built-in model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_config
from fvis import filters
from fvis.build import build_plan, streams_for
from fvis.config import (
    BilateralTransform,
    BlurTransform,
    Config,
    OptimSpec,
    PixelParam,
    load_config,
)
from fvis.hooks import IMAGE
from fvis.io import to_pil
from fvis.objectives.algebra import Activations
from fvis.params import build_param
from fvis.render import render
from fvis.transforms import Blur, Pipeline, build_transforms
from fvis.zoo.quality import high_frequency_share

CONFIGS = Path(__file__).parent.parent / "configs"


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- filters


def test_laplacian_pyramid_collapses_back_exactly() -> None:
    x = noise(2, 3, 37, 50)
    levels = filters.pyramid(x, 5)
    assert [tuple(t.shape[-2:]) for t in levels] == [(37, 50), (19, 25), (10, 13), (5, 7), (3, 4)]
    assert torch.allclose(filters.collapse(levels), x, atol=1e-5)


def test_gaussian_blur_keeps_constants_and_removes_high_frequencies() -> None:
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(filters.gaussian_blur(flat, 2.0), flat, atol=1e-6)
    x = noise(1, 3, 64, 64)
    blurred = filters.gaussian_blur(x, 1.5)
    assert high_frequency_share(blurred[0]) < 0.05 < high_frequency_share(x[0])
    # one sigma per item; sigma 0 leaves an item unchanged
    both = filters.gaussian_blur(torch.cat([x, x]), torch.tensor([0.0, 1.5]))
    assert torch.equal(both[0], x[0]) and torch.allclose(both[1], blurred[0], atol=1e-6)


def test_bilateral_smooths_within_regions_and_keeps_edges() -> None:
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1.0
    noisy = step + 0.03 * torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    bilateral = filters.bilateral(noisy, 2.0, 0.2)
    gaussian = filters.gaussian_blur(noisy, 2.0)
    edge = (slice(None), slice(None), slice(None), slice(14, 18))
    assert (bilateral - step)[edge].abs().mean() < 0.5 * (gaussian - step)[edge].abs().mean()
    inside = (slice(None), slice(None), slice(None), slice(2, 12))
    assert (bilateral - step)[inside].std() < 0.5 * (noisy - step)[inside].std()


# ----------------------------------------------------------------------------- transforms


def test_blur_transform_probability_and_per_item_draws() -> None:
    x = noise(3, 3, 32, 32)
    never = Pipeline([Blur(1.0, 2.0, p=0.0)])(x, streams_for(0, ["a", "b", "c"]))
    assert torch.equal(never, x)
    always = Pipeline([Blur(1.0, 2.0, p=1.0)])
    out = always(x, streams_for(0, ["a", "b", "c"]))
    assert all(high_frequency_share(out[i]) < high_frequency_share(x[i]) for i in range(3))
    alone = always(x[1:2], streams_for(0, ["b"]))
    assert torch.allclose(out[1], alone[0])  # an item's sigma is its own draw


def test_filter_transforms_from_specs_keep_gradients() -> None:
    specs = [
        BlurTransform(kind="blur", sigma=(0.5, 1.5), p=0.5),
        BilateralTransform(kind="bilateral"),
    ]
    x = noise(2, 3, 16, 16).requires_grad_()
    build_transforms(specs, (16, 16))(x, streams_for(0, [0, 1])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_alpha_images_are_composited_over_per_item_backgrounds() -> None:
    rgba = torch.cat([torch.full((2, 3, 8, 8), 0.2), torch.zeros(2, 1, 8, 8)], 1)
    rgba.requires_grad_()
    pipeline = build_transforms([], (8, 8), alpha=True)
    out = pipeline(rgba, streams_for(0, [0, 1]))
    assert out.shape == (2, 3, 8, 8)
    assert not torch.allclose(out[0], out[1])  # transparent: two different backgrounds
    opaque = torch.cat([torch.full((2, 3, 8, 8), 0.2), torch.ones(2, 1, 8, 8)], 1)
    assert torch.allclose(pipeline(opaque, streams_for(0, [0, 1])), opaque[:, :3])
    out.sum().backward()
    assert rgba.grad is not None and rgba.grad[:, 3].abs().sum() > 0


# ----------------------------------------------------------------------------- gradient hooks


def _param_with(optim: OptimSpec, **kw: object):
    spec = PixelParam(kind="pixel", decorrelate=False, **kw)  # type: ignore[arg-type]
    param = build_param(
        spec, (32, 32), 3, None, streams_for(0, [0]), preconditioning=optim.preconditioning
    )
    return param


def _image_gradient(param, grad: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    image = param()
    image.register_hook(lambda g: seen.append(g))  # runs after the param's own hooks
    (image * grad).sum().backward()
    return seen[0]


def test_gradient_blur_and_pyramid_normalization_precondition_the_step() -> None:
    raw = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = _image_gradient(_param_with(OptimSpec()), raw)
    assert torch.allclose(plain, raw)
    blurred = _image_gradient(_param_with(OptimSpec(grad_blur=1.5)), raw)
    assert torch.allclose(blurred, filters.gaussian_blur(raw, 1.5), atol=1e-6)
    normalized = _image_gradient(_param_with(OptimSpec(grad_pyramid=4)), raw)
    assert normalized.square().mean() == pytest.approx(raw.square().mean().item(), rel=1e-4)

    def coarse_over_fine(g: torch.Tensor) -> float:
        bands = filters.pyramid(g, 4)
        return (bands[-1].square().mean() / bands[0].square().mean()).sqrt().item()

    # white noise has little coarse-scale power; normalized, every band weighs about the same
    assert coarse_over_fine(raw) < 0.2 and 0.5 < coarse_over_fine(normalized) < 2


def test_alpha_penalty_is_a_term_whose_gradient_pushes_opacity_down(workdir) -> None:
    """`alpha_penalty * mean(alpha)` comes off the objective as a term: d(-score)/d(alpha) is
    penalty / (H * W) at every pixel, nothing on the colours, and it scales with the loss."""
    config = Config.model_validate(
        tiny_config(
            objective={"kind": "l1", "layer": "image", "weight": 0.0},
            param={"kind": "pixel", "size": 8, "alpha": True, "alpha_penalty": 2.0},
        )
    )
    plan = build_plan(config, workdir)
    image = plan.param().detach().requires_grad_()
    assert [leaf.name for leaf in plan.objective.leaves()] == ["l1(image)", "opacity(image)"]
    for scale in (1.0, 1024.0):  # fp16's loss scale multiplies this term like any other
        score = plan.objective(Activations({IMAGE: image}))
        (grad,) = torch.autograd.grad(-score.sum() * scale, image)
        assert torch.allclose(grad[:, 3], torch.full((1, 8, 8), scale * 2.0 / 64))
        assert grad[:, :3].abs().sum() == 0


def test_opacity_is_reported_in_run_json(cli, write_config) -> None:
    config = tiny_config(param={"size": 24, "alpha": True, "alpha_penalty": 0.5})
    run = json.loads((_run(cli, write_config, config) / "run.json").read_text())
    initial, final = run["initial"]["terms"], run["final"]["terms"]
    assert 0 < final["opacity(image)"][0] < initial["opacity(image)"][0] <= 1


# ----------------------------------------------------------------------------- runs, files


def _run(cli, write_config, config: dict, *args: str) -> Path:
    path = write_config(config)
    result = cli("render", path, "--quiet", "--out", path.parent / "run", *args)
    assert result.exit_code == 0, result.output
    return path.parent / "run"


def test_alpha_run_writes_rgba_images_and_transparency_maps(cli, write_config) -> None:
    config = tiny_config(
        param={"size": 24, "batch": 2, "alpha": True, "alpha_penalty": 0.5},
        output={"transparency": True},
    )
    run = _run(cli, write_config, config)
    for b in range(2):
        assert Image.open(run / f"image_{b}.png").mode == "RGBA"
        assert Image.open(run / f"transparency_{b}.png").mode == "RGBA"
    assert Image.open(run / "grid.png").mode == "RGB"  # tiles over a checkerboard
    assert "transparency_1.png" in json.loads((run / "run.json").read_text())["files"]


def test_transparency_map_follows_accumulated_gradients(workdir: Path) -> None:
    from fvis.extras import opacity

    importance = torch.zeros(10, 10)
    importance[2:4, 2:4] = 5.0
    importance[6:8, 6:8] = 1.0
    a = opacity(importance)
    assert a[3, 3] == 1.0 and 0.1 < a[7, 7] < 0.5 and a[0, 0] == 0.0
    image = to_pil(torch.cat([torch.rand(3, 10, 10), a[None]]), alpha=True)
    assert image.mode == "RGBA"


def test_cppn_run_rerenders_at_another_size(cli, write_config) -> None:
    config = tiny_config(param={"size": 24, "batch": 2, "kind": "cppn"}, optim={"steps": 3})
    run = _run(cli, write_config, config)
    weights = run / "cppn.safetensors"
    assert weights.is_file()
    result = cli("cppn", weights, "--size", "48x72", "--out", run / "big")
    assert result.exit_code == 0, result.output
    big = Image.open(run / "big/image_1.png")
    assert big.size == (72, 48)
    small = Image.open(run / "image_1.png").convert("RGB")
    down = big.convert("RGB").resize((36, 24), Image.Resampling.BOX).crop((6, 0, 30, 24))
    assert down.size == small.size  # the 24 px run is the centre of the 48x72 canvas
    # continue the CPPN at a new size from its weights
    again = tiny_config(
        param={"size": 48, "batch": 2, "kind": "cppn", "init": str(weights)}, optim={"steps": 2}
    )
    _run(cli, write_config, again, "--force")
    assert cli("cppn", weights, "--size", "big").exit_code == 2
    (run / "afile").write_text("")
    result = cli("cppn", weights, "--out", run / "afile")
    assert result.exit_code == 2
    assert result.stderr == f"{run / 'afile'}: cannot make the output folder (File exists)\n"


def test_spectrum_command_and_maco_template(cli, workdir: Path) -> None:
    folder = workdir / "images"
    folder.mkdir()
    for i in range(4):
        to_pil(noise(3, 40, 30, seed=i)).save(folder / f"{i}.png")
    result = cli("spectrum", folder, "-o", workdir / "s.safetensors", "--size", "16")
    assert result.exit_code == 0, result.output
    config = tiny_config(
        param={"size": 24, "kind": "maco", "spectrum": "s.safetensors"}, optim={"steps": 2}
    )
    path = workdir / "maco.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    plan = build_plan(load_config(path).config, workdir)
    assert plan.param.template.shape == (3, 24, 13)
    assert cli("spectrum", workdir / "nothing").exit_code == 2
    bad = tiny_config(param={"size": 24, "kind": "maco", "spectrum": "cfg.yaml"})
    path.write_text(yaml.safe_dump(bad))
    result = cli("render", path, "--quiet")
    assert result.exit_code == 2 and "param.spectrum" in result.stderr


def test_blur_penalty_as_objective_term_and_regularizer(cli, write_config) -> None:
    from fvis.objectives.frequency import BlurResidual

    leaf = BlurResidual("image", 1.0)
    assert leaf.value(torch.full((2, 3, 8, 8), 0.4)).abs().max() < 1e-6
    assert (leaf.value(noise(2, 3, 8, 8)) > 0).all()
    config = tiny_config(
        objective="channel(conv2, 3) - 0.01 * blur(image, 2)",
        regularizers=[{"kind": "blur", "sigma": 1.0, "weight": 0.01}],
    )
    run = _run(cli, write_config, config)
    terms = json.loads((run / "run.json").read_text())["final"]["terms"]
    assert "blur(image, 2)" in terms and "blur(image, 1)" in terms


# ----------------------------------------------------------------------------- the built-in model


def _final(config: Path, *overrides: str) -> torch.Tensor:
    loaded = load_config(config, list(overrides))
    return render(build_plan(loaded.config, config.parent)).final.images


def test_fft_and_maco_images_have_less_high_frequency_power_than_pixel(capsys) -> None:
    """Same objective (the green class), steps and seed; pixel images fill with colour noise."""
    sets = ["objective={kind: class_logit, index: 8}", "param.batch=1", "optim.steps=64"]
    config = CONFIGS / "parameterizations.yaml"
    share = {
        kind: high_frequency_share(_final(config, f"param.kind={kind}", *sets)[0])
        for kind in ("pixel", "fft", "maco")
    }
    with capsys.disabled():
        print("\nhigh-frequency share: " + ", ".join(f"{k} {v:.3f}" for k, v in share.items()))
    assert share["fft"] < 0.7 * share["pixel"] and share["maco"] < 0.7 * share["pixel"]


def test_shared_parameters_and_alignment_keep_an_interpolation_aligned(capsys) -> None:
    config = CONFIGS / "interpolation.yaml"
    sets = ["param.batch=4", "optim.steps=64"]
    alone = "objective.terms=[{kind: interpolate, start: 'class_logit(5)', end: 'class_logit(6)'}]"
    aligned = _final(config, *sets)
    independent = _final(config, *sets, "param.shared=0", alone)

    def step(images: torch.Tensor) -> float:
        return (images[1:] - images[:-1]).abs().mean().item()

    with capsys.disabled():
        print(
            f"\nneighbour distance: {step(aligned):.3f} with shared parameters and alignment, "
            f"{step(independent):.3f} without"
        )
    assert step(aligned) < 0.6 * step(independent)


@pytest.mark.parametrize("command", ["spectrum", "cppn"])
def test_new_commands_have_help(cli, command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "--out" in result.stdout and "--size" in result.stdout
