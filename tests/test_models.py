"""Model sources: torchvision (offline cache), checkpoints, TorchScript, factories; all local."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fvis.config import (
    CheckpointModelSpec,
    FactoryModelSpec,
    InputSpec,
    TorchScriptModelSpec,
    TorchvisionModelSpec,
)
from fvis.errors import SpecError, UserError
from fvis.models import IMAGENET_MEAN, build_network

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


@pytest.fixture
def tiny(workdir: Path) -> torch.nn.Module:
    sys.modules.pop("tinynets", None)
    sys.path.insert(0, str(workdir))
    try:
        return importlib.import_module("tinynets").convnet()
    finally:
        sys.path.remove(str(workdir))


def _same_function(network: torch.nn.Module, reference: torch.nn.Module, size: int = 16) -> None:
    x = torch.rand(2, 3, size, size)
    assert torch.allclose(network(x), reference(x), atol=1e-6)


def test_torchvision_offline_names_the_cache_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    spec = TorchvisionModelSpec(source="torchvision", name="resnet18", weights="IMAGENET1K_V1")
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    # offline: the download fails and the error says where to put the file
    monkeypatch.setattr(
        "torch.hub.download_url_to_file",
        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")),
    )
    with pytest.raises(UserError, match=f"put the file at {expected}"):
        build_network(spec, tmp_path)
    # with the file in torchvision's cache, it loads without any network
    torch.manual_seed(0)
    import torchvision

    reference = torchvision.models.resnet18()
    expected.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), expected)
    network = build_network(spec, tmp_path)
    assert network.prep.mean == IMAGENET_MEAN and network.prep.size == (224, 224)
    x = torch.rand(1, 3, 64, 64)
    normalized = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        (0.229, 0.224, 0.225)
    ).view(1, 3, 1, 1)
    assert torch.allclose(network(x), reference.eval()(normalized), atol=1e-4)


def test_torchvision_unknown_names() -> None:
    with pytest.raises(SpecError, match="did you mean resnet50"):
        build_network(TorchvisionModelSpec(source="torchvision", name="resnet5O"), Path())
    with pytest.raises(SpecError, match="unknown ResNet18_Weights member 'IMAGENET'"):
        build_network(
            TorchvisionModelSpec(source="torchvision", name="resnet18", weights="IMAGENET"),
            Path(),
        )


def test_torchvision_random_weights() -> None:
    spec = TorchvisionModelSpec(source="torchvision", name="resnet18", weights=None)
    network = build_network(spec, Path())
    assert not any(p.requires_grad for p in network.parameters())
    assert not any(getattr(m, "inplace", False) for m in network.modules())


@pytest.mark.parametrize("fmt", ["pt", "nested", "dataparallel", "safetensors"])
def test_checkpoint_formats(workdir: Path, tiny: torch.nn.Module, fmt: str) -> None:
    state = tiny.state_dict()
    path = workdir / f"w.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "nested":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif fmt == "dataparallel":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    spec = CheckpointModelSpec(source="checkpoint", path=Path(path.name), arch="tinynets:convnet")
    network = build_network(spec, workdir)
    _same_function(network, tiny.eval())


class Unsafe:
    """Any non-tensor object: weights_only refuses to unpickle it."""


def test_checkpoint_pickle_refused(workdir: Path) -> None:
    torch.save({"x": Unsafe()}, workdir / "evil.pt")
    spec = CheckpointModelSpec(source="checkpoint", path=Path("evil.pt"), arch="tinynets:convnet")
    with pytest.raises(
        UserError, match=r"weights_only=True\): it holds a Python object \(.*Unsafe\)"
    ):
        build_network(spec, workdir)


def test_checkpoint_corrupt_and_mismatched(workdir: Path, tiny: torch.nn.Module) -> None:
    (workdir / "bad.pt").write_bytes(b"not a checkpoint at all")
    spec = CheckpointModelSpec(source="checkpoint", path=Path("bad.pt"), arch="tinynets:convnet")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        build_network(spec, workdir)
    state = tiny.state_dict()
    state["extra.weight"] = state.pop("0.weight")
    torch.save(state, workdir / "keys.pt")
    spec = CheckpointModelSpec(source="checkpoint", path=Path("keys.pt"), arch="tinynets:convnet")
    with pytest.raises(UserError, match=r"missing keys: 0\.weight; unexpected keys: extra\.weight"):
        build_network(spec, workdir)


def test_checkpoint_into_a_torchvision_arch(workdir: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.squeezenet1_1(num_classes=7)
    save_file(reference.state_dict(), str(workdir / "sq.safetensors"))
    spec = CheckpointModelSpec(
        source="checkpoint",
        path=Path("sq.safetensors"),
        arch="squeezenet1_1",
        kwargs={"num_classes": 7},
        input=InputSpec(mean=[0, 0, 0], std=[1, 1, 1]),
    )
    _same_function(build_network(spec, workdir), reference.eval(), size=64)


def test_torchscript(workdir: Path, tiny: torch.nn.Module) -> None:
    torch.jit.save(torch.jit.trace(tiny.eval(), torch.rand(1, 3, 16, 16)), workdir / "m.ts")
    network = build_network(TorchScriptModelSpec(source="torchscript", path=Path("m.ts")), workdir)
    _same_function(network, tiny)
    (workdir / "fake.ts").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TorchScript file"):
        build_network(TorchScriptModelSpec(source="torchscript", path=Path("fake.ts")), workdir)


def test_torchscript_inner_layers_are_refused(workdir: Path, tiny: torch.nn.Module) -> None:
    from fvis.hooks import resolve_layer

    torch.jit.save(torch.jit.script(tiny.eval()), workdir / "m.ts")
    network = build_network(TorchScriptModelSpec(source="torchscript", path=Path("m.ts")), workdir)
    assert resolve_layer("output", {}, network.model, ("objective",)) == "output"
    with pytest.raises(SpecError, match="only 'output' can be captured"):
        resolve_layer("0", {}, network.model, ("objective", "layer"))


def test_factory_kwargs_and_preprocessing(workdir: Path) -> None:
    spec = FactoryModelSpec(
        source="factory",
        factory="tinynets:convnet",
        kwargs={"classes": 3},
        input=InputSpec(range=(0, 255), mean=[100, 110, 120], std=[50, 50, 50], size=(32, 32)),
    )
    network = build_network(spec, workdir)
    assert network.prep.size == (32, 32)
    x = torch.rand(1, 3, 8, 8)
    expected = (x * 255 - torch.tensor([100.0, 110, 120]).view(1, 3, 1, 1)) / 50
    assert torch.allclose(network(x), network.model(expected), atol=1e-5)
    assert network(x).shape == (1, 3)


def test_preprocessing_lengths_are_checked(workdir: Path) -> None:
    spec = FactoryModelSpec(
        source="factory", factory="tinynets:convnet", input=InputSpec(mean=[0.5, 0.5])
    )
    with pytest.raises(SpecError, match="has 2 values but the model takes 3 channels"):
        build_network(spec, workdir)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "x = 1 / 0\n",
            "model.factory: importing 'broken' failed: {dir}/broken.py:1: "
            "ZeroDivisionError: division by zero",
        ),
        ("def f(:\n", "model.factory: importing 'broken' failed: {dir}/broken.py:1: SyntaxError"),
        (
            "import not_installed_dep\n",
            "model.factory: cannot import 'broken': it imports "
            "'not_installed_dep', which is not installed",
        ),
        (
            "def f():\n    raise ValueError('no weights')\n",
            "model.factory: broken:f failed: {dir}/broken.py:2: ValueError: no weights",
        ),
    ],
)
def test_a_failing_factory_module_is_one_line_at_its_place(
    workdir: Path, source: str, message: str
) -> None:
    (workdir / "broken.py").write_text(source)
    sys.modules.pop("broken", None)
    spec = FactoryModelSpec(source="factory", factory="broken:f")
    with pytest.raises(SpecError) as info:
        build_network(spec, workdir)
    located = ".".join(map(str, info.value.loc)) + ": " + info.value.message
    assert located.startswith(message.format(dir=workdir.resolve()))  # SyntaxError's text varies


def test_a_missing_factory_module_says_where_fvis_looked(workdir: Path) -> None:
    spec = FactoryModelSpec(source="factory", factory="nowhere_module:f")
    with pytest.raises(SpecError) as info:
        build_network(spec, workdir)
    assert info.value.message == (
        f"cannot import 'nowhere_module': no module 'nowhere_module' in the config's folder "
        f"({workdir.resolve()}) or on the Python path (installed packages, PYTHONPATH)"
    )


def test_torchvision_kwargs_the_builder_cannot_use_are_one_line() -> None:
    spec = TorchvisionModelSpec(
        source="torchvision", name="resnet18", weights=None, kwargs={"num_classes": -1}
    )
    with pytest.raises(SpecError) as info:
        build_network(spec, Path())
    assert info.value.loc == ("model", "kwargs")
    assert info.value.message.startswith("the model builder failed: Trying to create tensor")


def test_a_checkpoint_arch_that_builds_no_module_is_one_line(workdir: Path) -> None:
    (workdir / "notnet.py").write_text("def build():\n    return 'a string'\n")
    torch.save({"a": torch.zeros(2)}, workdir / "d.pt")
    spec = CheckpointModelSpec(source="checkpoint", path=Path("d.pt"), arch="notnet:build")
    with pytest.raises(SpecError) as info:
        build_network(spec, workdir)
    assert (info.value.loc, info.value.message) == (
        ("model", "arch"),
        "notnet:build returned a str, not a torch nn.Module",
    )
