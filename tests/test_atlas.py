"""Activation atlases: sampling, the class filter, the layout's grid and cells, the measures and
the pictures, checked by hand; a small atlas of the built-in model end to end (and the issue's
big one, slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from fvis import atlas, runs
from fvis.config import load_config
from fvis.config.data import DATA
from fvis.data import UNLABELLED, Batch, FileImages, open_source
from fvis.errors import Interrupted, UserError
from fvis.models import Network, Preprocessing, build_network
from fvis.scan import Scan, layer_specs

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def shapes_scan(count: int, layer: str = "conv4", batch: int = 64) -> Scan:
    """A pass of the built-in model over `count` zoo shapes images, reading `layer`."""
    config = load_config(QUICKSTART, []).config
    network = build_network(config.model, ROOT)
    images = open_source(DATA.validate_python(f"zoo:shapes:{count}"), ROOT, (64, 64), 3)
    specs = layer_specs(network, [layer], {}, "--layer")
    return Scan(network, specs, images, batch, 0, torch.device("cpu"), {"count": count})


# ----------------------------------------------------------------------------- sampling


def test_positions_do_not_depend_on_batches() -> None:
    acts = torch.randn(6, 5, 9)  # [images, C, P]
    labels = torch.tensor([3, 1, UNLABELLED, 0, 2, 2])

    def sample(cuts: list[int]) -> atlas.Sample:
        samples = atlas.Samples("l", per_image=2, seed=3)
        for a, b in zip([0, *cuts], [*cuts, 6], strict=True):
            batch = Batch(torch.zeros(b - a, 3, 1, 1), labels[a:b], torch.arange(a, b))
            samples.update(batch, {"l": acts[a:b]})
        return samples.sample()

    once = sample([])
    assert once.vectors.shape == (12, 5) and once.attributions is None
    for other in (sample([1, 4]), sample([1, 2, 3, 4, 5])):
        for name, tensor in once.tensors().items():
            assert torch.equal(tensor, other.tensors()[name]), name
    assert once.images.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert once.labels.tolist() == [3, 3, 1, 1, -1, -1, 0, 0, 2, 2, 2, 2]
    g = torch.Generator().manual_seed(3 * 1_000_003 + 4)
    chosen = torch.randperm(9, generator=g)[:2]
    assert torch.equal(once.positions[8:10], chosen)
    assert torch.equal(once.vectors[8:10], acts[4].T[chosen])


def test_a_checkpointed_state_loads_back_and_a_wrong_one_is_refused() -> None:
    samples = atlas.Samples("l", per_image=1, seed=0)
    samples.update(
        Batch(torch.zeros(3, 3, 1, 1), torch.tensor([1, 2, 3]), torch.arange(3)),
        {"l": torch.randn(3, 4, 5)},
    )
    state = samples.state()
    again = atlas.Samples("l", per_image=1, seed=0)
    again.load(state)
    assert all(torch.equal(again.state()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="entries"):
        again.load({**state, "attributions": torch.zeros(3)})
    with pytest.raises(ValueError, match="labels is"):
        again.load({**state, "labels": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match="vectors is"):
        again.load({**state, "vectors": torch.zeros(3, dtype=torch.long)})


class RedMinusGreen(nn.Module):
    """feat: channel 0 = the red of each pixel, channel 1 = its green; logits = [mean red -
    mean green, mean green - mean red]. The attribution of logit 0 to position p is then
    (red_p - green_p) / P, of logit 1 its negative."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 2, 1, bias=False)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
            self.head.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x).mean((2, 3)))


def tiny_network() -> Network:
    prep = Preprocessing((2, 2), 3, (0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Network(RedMinusGreen().eval(), prep)


def test_the_class_filter_keeps_positive_attributions_strongest_first() -> None:
    red = torch.tensor([0.9, 0.2, 0.6, 0.1])
    green = torch.tensor([0.1, 0.5, 0.3, 0.1])
    image = torch.stack([red, green, torch.zeros(4)]).view(1, 3, 2, 2)
    network = tiny_network()
    batch = Batch(image, torch.tensor([UNLABELLED]), torch.tensor([7]))
    cpu = torch.device("cpu")
    acts, scores = atlas.Attribution(network, "feat", "output", 0, cpu)(image)
    assert torch.allclose(scores[0], (red - green) / 4)
    assert torch.allclose(acts[0], torch.stack([red, green]))
    for target, per_image, kept in [(0, 4, [0, 2]), (0, 1, [0]), (1, 4, [1])]:
        filtered = atlas.Attribution(network, "feat", "output", target, cpu)
        samples = atlas.Samples("feat", per_image, seed=0, attribution=filtered)
        samples.update(batch, {})
        sample = samples.sample()
        sign = 1 if target == 0 else -1
        assert sample.positions.tolist() == kept  # p3 (red == green: 0) is never kept
        assert sample.attributions is not None
        assert torch.allclose(sample.attributions, sign * (red - green)[kept] / 4)
        assert torch.allclose(sample.vectors, torch.stack([red, green], 1)[kept])
        assert sample.images.tolist() == [7] * len(kept)


def test_check_refuses_a_class_beyond_the_logits_and_logits_that_are_not_scores(
    tmp_path: Path,
) -> None:
    images = FileImages([], [], (), tmp_path, (2, 2), 3)
    scan = Scan(tiny_network(), {"feat": "feat"}, images)
    assert atlas.check(scan, atlas.Settings("feat")) == (2, 4)
    assert atlas.check(scan, atlas.Settings("feat", target=1)) == (2, 4)
    with pytest.raises(UserError, match=r"--class 2: the model has 2 classes \(0 to 1\)"):
        atlas.check(scan, atlas.Settings("feat", target=2))
    with pytest.raises(UserError, match=r"--logits feat: an output of shape \[1, 2, 2, 2\]"):
        atlas.check(scan, atlas.Settings("feat", target=0, logits="feat"))


def test_limit_keeps_the_strongest_or_a_seeded_subset_in_order() -> None:
    n = 6
    plain = atlas.Sample(
        torch.arange(n * 2.0).view(n, 2), torch.arange(n), torch.zeros(n, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
    )  # fmt: skip
    assert atlas.limit(plain, 6, seed=0) is plain
    kept = atlas.limit(plain, 3, seed=0).images
    assert kept.tolist() == sorted(kept.tolist()) and len(kept) == 3
    assert torch.equal(kept, atlas.limit(plain, 3, seed=0).images)
    strong = atlas.Sample(**{**plain.tensors(), "attributions": torch.tensor([1, 5, 2, 6, 0.5, 3])})
    assert atlas.limit(strong, 3, seed=0).images.tolist() == [1, 3, 5]


def test_parse_class_by_index_or_name() -> None:
    names = ("stripes_0", "red", "green")
    assert atlas.parse_class(None, names) is None
    assert atlas.parse_class("12", names) == 12  # its range is checked against the logits
    assert atlas.parse_class("green", names) == 2
    with pytest.raises(UserError, match=r"--class 'reed': no class of that name; did you mean"):
        atlas.parse_class("reed", names)
    with pytest.raises(UserError, match="the data is unlabelled and the model names no classes"):
        atlas.parse_class("red", ())


def test_check_options_names_the_limits() -> None:
    atlas.check_options(2, 64)
    atlas.check_options(64, 64)
    for grid in (1, 65, 0):
        with pytest.raises(UserError, match=f"--grid {grid}: expected 2 to 64 cells a side"):
            atlas.check_options(grid, 64)
    with pytest.raises(UserError, match="over fvis's limit"):
        atlas.check_options(64, 256)


# ----------------------------------------------------------------------------- layout and cells


def test_bins_by_hand() -> None:
    unit = torch.tensor([[0.0, 0.0], [0.99, 0.0], [0.0, 0.99], [1.0, 1.0], [0.5, 0.25]])
    assert atlas.bins(unit, 4).tolist() == [[0, 0], [0, 3], [3, 0], [3, 3], [1, 2]]


def test_normalise_clips_outliers_instead_of_squeezing_the_rest() -> None:
    x = torch.cat([torch.linspace(0, 1, 199), torch.tensor([1000.0])])
    unit = atlas.normalise(torch.stack([x, -x], 1))
    assert unit.min() == 0 and unit.max() == 1
    assert unit[199].tolist() == [1.0, 0.0]  # the outlier, clipped to the border
    assert 0.45 < unit[99, 0] < 0.55 and 0.45 < unit[99, 1] < 0.55  # the middle stays there


def test_gather_means_counts_majority_and_share_by_hand() -> None:
    vectors = torch.tensor(
        [[1.0, 0], [3, 0], [0, 2], [0, 4], [5, 5], [9, 9], [1, 1], [3, 3], [7, 7], [8, 8]]
    )
    where = torch.tensor(
        [[0, 0], [0, 0], [1, 1], [1, 1], [1, 1], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1]]
    )
    labels = torch.tensor([2, 2, 1, 0, 1, -1, 3, 0, -1, -1])
    cells = atlas.gather(vectors, labels, where, grid=2, min_count=2)
    assert cells.where.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]  # row-major
    expected = [[2.0, 0], [8, 8], [2, 2], [5 / 3, 11 / 3]]
    assert torch.allclose(cells.directions, torch.tensor(expected))
    assert cells.counts.tolist() == [2, 3, 2, 3]
    assert cells.classes.tolist() == [2, UNLABELLED, 0, 1]  # a 3-0 tie goes to the lower class
    assert torch.allclose(cells.shares, torch.tensor([1.0, 0.0, 0.5, 2 / 3]))
    assert cells.members.tolist() == [0, 0, 3, 3, 3, 1, 2, 2, 1, 1]
    fewer = atlas.gather(vectors, labels, where, grid=2, min_count=3)
    assert fewer.where.tolist() == [[0, 1], [1, 1]]
    assert fewer.members.tolist() == [-1, -1, 1, 1, 1, 0, -1, -1, 0, 0]


# ----------------------------------------------------------------------------- measures


def test_mean_distance_within_and_between_sets_by_hand() -> None:
    where = torch.tensor([[0, 0], [0, 3], [4, 0], [4, 3], [2, 2]])
    classes = torch.tensor([0, 1, 7, UNLABELLED, 8])
    assert atlas.mean_distance(where, classes, {0, 1}, {0, 1}) == pytest.approx(3.0)
    # stripes to colours: (0,0)-(4,0) 4, (0,0)-(2,2) sqrt 8, (0,3)-(4,0) 5, (0,3)-(2,2) sqrt 5
    between = (4 + 8**0.5 + 5 + 5**0.5) / 4
    assert atlas.mean_distance(where, classes, {0, 1}, {7, 8}) == pytest.approx(between)
    assert atlas.mean_distance(where, classes, {0}, {0}) is None  # one cell: no pair
    assert atlas.mean_distance(where, classes, {5}, {7}) is None


def test_agreement_counts_only_mostly_one_class_cells() -> None:
    classes = torch.tensor([0, 1, 2, UNLABELLED])
    shares = torch.tensor([1.0, 0.4, 0.6, 0.0])
    predicted = torch.tensor([0, 1, 3, 0])
    found = atlas.agreement(classes, shares, predicted)
    assert found == {"threshold": 0.5, "cells": 2, "agree": 1, "share": 0.5}
    assert atlas.agreement(classes, torch.zeros(4), predicted) is None


# ----------------------------------------------------------------------------- pictures


def test_the_pictures_place_each_render_in_its_cell(tmp_path: Path) -> None:
    files = []
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{name}.png")
        files.append(tmp_path / f"{name}.png")
    where = torch.tensor([[0, 1], [1, 0]])
    tiles = [atlas.tile(path, 8) for path in files]
    sheet = atlas.mosaic(where, tiles, grid=2, cell=8)
    assert sheet.size == (16, 16)
    assert sheet.getpixel((12, 3)) == (255, 0, 0) and sheet.getpixel((3, 12)) == (0, 0, 255)
    assert sheet.getpixel((3, 3)) == atlas.BACKGROUND == sheet.getpixel((12, 12))
    cells = atlas.Cells(
        where, torch.zeros(2, 3), torch.tensor([5, 4]), torch.tensor([1, UNLABELLED]),
        torch.tensor([0.8, 0.0]), torch.zeros(9, dtype=torch.long),
    )  # fmt: skip
    labels = atlas.labelled(cells, tiles, ("zero", "one"), grid=2, cell=8)
    strip = 8 + atlas.STRIP
    assert labels.size == (16, 2 * strip)
    assert labels.getpixel((12, 3)) == (255, 0, 0) and labels.getpixel((3, strip + 3)) == (
        0,
        0,
        255,
    )
    assert labels.getpixel((12, 9)) == atlas.COLOURS[1]  # the class's bar under cell (0, 1)
    assert labels.getpixel((3, strip + 9)) == atlas.BACKGROUND  # unlabelled: no bar


# ----------------------------------------------------------------------------- end to end


def test_a_small_atlas_of_the_built_in_model(tmp_path: Path) -> None:
    scan = shapes_scan(200)
    settings = atlas.Settings("conv4", grid=4)
    assert atlas.check(scan, settings) == (64, 64)
    folder = tmp_path / "atlas"
    with runs.locked(folder):
        runs.claim_pass(folder, False, False, atlas.KIND)
        written = atlas.run(scan, settings, QUICKSTART, ["optim.steps=8"], folder)
    tensors = load_file(str(folder / atlas.TENSORS))
    m = len(written.cells.counts)
    assert 2 <= m <= 16 and written.vectors == 200
    assert tensors["directions"].shape == (m, 64) and tensors["cells"].shape == (m, 2)
    assert tensors["vectors"].shape == (200, 64) and tensors["layout"].shape == (200, 2)
    assert tensors["labels"].min() >= 0 and int(tensors["counts"].sum()) <= 200
    index = json.loads((folder / atlas.INDEX).read_text())
    assert index["parameters"]["grid"] == 4 and index["seed"] == 0
    assert set(index["seconds"]) == {"pass", "layout", "renders", "measures", "pictures"}
    assert len(index["cells"]) == m and index["render"]["key"] == "directions"
    for cell in index["cells"]:
        assert (folder / cell["file"]).is_file() and cell["class_name"] in index["classes"]
    assert index["measures"]["render_class"]["cells"] >= 1
    assert index["measures"]["distances"]["stripes"][0] == "stripes_0"
    assert Image.open(folder / atlas.PICTURE).size == (4 * 64, 4 * 64)
    assert Image.open(folder / atlas.LABELS).size == (4 * 64, 4 * (64 + atlas.STRIP))
    assert not (folder / atlas.CHECKPOINT).exists()
    assert written.summary(settings)[0] == f"{m} of 4x4 cells of conv4 from 200 vectors"


def test_an_interrupted_pass_resumes_to_the_same_sample(tmp_path: Path) -> None:
    folder = tmp_path / "atlas"
    folder.mkdir()
    scan = shapes_scan(96, batch=16)

    def stop(done: int, read: int) -> None:
        if done == 32:
            raise KeyboardInterrupt

    samples = atlas.Samples("conv4", 2, seed=5)
    with pytest.raises(Interrupted):
        scan.run(samples, folder / atlas.CHECKPOINT, progress=stop)
    with pytest.raises(UserError, match="holds an interrupted atlas pass; pass --resume"):
        runs.claim_pass(folder, False, False, atlas.KIND)
    with pytest.raises(UserError, match="choose one"):
        runs.claim_pass(folder, True, True, atlas.KIND)
    resumed = atlas.Samples("conv4", 2, seed=5)
    scan.run(resumed, folder / atlas.CHECKPOINT, resume=True)
    whole = atlas.Samples("conv4", 2, seed=5)
    scan.run(whole)
    for name, tensor in whole.state().items():
        assert torch.equal(resumed.state()[name], tensor), name


def test_renders_interrupted_go_on_with_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = shapes_scan(120)
    settings = atlas.Settings("conv4", grid=3)
    folder = tmp_path / "atlas"
    render_rows = atlas.vectors.render_rows

    def two_then_stop(rows: atlas.vectors.Rows, count: int, renders: Path, *args: object) -> None:
        render_rows(rows, 2, renders)
        raise KeyboardInterrupt

    monkeypatch.setattr(atlas.vectors, "render_rows", two_then_stop)
    with runs.locked(folder), pytest.raises(Interrupted, match="--resume to go on"):
        atlas.run(scan, settings, QUICKSTART, ["optim.steps=8"], folder)
    assert (folder / atlas.CHECKPOINT).is_file() and not (folder / atlas.INDEX).exists()
    (renders,) = folder.glob("renders-*")
    done = {path: path.stat().st_mtime_ns for path in renders.glob("objective*.png")}
    assert len(done) == 2
    monkeypatch.undo()
    with runs.locked(folder):
        runs.claim_pass(folder, False, True, atlas.KIND)
        written = atlas.run(scan, settings, QUICKSTART, ["optim.steps=8"], folder, resume=True)
    assert len(list(renders.glob("objective*.png"))) == len(written.cells.counts) > 2
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in done.items())  # kept
    assert (folder / atlas.INDEX).is_file() and not (folder / atlas.CHECKPOINT).exists()


@pytest.mark.slow
def test_the_atlas_of_conv4_over_5000_images_groups_like_with_like(tmp_path: Path) -> None:
    # The measure (about 70 s on 2 CPU cores, 157 of 400 cells rendered, 192 steps):
    # 97 % of the renders of mostly-one-class cells are classified as that class, and the
    # stripe cells lie nearer each other (9.6 cells) than to the colour cells (10.5).
    scan = shapes_scan(5000)
    settings = atlas.Settings("conv4", grid=20)
    folder = tmp_path / "atlas"
    with runs.locked(folder):
        written = atlas.run(scan, settings, QUICKSTART, [], folder)
    found = written.measures["render_class"]
    assert found["cells"] >= 100 and found["share"] >= 0.85, found
    distances = written.measures["distances"]
    assert distances["stripe_to_stripe"] < distances["stripe_to_colour"], distances
    assert distances["colour_to_colour"] < distances["stripe_to_colour"], distances
