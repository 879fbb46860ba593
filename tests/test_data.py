"""Data sources (the --data short form, zoo data, folders, ImageFolder roots), fitting images to a
model's input, and the pass over them (`fvis.scan`): checkpoints and resumption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from fvis.config import ZooModelSpec, load_config
from fvis.config.data import DATA, FolderData, ImageFolderData, ZooData
from fvis.data import UNLABELLED, Batch, batches, fit, open_source
from fvis.errors import Interrupted, SpecError, UserError
from fvis.models import build_network
from fvis.scan import Scan, units
from fvis.zoo import data as zoo_data


@pytest.mark.parametrize(
    ("short", "full"),
    [
        ("zoo:shapes", ZooData(source="zoo", name="shapes")),
        ("zoo:shapes:500", ZooData(source="zoo", name="shapes", count=500)),
        ("zoo:shapes:500:7", ZooData(source="zoo", name="shapes", count=500, seed=7)),
        ("photos", FolderData(source="folder", path=Path("photos"))),
        ("folder:a:b", FolderData(source="folder", path=Path("a:b"))),
        ("photos/**/*.jpg", FolderData(source="folder", path=Path("photos"), pattern="**/*.jpg")),
        ("*.png", FolderData(source="folder", path=Path("."), pattern="*.png")),
        ("imagefolder:train", ImageFolderData(source="imagefolder", path=Path("train"))),
    ],
)
def test_short_forms(short: str, full: object) -> None:
    assert DATA.validate_python(short) == full


@pytest.mark.parametrize(
    ("short", "message"),
    [
        ("zoo:shapes:x", "expected zoo:NAME, zoo:NAME:COUNT or zoo:NAME:COUNT:SEED"),
        ("zoo:shapes:1:2:3", "expected zoo:NAME"),
        ("zoo:shapes:0", "greater than or equal to 1"),
        ("", "an empty data source"),
    ],
)
def test_bad_short_forms(short: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DATA.validate_python(short)


def test_zoo_images_are_a_pure_function_of_seed_and_index() -> None:
    first = zoo_data.image(3, 17)
    assert torch.equal(first, zoo_data.image(3, 17))
    assert not torch.equal(first, zoo_data.image(4, 17))
    assert first.shape == (3, 64, 64) and first.min() >= 0 and first.max() <= 1
    labels = [zoo_data.label(3, i) for i in range(40)]
    for block in range(4):  # every block of ten holds each class once
        assert sorted(labels[10 * block : 10 * block + 10]) == list(range(10))
    assert labels[:10] != labels[10:20]  # shuffled, not in class order


def test_zoo_images_are_of_their_class() -> None:
    """The shipped model (trained on `generate`'s data) classifies the per-image data."""
    network = build_network(ZooModelSpec(), Path.cwd())
    images = open_source(DATA.validate_python("zoo:shapes:100"), Path.cwd(), (64, 64), 3)
    batch = next(batches(images, 100))
    assert batch.ids.tolist() == list(range(100))
    assert (network(batch.images).argmax(1) == batch.labels).float().mean() > 0.97


def test_workers_change_nothing() -> None:
    images = open_source(DATA.validate_python("zoo:shapes:24:5"), Path.cwd(), (48, 48), 1)
    alone = list(batches(images, 10))
    shared = list(batches(images, 10, workers=2, start=0))
    assert [len(b.ids) for b in alone] == [10, 10, 4]
    for a, b in zip(alone, shared, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert alone[0].images.shape == (10, 1, 48, 48)
    later = list(batches(images, 10, start=15))
    assert later[0].ids.tolist() == list(range(15, 24))


def test_fit_resizes_the_shorter_side_and_crops_the_centre() -> None:
    image = torch.rand(3, 8, 16)
    assert torch.equal(fit(image, (8, 8)), image[:, :, 4:12])  # no resize: a centre crop
    half = fit(image, (4, 4))  # 8x16 -> 4x8, columns 2..6
    whole = torch.nn.functional.interpolate(image[None], (4, 8), mode="bilinear", antialias=True)
    assert torch.allclose(half, whole[0, :, :, 2:6])
    assert fit(image, (16, 16)).shape == (3, 16, 16)


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_classes_are_first_sub_folders(tmp_path: Path) -> None:
    _png(tmp_path / "red" / "a.png", (255, 0, 0))
    _png(tmp_path / "red" / "deeper" / "b.png", (250, 0, 0))
    _png(tmp_path / "blue" / "c.jpg", (0, 0, 255))
    _png(tmp_path / "loose.png", (0, 255, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    images = open_source(FolderData(source="folder", path=tmp_path), tmp_path, (10, 10), 3)
    assert images.classes == ("blue", "red")
    names = [Path(images.name(i)).relative_to(tmp_path).as_posix() for i in range(len(images))]
    assert names == ["blue/c.jpg", "loose.png", "red/a.png", "red/deeper/b.png"]
    assert [images.label(i) for i in range(4)] == [0, UNLABELLED, 1, 1]
    batch = next(batches(images, 8))
    assert batch.images.shape == (4, 3, 10, 10)
    assert batch.images[2, 0].min() == 1 and batch.images[2, 2].max() == 0  # red stays red

    jpgs = open_source(DATA.validate_python(f"{tmp_path}/**/*.jpg"), Path.cwd(), (10, 10), 3)
    assert len(jpgs) == 1 and jpgs.classes == ("blue",)


def test_unreadable_images_are_left_out_and_named(tmp_path: Path) -> None:
    _png(tmp_path / "good.png", (1, 2, 3))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    images = open_source(FolderData(source="folder", path=tmp_path), tmp_path, (8, 8), 3)
    (batch,) = list(batches(images, 4))
    assert batch.ids.tolist() == [1]  # broken.png sorts first and is left out
    (reason,) = batch.skipped
    assert reason.startswith(f"{tmp_path / 'broken.png'}: not a readable image")


def test_image_folder_follows_torchvision(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "1.png", (9, 9, 9))
    _png(tmp_path / "ant" / "x" / "2.png", (9, 9, 9))
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    _png(tmp_path / "root.png", (9, 9, 9))  # not in a class folder: not part of it
    spec = ImageFolderData(source="imagefolder", path=tmp_path)
    images = open_source(spec, tmp_path, (8, 8), 3)
    assert images.classes == ("ant", "cat", "empty")
    assert [images.label(i) for i in range(len(images))] == [0, 1]


@pytest.mark.parametrize(
    ("spec", "loc", "message"),
    [
        (FolderData(source="folder", path=Path("nowhere")), ("data", "path"), "no such folder"),
        (FolderData(source="folder", path=Path("."), pattern="*.gif"), ("data",), "no images"),
        (ImageFolderData(source="imagefolder", path=Path(".")), ("data", "path"), "no class"),
        (ZooData(source="zoo", name="shapez"), ("data", "name"), "Did you mean 'shapes'"),
    ],
)
def test_source_errors_name_their_place(
    tmp_path: Path, spec: object, loc: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        open_source(spec, tmp_path, (8, 8), 3)  # type: ignore[arg-type]
    assert caught.value.loc == loc


def test_data_in_yaml_and_from_a_flag(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: zoo:shapes:300\n")
    assert load_config(path).config.data == ZooData(source="zoo", name="shapes", count=300)
    flagged = load_config(path, (), {"data": ("--data", "imagefolder:x")}).config
    assert flagged.data == ImageFolderData(source="imagefolder", path=Path("x"))
    with pytest.raises(UserError) as caught:
        load_config(path, (), {"data": ("--data", "zoo:shapes:none")})
    assert str(caught.value) == (
        f"{path}: --data zoo:shapes:none: data: 'zoo:shapes:none': expected zoo:NAME, "
        "zoo:NAME:COUNT or zoo:NAME:COUNT:SEED"
    )
    path.write_text("data:\n  source: zoo\n  count: -1\n")
    with pytest.raises(UserError, match=rf"{path}:3: data.count: .*greater than or equal to 1"):
        load_config(path)


def test_units_of_every_layer_shape() -> None:
    assert units(torch.zeros(2, 5, 3, 4)).shape == (2, 5, 12)
    assert units(torch.zeros(2, 5)).shape == (2, 5, 1)
    tokens = torch.arange(24.0).view(1, 4, 6)  # [B, T, C]: channel-last
    assert torch.equal(units(tokens)[0, :, 1], tokens[0, 1])
    with pytest.raises(ValueError, match="expected"):
        units(torch.zeros(5))


class Sums:
    """A minimal accumulator: per-channel sums of a layer, and the ids it saw."""

    def __init__(self) -> None:
        self.total = torch.zeros(32, dtype=torch.float64)
        self.ids: list[int] = []

    def update(self, batch: Batch, acts: dict[str, torch.Tensor]) -> None:
        self.total += acts["conv2"].double().sum((0, 2))
        self.ids += batch.ids.tolist()

    def state(self) -> dict[str, torch.Tensor]:
        return {"total": self.total}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.total = state["total"]


def _scan(identity: dict) -> Scan:
    network = build_network(ZooModelSpec(), Path.cwd())
    images = open_source(DATA.validate_python("zoo:shapes:50"), Path.cwd(), (64, 64), 3)
    return Scan(network, {"conv2": "conv2"}, images, batch=10, identity=identity)


def test_an_interrupted_pass_resumes_to_the_same_state(tmp_path: Path) -> None:
    whole = Sums()
    assert _scan({"a": 1}).run(whole).seen == 50

    def stop_at_30(done: int, read: int) -> None:
        if done == 30:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "pass.safetensors"
    with pytest.raises(Interrupted, match="interrupted after 30 of 50 images; kept in") as caught:
        _scan({"a": 1}).run(Sums(), checkpoint, progress=stop_at_30)
    assert caught.value.exit_code == 130
    resumed = Sums()
    outcome = _scan({"a": 1}).run(resumed, checkpoint, resume=True)
    assert outcome.seen == 50 and resumed.ids == list(range(30, 50))
    assert torch.equal(resumed.total, whole.total)

    with pytest.raises(UserError, match="made by a pass with other settings"):
        _scan({"a": 2}).run(Sums(), checkpoint, resume=True)
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        _scan({"a": 1}).run(Sums(), tmp_path / "none.safetensors", resume=True)
    checkpoint.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        _scan({"a": 1}).run(Sums(), checkpoint, resume=True)


ROOT = Path(__file__).parent.parent
DATA_CONFIGS = sorted((ROOT / "configs" / "data").glob("*.yaml"))


def _command(path: Path) -> tuple[list[str], list[str]]:
    """The command a data config's header gives, `#   fvis COMMAND... CONFIG OPTION...`: the
    command's words and its options."""
    name = path.relative_to(ROOT).as_posix()
    for line in path.read_text().splitlines():
        words = line.lstrip("# ").split()
        if words[:1] == ["fvis"] and name in words:
            return words[1 : words.index(name)], words[words.index(name) + 1 :]
    raise AssertionError(f"{path}: no `fvis ...` command in its header")


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.name)
def test_every_data_config_runs_its_command(cli, path: Path, tmp_path: Path) -> None:
    """Each configs/data example runs the command its header gives (on fewer images); a file it
    ships beside the config holds what that command writes (the same keys and shapes)."""
    command, options = _command(path)
    shipped = ROOT / options[options.index("-o") + 1] if "-o" in options else None
    if shipped is not None:
        options[options.index("-o") + 1] = str(tmp_path / shipped.name)
    else:
        options += ["--out", str(tmp_path / "out")]
    result = cli(*command, path, *options, "--data", "zoo:shapes:60", "--quiet")
    assert result.exit_code == 0, result.output
    if shipped is not None:
        with (
            safe_open(str(shipped), "pt") as ours,
            safe_open(str(tmp_path / shipped.name), "pt") as made,
        ):
            assert set(ours.keys()) == set(made.keys())
            for key in ours.keys():  # noqa: SIM118
                assert ours.get_slice(key).get_shape() == made.get_slice(key).get_shape()
