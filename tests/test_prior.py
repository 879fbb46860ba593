"""Learned priors: the denoiser, its training (deterministic, resumable), the `prior` objective
(its value and gradient by hand), its YAML and CLI errors, and the shipped prior's effect."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from fvis import prior, zoo
from fvis.config import ZooModelSpec
from fvis.config.data import DATA
from fvis.data import open_source
from fvis.errors import Interrupted, UserError
from fvis.io import read_image
from fvis.models import build_network
from fvis.zoo.quality import high_frequency_share

ROOT = Path(__file__).resolve().parent.parent
TINY = prior.Settings(steps=12, batch=8, crop=16, size=32, width=8, depth=3)


def shapes(count: int = 100, size: int = 32) -> object:
    return open_source(DATA.validate_python(f"zoo:shapes:{count}"), Path.cwd(), (size, size), 3)


def test_the_denoiser_subtracts_the_noise_it_predicts_at_any_size() -> None:
    model = prior.Denoiser(width=8, depth=3)
    for size in (16, 37):
        x = torch.rand(2, 3, size, size)
        assert torch.equal(model(x), x - model.body(x))
    torch.nn.init.zeros_(model.body[-1].weight)
    torch.nn.init.zeros_(model.body[-1].bias)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(model(x), x)  # predicts no noise: the image is left as it is


def test_training_is_deterministic_and_learns_to_denoise(tmp_path: Path) -> None:
    longer = dataclasses.replace(TINY, steps=150)
    trained = [prior.train(shapes(), longer, tmp_path / f"{n}.safetensors") for n in "ab"]
    assert trained[0].path.read_bytes() == trained[1].path.read_bytes()
    assert trained[0].gain_db > 1.0  # the denoised crops are closer to the clean ones
    model = prior.load(trained[0].path)
    assert (model.width, model.depth, model.channels) == (8, 3, 3)
    assert not any(p.requires_grad for p in model.parameters())


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    def stop_at_5(step: int, total: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    out = tmp_path / "p.safetensors"
    with pytest.raises(Interrupted, match=r"^interrupted at step 5 of 12; kept in .*--resume"):
        prior.train(shapes(), TINY, out, progress=stop_at_5)
    assert prior.partial_path(out).is_file() and not out.exists()
    with pytest.raises(UserError, match="other settings"):
        prior.train(shapes(), dataclasses.replace(TINY, seed=1), out, resume=True)
    prior.train(shapes(), TINY, out, resume=True)
    assert not prior.partial_path(out).exists()
    whole = prior.train(shapes(), TINY, tmp_path / "whole.safetensors")
    assert out.read_bytes() == whole.path.read_bytes()


def test_the_prior_term_is_half_the_squared_residual_with_the_residual_as_gradient() -> None:
    """With D(x) = x - 0.1 everywhere, 1/2 ||x - D(x)||^2 = 1/2 0.01 C H W, and the gradient
    is x - D(x) = 0.1 at every pixel (none flows through D)."""
    model = prior.Denoiser(width=8, depth=3)
    torch.nn.init.zeros_(model.body[-1].weight)
    torch.nn.init.constant_(model.body[-1].bias, 0.1)
    term = prior.DenoiserPrior(model, "test")
    x = torch.rand(2, 3, 10, 10, requires_grad=True)
    value = term.value(x)
    assert torch.allclose(value, torch.full((2,), 0.5 * 0.01 * 300))
    value.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.1))
    assert term.name == "prior('test')"


def prior_config(tmp_path: Path, file: str, weight: float = 1.0) -> Path:
    config = {
        "name": "with-prior",
        "model": {"source": "zoo", "name": "shapes"},
        "objective": {"kind": "class_logit", "index": 5},
        "regularizers": [{"kind": "prior", "file": file, "weight": weight}],
        "param": {"kind": "pixel", "size": 32},
        "optim": {"steps": 4},
    }
    path = tmp_path / "prior.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_render_with_the_prior_records_its_term(tmp_path: Path, cli) -> None:
    trained = prior.train(shapes(), TINY, tmp_path / "tiny.safetensors")
    path = prior_config(tmp_path, trained.path.name)  # relative to the config's folder
    result = cli("render", path, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any(name.startswith("prior('tiny.safetensors')") for name in run["final"]["terms"])


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("missing.safetensors", "regularizers[0].file: no such file: "),
        ("not-a-prior.safetensors", "not an fvis prior (train one with `fvis prior train`)"),
        ("zoo:nope", "regularizers[0].file: unknown zoo model 'nope'"),
    ],
)
def test_a_bad_prior_file_is_one_line_at_its_yaml_path(
    tmp_path: Path, cli, file: str, message: str
) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "not-a-prior.safetensors"))
    path = prior_config(tmp_path, file)
    result = cli("render", path, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}:") and message in line


def test_a_changed_shipped_prior_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = dataclasses.replace(zoo.MODELS["shapes"], prior_sha256="0" * 64)
    monkeypatch.setitem(zoo.MODELS, "shapes", entry)
    with pytest.raises(ValueError, match="corrupt or was replaced; reinstall fvis"):
        zoo.prior_file("shapes")


def test_the_shipped_prior_takes_the_fine_noise_out_of_a_pixel_render(tmp_path: Path, cli) -> None:
    """Pixel parameterization, class 'curves', 64 steps: the prior's pull toward the data's
    images lowers the high-frequency share of the render, which still shows its class."""
    shares = {}
    for weight in (0.0, 2.0):
        path = prior_config(tmp_path, "zoo:shapes", weight)
        sets = ["--set", "param.size=64", "--set", "optim.steps=64"]
        result = cli("render", path, "--out", tmp_path / f"w{weight}", "--quiet", *sets)
        assert result.exit_code == 0, result.output
        shares[weight] = high_frequency_share(read_image(tmp_path / f"w{weight}" / "image_0.png"))
    assert shares[2.0] < 0.5 * shares[0.0], shares


def test_prior_train_writes_a_prior_and_refuses_to_overwrite_it(tmp_path: Path, cli) -> None:
    args = ["prior", "train", "--data", "zoo:shapes:50", "--steps", "3", "--size", "32"]
    out = tmp_path / "p.safetensors"
    result = cli(*args, "--crop", "16", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and prior.load(out).channels == 3
    again = cli(*args, "--crop", "16", "-o", out, "-q")
    assert again.exit_code == 2 and "exists; pass --force" in again.stderr
    bad = cli(*args, "--crop", "64", "-o", tmp_path / "q.safetensors")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "--crop 64: larger than the images (--size 32)"


@pytest.mark.slow
def test_training_the_shipped_prior_again_reproduces_it(tmp_path: Path, cli) -> None:
    """`fvis prior train --data zoo:shapes:5000`, the command that made the shipped file: the
    same bytes on the machine that made it; elsewhere (other kernels) a prior as good."""
    out = tmp_path / "shapes-prior.safetensors"
    result = cli("prior", "train", "--data", "zoo:shapes:5000", "-o", out)
    assert result.exit_code == 0, result.output
    print(result.stderr.strip().splitlines()[-1])
    shipped = zoo.prior_file("shapes")
    if out.read_bytes() == shipped.read_bytes():
        return
    from safetensors import safe_open

    gains = []
    for path in (out, shipped):
        with safe_open(str(path), "pt") as handle:
            gains.append(float(handle.metadata()["gain_db"]))
    assert abs(gains[0] - gains[1]) < 0.3, gains


def test_the_shuffled_control_keeps_every_weight_and_moves_each() -> None:
    real = build_network(ZooModelSpec(), Path.cwd()).state_dict()
    shuffled = [build_network(ZooModelSpec(control="shuffled"), Path.cwd()).state_dict()]
    shuffled.append(build_network(ZooModelSpec(control="shuffled"), Path.cwd()).state_dict())
    for name, tensor in real.items():
        assert torch.equal(shuffled[0][name], shuffled[1][name])  # from seed 0, every time
        if tensor.is_floating_point() and tensor.numel() > 8:
            assert torch.equal(
                tensor.flatten().sort().values, shuffled[0][name].flatten().sort().values
            )
            assert not torch.equal(tensor, shuffled[0][name]), name


def test_a_prior_with_control_renders_the_control_and_compares(tmp_path: Path, cli) -> None:
    """control.json: per item the SSIM of the render and its control, and the objective both
    reach on the real network, the control's as the real network scores its PNG."""
    config = yaml.safe_load(prior_config(tmp_path, "zoo:shapes", 0.25).read_text())
    config["regularizers"][0]["control"] = True
    config["param"] = {"kind": "fft", "size": 32, "batch": 2}
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    result = cli("render", path, "--out", run_dir)
    assert result.exit_code == 0, result.output
    assert f"{run_dir / 'control.json'}: the control render (shuffled weights) has SSIM" in (
        result.stderr
    )
    measures = json.loads((run_dir / "control.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    assert measures["objective"]["render"] == run["final"]["objective"]
    assert len(measures["ssim"]) == 2 and all(-1 <= s < 0.9 for s in measures["ssim"])
    control = torch.stack([read_image(run_dir / "control" / f"image_{b}.png") for b in (0, 1)])
    network = build_network(ZooModelSpec(), Path.cwd())
    denoiser = prior.load(zoo.prior_file("shapes"))
    with torch.no_grad():
        logit = network(control)[:, 5]
        penalty = 0.5 * (control - denoiser(control)).square().flatten(1).sum(1)
    expected = (logit - 0.25 * penalty).tolist()
    assert measures["objective"]["control"] == pytest.approx(expected, abs=0.05)
    again = cli("render", prior_config(tmp_path, "zoo:shapes"), "--out", run_dir, "--force", "-q")
    assert again.exit_code == 0, again.output
    assert not (run_dir / "control.json").exists() and not any((run_dir / "control").glob("*.png"))


@pytest.mark.parametrize(
    ("objective", "regularizers", "wanted"),
    [
        ({"kind": "class_logit", "index": 5}, [{"kind": "prior"}], False),
        ({"kind": "class_logit", "index": 5}, [{"kind": "prior", "control": True}], True),
        (
            {
                "kind": "sum",
                "terms": [
                    {"kind": "class_logit", "index": 5},
                    {"kind": "prior", "weight": -0.25, "control": True},
                ],
            },
            [],
            True,
        ),
    ],
)
def test_a_control_is_rendered_where_a_prior_term_asks_for_it(
    tmp_path: Path, objective: dict, regularizers: list, wanted: bool
) -> None:
    from fvis import control
    from fvis.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"objective": objective, "regularizers": regularizers}))
    assert control.wanted(load_config(path, []).config) is wanted
