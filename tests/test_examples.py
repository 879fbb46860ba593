"""`fvis examples`: running top-K per unit, receptive fields, crops, resume, and the command."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from conftest import TINY_MODEL, tiny_config
from fvis import examples
from fvis.config import ZooModelSpec
from fvis.data import Batch, Images
from fvis.errors import Interrupted, UserError
from fvis.examples import INDEX, TENSORS, Layer, TopK
from fvis.models import build_network
from fvis.receptive import Field, field
from fvis.scan import Scan
from fvis.zoo import data as zoo_data

CHECKPOINT = examples.CHECKPOINT


class Generated(Images):
    """The zoo's labelled images, generated at once (quicker than one at a time)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        super().__init__((64, 64), 3)
        self.images, self.labels = images, labels
        self.classes = zoo_data.CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return f"generated#{index}"

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def read(self, index: int) -> Tensor:
        return self.images[index]


class Recording:
    """An accumulator feeding `TopK` and keeping every activation, for the in-memory ranking."""

    def __init__(self, inner: TopK) -> None:
        self.inner = inner
        self.acts: dict[str, list[Tensor]] = {}
        self.ids: list[Tensor] = []

    def update(self, batch: Batch, acts: dict[str, Tensor]) -> None:
        self.inner.update(batch, acts)
        self.ids.append(batch.ids)
        for name, x in acts.items():
            self.acts.setdefault(name, []).append(x)

    def state(self) -> dict[str, Tensor]:
        return self.inner.state()

    def load(self, state: dict[str, Tensor]) -> None:
        self.inner.load(state)


@pytest.fixture(scope="module")
def shapes() -> Scan:
    """ShapesNet over 300 of its own images (seed 5), reading conv2 and the logits."""
    network = build_network(ZooModelSpec(name="shapes"), Path("."))
    images = Generated(*zoo_data.generate(300, seed=5))
    return Scan(network, {"conv2": "conv2", "logits": "logits"}, images, batch=32)


@pytest.fixture(scope="module")
def ranked(shapes: Scan) -> tuple[list[Layer], Recording]:
    """Every unit of conv2 and the logits ranked (top 9), with every activation kept."""
    found = examples.measure(shapes, examples.layers(shapes, None))
    recording = Recording(TopK(found, 9))
    shapes.run(recording)
    return found, recording


def in_memory(acts: Tensor, ids: Tensor, k: int) -> dict[str, dict[str, Tensor]]:
    """The rankings from all activations [N, U, P] at once: one stable sort per ranking."""
    if acts.shape[2] == 1:
        scores = {"top": (acts[:, :, 0], None), "bottom": (acts[:, :, 0], None)}
    else:
        peak, where = acts.max(2)
        mean = acts.mean(2)
        scores = {
            "top_mean": (mean, None),
            "bottom_mean": (mean, None),
            "top_max": (peak, where),
            "bottom_max": (peak, where),
        }
    out = {}
    for ranking, (values, positions) in scores.items():
        key = values.T if ranking.startswith("top") else -values.T
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
        out[ranking] = {
            "values": values.T.gather(1, order),
            "ids": ids[order],
        }
        if positions is not None:
            out[ranking]["positions"] = positions.T.gather(1, order)
    return out


# ----------------------------------------------------------------------------- top-K


def test_streaming_equals_in_memory_with_ties() -> None:
    """Batch by batch equals one stable sort of everything, ties (equal values, a constant
    unit, equal maxima at several positions) to the lower image id and the first position."""
    g = torch.Generator().manual_seed(0)
    spatial = Layer("s", "s", 4, (2, 3), (0, 1, 2, 3), None)
    flat = Layer("f", "f", 3, (), (0, 1, 2), None)
    n = 50
    acts = {
        "s": torch.randint(0, 3, (n, 4, 6), generator=g).float(),
        "f": torch.randint(0, 4, (n, 3, 1), generator=g).float(),
    }
    acts["s"][:, 1] = 7.0  # a constant unit: every image ties
    acts["f"][:, 2] = -1.0
    ids = torch.arange(n) * 3  # ids with gaps (unreadable images left out)
    topk = TopK([spatial, flat], 5)
    for start in range(0, n, 7):
        batch = Batch(torch.empty(0), torch.empty(0), ids[start : start + 7])
        topk.update(batch, {name: x[start : start + 7] for name, x in acts.items()})
    assert topk.read == n
    for name in ("s", "f"):
        expected = in_memory(acts[name], ids, 5)
        for ranking, parts in expected.items():
            got = topk.ranking(name, ranking)
            assert got.keys() == parts.keys()
            for part, tensor in parts.items():
                assert torch.equal(got[part], tensor), (name, ranking, part)
    assert topk.ranking("s", "top_max")["ids"][1].tolist() == [0, 3, 6, 9, 12]
    assert topk.ranking("s", "bottom_mean")["ids"][1].tolist() == [0, 3, 6, 9, 12]


def test_streaming_equals_in_memory_on_the_network(ranked: tuple[list[Layer], Recording]) -> None:
    _, recording = ranked
    ids = torch.cat(recording.ids)
    for name, batches in recording.acts.items():
        expected = in_memory(torch.cat(batches), ids, 9)
        for ranking, parts in expected.items():
            got = recording.inner.ranking(name, ranking)
            for part, tensor in parts.items():
                assert torch.equal(got[part], tensor), (name, ranking, part)


def test_channels_pick_units() -> None:
    assert examples.parse_channels("0:3,12,2:4") == (0, 1, 2, 3, 12)
    assert examples.parse_channels(None) is None
    for bad in ("a", "3:1", "1,,2", "-1", "0:", "0:999999999", "1" * 5000):
        with pytest.raises(UserError, match="--channels"):
            examples.parse_channels(bad)


# ----------------------------------------------------------------------------- the built-in model


def test_logit_top_examples_are_of_their_class(
    shapes: Scan, ranked: tuple[list[Layer], Recording]
) -> None:
    """300 images (30 per class): each class logit's top 9 are all of that class."""
    _, recording = ranked
    top = recording.inner.ranking("logits", "top")["ids"]
    assert top.shape == (10, 9)
    for cls in range(10):
        assert [shapes.images.label(i) for i in top[cls].tolist()] == [cls] * 9


def test_conv2_crops_hold_the_maximum(shapes: Scan, ranked: tuple[list[Layer], Recording]) -> None:
    """Every top crop of every conv2 channel: with each pixel outside the crop's box replaced
    by noise, the unit's value at the recorded position is the recorded one; and the box is
    centred on the position's cell. Noise inside the box's one-pixel rim changes most values:
    the box is no larger than the field."""
    found, recording = ranked
    conv2 = next(layer for layer in found if layer.name == "conv2")
    assert conv2.field == Field((8, 8), (2, 2), (-3, -3), (64, 64))
    kept = recording.inner.ranking("conv2", "top_max")
    units, k = kept["ids"].shape
    ids, positions = kept["ids"].flatten(), kept["positions"].flatten()
    channels = torch.arange(units).repeat_interleave(k)
    originals = torch.stack([shapes.images.read(int(i)) for i in ids])
    g = torch.Generator().manual_seed(1)
    inside = torch.zeros_like(originals, dtype=torch.bool)
    inner = torch.zeros_like(inside)
    for j, flat in enumerate(positions.tolist()):
        y, x = divmod(flat, 32)
        top, left, height, width = conv2.field.box(y, x)  # type: ignore[union-attr]
        assert (top + height / 2, left + width / 2) == (2 * y + 1, 2 * x + 1)
        inside[j, :, max(top, 0) : top + height, max(left, 0) : left + width] = True
        inner[j, :, max(top + 1, 0) : top + height - 1, max(left + 1, 0) : left + width - 1] = True
    noise = torch.rand(originals.shape, generator=g)
    occluded = torch.where(inside, originals, noise)
    values = shapes.forward(occluded)["conv2"][torch.arange(len(ids)), channels, positions]
    assert torch.allclose(values, kept["values"].flatten(), atol=1e-4, rtol=0)
    shrunk = torch.where(inner, originals, noise)
    changed = shapes.forward(shrunk)["conv2"][torch.arange(len(ids)), channels, positions]
    assert ((changed - values).abs() > 1e-4).float().mean() > 0.9


# ----------------------------------------------------------------------------- receptive fields


def test_receptive_field_by_hand() -> None:
    """conv (3, 5) pad (1, 2) -> conv 3 stride 2 pad 1 -> max pool 2 -> conv 3 (no padding):
    size = previous + (kernel - 1) x stride so far, offset = previous - pad x stride so far."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, (3, 5), padding=(1, 2)),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.Flatten(),
    )
    expected = {
        "0": Field((3, 5), (1, 1), (-1, -2), (32, 32)),
        "2": Field((3 + 2, 5 + 2), (2, 2), (-1 - 1, -2 - 1), (32, 32)),
        "4": Field((5 + 2, 7 + 2), (4, 4), (-2, -3), (32, 32)),
        "5": Field((7 + 2 * 4, 9 + 2 * 4), (4, 4), (-2, -3), (32, 32)),
    }
    for layer, want in expected.items():
        assert field(net, layer, (32, 32), 3) == want, layer
    assert field(net, "6", (32, 32), 3) is None  # [B, C]: no positions
    whole = field(net, "5", (12, 12), 3)  # one position, whose field covers all the image
    assert whole is not None and whole.whole == (True, True)
    assert whole.box(0, 0) == (0, 0, 12, 12)


def test_receptive_fields_of_shapesnet(shapes: Scan) -> None:
    """conv1 to conv4: 3, 8, 18 and 38 px (the registry's), strides 1, 2, 4, 8, centred."""
    net = shapes.network
    for layer, size, stride in (("conv1", 3, 1), ("conv3", 18, 4), ("conv4", 38, 8)):
        got = field(net.model, layer, (64, 64), 3, net)
        offset = (stride - size) // 2
        assert got == Field((size, size), (stride, stride), (offset, offset), (64, 64)), layer


def test_crop_is_clipped_to_the_image() -> None:
    f = Field((8, 8), (2, 2), (-3, -3), (64, 64))
    assert f.box(0, 31) == (-3, 59, 8, 8)
    assert f.crop(0, 31) == (0, 59, 5, 5)


# ----------------------------------------------------------------------------- resume


def test_interrupted_and_resumed_equals_uninterrupted(shapes: Scan, tmp_path: Path) -> None:
    small = Generated(shapes.images.images[:100], shapes.images.labels[:100])  # type: ignore[attr-defined]
    scan = dataclasses.replace(shapes, images=small, batch=16)
    found = [dataclasses.replace(layer, units=(0, 1, 2)) for layer in examples.layers(shapes, None)]
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir()
    part.mkdir()
    examples.run(scan, found, 5, whole)
    calls: list[int] = []

    def stop(done: int, read: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="--resume"):
        examples.run(scan, found, 5, part, progress=stop)
    assert (part / CHECKPOINT).is_file() and not (part / INDEX).exists()
    examples.run(scan, found, 5, part, resume=True)
    assert not (part / CHECKPOINT).exists()
    for name in (INDEX, "conv2/unit_0002.png", "logits/unit_0001.png"):
        assert (part / name).read_bytes() == (whole / name).read_bytes(), name
    assert _tensors(part / TENSORS) == _tensors(whole / TENSORS)


def _tensors(path: Path) -> tuple[dict[str, str], dict[str, list[object]]]:
    """A safetensors file's metadata and tensors, comparable with == (safetensors writes its
    metadata in no fixed order, so equal files need not be equal bytes)."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return metadata, {key: [t.dtype, t.tolist()] for key, t in load_file(path).items()}


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def tiny(write_config: Callable[..., Path], workdir: Path) -> Path:
    """The tiny conv net at 24 px, and a folder of 12 images in two classes."""
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        folder = workdir / "imgs" / ("ab"[i % 2])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(24, 24, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    model = {**TINY_MODEL, "input": {"size": 24}}
    return write_config(tiny_config(model=model, name="tiny"))


def _examples(cli: Callable[..., object], config: Path, *args: str) -> object:
    base = ("examples", config, "--data", "imgs", "--workers", "0", "-q")
    return cli(*base, *args)


def _one_line(result: object, code: int = 2) -> str:
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    lines = [
        line
        for line in result.stderr.strip().splitlines()  # type: ignore[attr-defined]
        if "note: runs your code" not in line
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_writes_refuses_and_forces(cli: Callable[..., object], tiny: Path) -> None:
    out = tiny.parent / "out"
    result = _examples(cli, tiny, "--layers", "conv2,6", "--top", "3", "--out", out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert result.stdout.strip() == str(out / INDEX)  # type: ignore[attr-defined]
    index = json.loads((out / INDEX).read_text())
    assert index["images"] == {"seen": 12, "read": 12, "skipped": 0}
    conv2, logits = index["layers"]["conv2"], index["layers"]["6"]
    assert conv2["field"] == {
        "size": [5, 5],
        "stride": [2, 2],
        "offset": [-2, -2],
        "whole": [False, False],
    }
    assert logits["field"] is None and logits["rankings"] == ["top", "bottom"]
    assert len(conv2["units"]) == 16 and len(logits["units"]) == 5
    entry = conv2["units"][3]["top_max"][0]
    assert entry.keys() == {"image", "id", "value", "position", "box"}
    y, x = entry["position"]
    assert entry["box"] == [2 * y - 2, 2 * x - 2, 5, 5]
    tensors = load_file(out / TENSORS)
    assert tensors["conv2/top_max/positions"].shape == (16, 3, 2)
    assert tensors["conv2/top_max/values"][3, 0].item() == entry["value"]
    assert len(list((out / "conv2").glob("unit_*.png"))) == 16
    assert len(list((out / "6").glob("unit_*.png"))) == 5
    assert Image.open(out / "conv2" / "unit_0003.png").size[0] >= 3 * 64

    again = _examples(cli, tiny, "--layers", "conv2", "--out", out)
    assert "examples folder exists; pass --force" in _one_line(again)
    forced = _examples(cli, tiny, "--layers", "conv2", "--channels", "0:2", "--out", out, "-f")
    assert forced.exit_code == 0, forced.output  # type: ignore[attr-defined]
    assert not (out / "6").exists()
    assert sorted(p.name for p in (out / "conv2").iterdir()) == ["unit_0000.png", "unit_0001.png"]
    assert [
        u["unit"] for u in json.loads((out / INDEX).read_text())["layers"]["conv2"]["units"]
    ] == [0, 1]

    (tiny.parent / "mine").mkdir()
    (tiny.parent / "mine" / "notes.txt").write_text("mine")
    refused = _examples(cli, tiny, "--layers", "conv2", "--out", tiny.parent / "mine", "-f")
    assert "not empty and not an examples folder" in _one_line(refused)
    assert (tiny.parent / "mine" / "notes.txt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--channels", "0,1:x"), "--channels 1:x: expected comma-separated indices"),
        (("--channels", "0:4,20"), "--channels 20: layer conv2 has 16 channels (0 to 15)"),
        (("--layers", "conv9"), "--layers conv9: unknown layer"),
        (("--data", "nowhere"), "nowhere: no such folder"),
    ],
)
def test_cli_errors_are_one_line(
    cli: Callable[..., object], tiny: Path, args: tuple[str, ...], message: str
) -> None:
    base = ["--layers", "conv2"] if "--layers" not in args else []
    result = _examples(cli, tiny, *base, *args, "--out", tiny.parent / "out")
    assert message in _one_line(result)
    assert not (tiny.parent / "out").exists()


def test_cli_token_layers_rank_positions_without_fields(
    cli: Callable[..., object], tiny: Path, write_config: Callable[..., Path]
) -> None:
    """Tokens [B, T, C]: C units at T positions, a position is [t], no field and no crops; a
    4x4 stride-4 patch conv has a 4 px field; a layer that outputs a tuple is one line."""
    model = {"source": "factory", "factory": "tinynets:tokens", "input": {"size": 24}}
    config = write_config(tiny_config(model=model, hooks={}), "tokens.yaml")
    out = tiny.parent / "tokens"
    result = _examples(cli, config, "--layers", "patch,block[0]", "--top", "2", "--out", out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    layers = json.loads((out / INDEX).read_text())["layers"]
    assert layers["patch"]["field"] == {
        "size": [4, 4],
        "stride": [4, 4],
        "offset": [0, 0],
        "whole": [False, False],
    }
    tokens = layers["block[0]"]
    assert tokens["shape"] == [6, 36] and tokens["field"] is None
    assert tokens["folder"] == "block_0_"
    assert len(tokens["units"][0]["top_max"][0]["position"]) == 1
    assert "box" not in tokens["units"][0]["top_max"][0]
    refused = _examples(cli, config, "--layers", "block", "--out", tiny.parent / "tuple")
    assert "--layers block: layer 'block' outputs (" in _one_line(refused)


def test_cli_top_is_bounded(cli: Callable[..., object], tiny: Path) -> None:
    for top in ("0", "101"):
        result = _examples(cli, tiny, "--layers", "conv2", "--top", top)
        assert result.exit_code == 2  # type: ignore[attr-defined]
        assert "Invalid value for '--top'" in result.stderr  # type: ignore[attr-defined]


def test_cli_interrupted_and_resumed(
    cli: Callable[..., object], tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, part = tiny.parent / "whole", tiny.parent / "part"
    args = ("--layers", "conv2,6", "--top", "3", "--batch", "4")
    assert _examples(cli, tiny, *args, "--out", whole).exit_code == 0  # type: ignore[attr-defined]
    update = TopK.update
    calls: list[int] = []

    def interrupted(self: TopK, batch: Batch, acts: dict[str, Tensor]) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        update(self, batch, acts)

    with monkeypatch.context() as patch:
        patch.setattr(TopK, "update", interrupted)
        stopped = _examples(cli, tiny, *args, "--out", part)
    assert "interrupted after 4 of 12 images" in _one_line(stopped, 130)
    assert (part / CHECKPOINT).is_file()
    fresh = _examples(cli, tiny, *args, "--out", part)
    assert "interrupted examples pass; pass --resume" in _one_line(fresh)
    other = _examples(cli, tiny, *args, "--top", "2", "--out", part, "--resume")
    assert "made by a pass with other settings" in _one_line(other)
    resumed = _examples(cli, tiny, *args, "--out", part, "--resume")
    assert resumed.exit_code == 0, resumed.output  # type: ignore[attr-defined]
    assert (part / INDEX).read_bytes() == (whole / INDEX).read_bytes()
    assert not (part / CHECKPOINT).exists()
    nothing = _examples(cli, tiny, *args, "--out", tiny.parent / "none", "--resume")
    assert "no checkpoint to resume from" in _one_line(nothing)
    assert not (tiny.parent / "none").exists()


@pytest.mark.slow
def test_cli_logit_examples_over_2000_zoo_images(
    cli: Callable[..., object], tmp_path: Path
) -> None:
    """The issue's number: over zoo:shapes:2000, each class logit's top 9 are of its class."""
    config = Path(__file__).parent.parent / "configs" / "quickstart.yaml"
    out = tmp_path / "ex"
    args = ("--data", "zoo:shapes:2000", "--layers", "conv2,logits", "--out", out, "-q")
    result = cli("examples", config, *args)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    index = json.loads((out / INDEX).read_text())
    for unit in index["layers"]["logits"]["units"]:
        labels = [zoo_data.label(1, entry["id"]) for entry in unit["top"]]
        assert labels == [unit["unit"]] * 9
