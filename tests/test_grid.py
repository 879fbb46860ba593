"""Activation grids (`fvis.grid`): cells pooled from a layer, their objectives, the picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_groups import halves

from fvis import grid
from fvis.build import build_plan
from fvis.config import ZooModelSpec, load_config
from fvis.errors import UserError
from fvis.io import read_image
from fvis.models import build_network
from fvis.objectives.algebra import Activations, Masked, Sum
from fvis.objectives.batch import Alignment
from fvis.objectives.direction import Direction, DotCossim
from fvis.render import Renderer
from fvis.zoo.quality import orientation_shares

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


# ----------------------------------------------------------------------------- cells


def test_cell_vectors_are_the_mean_of_each_cells_positions() -> None:
    acts = torch.randn(5, 16, 12)
    by_blocks = acts.reshape(5, 8, 2, 6, 2).mean((2, 4))  # [C, 8, 6]: 2x2 blocks
    vectors = grid.cell_vectors(acts, (8, 6))
    assert vectors.shape == (48, 5)
    assert torch.allclose(vectors, by_blocks.flatten(1).T, atol=1e-6)
    # uneven cells: cell (i, j) spans rows floor(i H / R) .. ceil((i + 1) H / R) - 1
    vectors = grid.cell_vectors(acts, (5, 3))
    for i in range(5):
        for j in range(3):
            top, bottom = 16 * i // 5, -(-16 * (i + 1) // 5)
            left, right = 12 * j // 3, -(-12 * (j + 1) // 3)
            mean = acts[:, top:bottom, left:right].mean((1, 2))
            assert torch.allclose(vectors[i * 3 + j], mean, atol=1e-6)


def test_cells_of_the_zoo_model_are_its_pooled_activations(tmp_path: Path) -> None:
    network = build_network(ZooModelSpec(name="shapes"), tmp_path)
    path = halves(tmp_path / "halves.png")
    cells = grid.measure(network, "conv3", "conv3", path, None)
    assert cells.shape == (8, 8) and cells.pooled  # a 16x16 layer: 8 x 8 by default
    # by hand: the block's output on the image, each 2x2 block of positions averaged
    seen: list[torch.Tensor] = []
    hook = network.model.conv3.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            network(read_image(path)[None])
    finally:
        hook.remove()
    acts = seen[0][0]
    assert torch.allclose(cells.acts, acts, atol=1e-6)
    by_hand = acts.reshape(64, 8, 2, 8, 2).mean((2, 4)).flatten(1).T
    assert torch.allclose(cells.vectors, by_hand, atol=1e-5)
    every = grid.measure(network, "conv3", "conv3", path, 16)
    assert every.shape == (16, 16) and not every.pooled
    assert torch.allclose(every.vectors, acts.flatten(1).T, atol=1e-6)
    # a layer of at most 8 x 8 positions keeps them all by default
    assert grid.measure(network, "conv4", "conv4", path, None).shape == (8, 8)


@pytest.mark.parametrize(
    ("spatial", "cells", "shape"),
    [
        ((16, 16), None, (8, 8)),
        ((8, 8), None, (8, 8)),
        ((4, 6), None, (4, 6)),
        ((7, 10), None, (7, 8)),
        ((16, 16), 4, (4, 4)),
        ((16, 16), 16, (16, 16)),
        ((2, 30), 30, (2, 30)),
        ((64, 64), 32, (32, 32)),
    ],
)
def test_grid_shape(spatial: tuple[int, int], cells: int | None, shape: tuple[int, int]) -> None:
    assert grid.grid_shape("conv3", spatial, cells) == shape


@pytest.mark.parametrize(
    ("spatial", "cells", "message"),
    [
        ((16, 16), 20, "--cells 20: expected 1 to 16 (conv3 is 16x16 on this image)"),
        ((16, 16), 0, "--cells 0: expected 1 to 16"),
        ((64, 64), 40, "--cells 40: 1600 cells, more than the 1024 one optimization renders: "
         "use --cells 32 or fewer"),
    ],
)  # fmt: skip
def test_grid_shape_refusals(spatial: tuple[int, int], cells: int, message: str) -> None:
    with pytest.raises(UserError) as caught:
        grid.grid_shape("conv3", spatial, cells)
    assert str(caught.value).startswith(message)


def test_a_layer_without_places_is_refused(tmp_path: Path) -> None:
    network = build_network(ZooModelSpec(name="shapes"), tmp_path)
    path = halves(tmp_path / "halves.png")
    with pytest.raises(UserError, match=r"needs a \[B, C, H, W\] layer; this one gives \[1, 10\]"):
        grid.measure(network, "logits", "logits", path, None)
    with pytest.raises(UserError, match="no such file"):
        grid.measure(network, "conv3", "conv3", tmp_path / "missing.png", None)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="not a readable image"):
        grid.measure(network, "conv3", "conv3", tmp_path / "broken.png", None)


# ----------------------------------------------------------------------------- objectives


def test_grid_cells_is_each_items_dot_cossim_with_its_own_vector() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    v = torch.randn(4, 8)
    cells = grid.GridCells("layer", v)
    value = cells.value(x)
    for k in range(4):
        assert torch.allclose(value[k], DotCossim("layer", v[k], None).value(x)[k], atol=1e-5)
    # the same as a sum of masked dot_cossim terms, one per item, and with another power
    masked = Sum(tuple(Masked(DotCossim("layer", v[k], None), (k,)) for k in range(4)))
    assert torch.allclose(value, masked(Activations({"layer": x})), atol=1e-5)
    plain = grid.GridCells("layer", v, cossim_pow=0.0).value(x)
    for k in range(4):
        assert torch.allclose(plain[k], Direction("layer", v[k], None).value(x)[k], atol=1e-5)
    assert cells.name == "grid_cells(layer, cells=4)"


def test_grid_terms_need_one_item_per_cell() -> None:
    with pytest.raises(UserError, match=r"4 cells for a batch of 3 images: set param\.batch to 4"):
        grid.GridCells("conv3", torch.ones(4, 8)).value(torch.ones(3, 8, 2, 2))
    with pytest.raises(UserError, match="6 cells for a batch of 4 images"):
        grid.GridAlignment("conv3", 2, 3).value(torch.ones(4, 8, 2, 2))


def _pairs_by_hand(x: torch.Tensor, pairs: list[tuple[int, int, float]]) -> torch.Tensor:
    """Each item's alignment score: minus half of mean((x_a - x_b)^2) / w for each of its pairs."""
    out = torch.zeros(x.shape[0])
    for a, b, w in pairs:
        half = (x[a] - x[b]).square().mean() / w / 2
        out[a] -= half
        out[b] -= half
    return out


def test_grid_alignment_by_hand() -> None:
    # 2 x 3 cells: 0 1 2 / 3 4 5. Neighbours at distance 1 (weight 1/2): along rows and columns,
    # never 2 with 3 (batch neighbours, on different rows); at distance 2 (1/4): 0-2 and 3-5.
    torch.manual_seed(1)
    x = torch.randn(6, 4, 3, 3)
    near = [(0, 1, 2), (1, 2, 2), (3, 4, 2), (4, 5, 2), (0, 3, 2), (1, 4, 2), (2, 5, 2)]
    value = grid.GridAlignment("layer", 2, 3).value(x)
    assert torch.allclose(value, _pairs_by_hand(x, near), atol=1e-6)
    assert torch.allclose(value.sum(), -sum((x[a] - x[b]).square().mean() / 2 for a, b, _ in near))
    farther = grid.GridAlignment("layer", 2, 3, decay=2.0, distance=2).value(x)
    assert torch.allclose(farther, _pairs_by_hand(x, [*near, (0, 2, 4), (3, 5, 4)]), atol=1e-6)
    # one row is the batch-order alignment with the same neighbours
    row = grid.GridAlignment("layer", 1, 6, distance=3).value(x)
    assert torch.allclose(row, Alignment("layer", 2.0, 3).value(x), atol=1e-6)
    assert grid.GridAlignment("layer", 1, 1).value(x[:1]).tolist() == [0.0]


def test_grid_alignment_gradient_pulls_each_cell_towards_its_grid_neighbours() -> None:
    # d(total)/d x_b = 2 / (M decay) * sum over b's neighbours n of (x_n - x_b), M: values per
    # item: cell 2 (end of the first row) is pulled towards 1 and 5, not towards 3.
    torch.manual_seed(2)
    x = torch.randn(6, 4, 3, 3, requires_grad=True)
    grid.GridAlignment("layer", 2, 3).value(x).sum().backward()
    neighbours = {0: [1, 3], 1: [0, 2, 4], 2: [1, 5], 3: [0, 4], 4: [3, 5, 1], 5: [4, 2]}
    m = x[0].numel()
    for b, ns in neighbours.items():
        expected = 2 / (m * 2.0) * sum(x[n] - x[b] for n in ns)
        assert torch.allclose(x.grad[b], expected.detach(), atol=1e-6)
    # a step up the gradient brings neighbours closer
    grid_x = x.detach()
    after = grid_x + 0.5 * x.grad
    for b, ns in neighbours.items():
        for n in ns:
            assert (after[b] - after[n]).norm() < (grid_x[b] - grid_x[n]).norm()


# ----------------------------------------------------------------------------- the picture


def test_tile_lays_renders_out_row_major() -> None:
    renders = torch.arange(6.0)[:, None, None, None].expand(6, 3, 4, 5) / 10
    tiled = grid.tile(renders, (2, 3))
    assert tiled.shape == (3, 8, 15)
    for i in range(2):
        for j in range(3):
            block = tiled[:, 4 * i : 4 * i + 4, 5 * j : 5 * j + 5]
            assert torch.all(block == renders[3 * i + j])


def test_tile_scales_a_grid_larger_than_max_side_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid, "MAX_SIDE", 32)
    tiled = grid.tile(torch.rand(8, 3, 16, 16), (2, 4))
    assert tiled.shape == (3, 16, 32)  # 4 columns of 16 px would be 64: halved


def test_picture_puts_the_image_beside_the_tiles_at_their_height(tmp_path: Path) -> None:
    path = halves(tmp_path / "halves.png")
    tiled = torch.zeros(3, 128, 192)
    sheet = grid.picture(path, (64, 64), tiled, (2, 3))
    assert sheet.size == (128 + grid.GAP + 192, 128)
    pixels = np.asarray(sheet)
    assert (pixels[:, 128 + grid.GAP :] == 0).all()  # the tiles
    assert (pixels[64, :128] == grid.LINES).all()  # the line between the two rows of cells
    wide = grid.picture(path, (32, 64), tiled, (2, 3))  # a model input twice as wide as high
    assert wide.size == (256 + grid.GAP + 192, 128)


def test_far_cells() -> None:
    assert grid.far_cells((2, 3)).tolist() == [5, 3, 3, 2, 0, 0]  # ties: the first
    assert grid.far_cells((1, 1)).tolist() == [0]


# ----------------------------------------------------------------------------- a render


def test_a_short_render_excites_each_cells_own_direction_more_than_the_farthest(
    tmp_path: Path,
) -> None:
    # 4 x 4 cells of conv3 on the halves image, 48 steps through fvis's render path: each cell's
    # direction is excited more by its own render than by the farthest cell's (in the other
    # half), each render's objective term is its own score, and the stripe half's renders have
    # horizontal stripes.
    sets = ["optim.steps=48"]
    loaded = load_config(QUICKSTART, sets)
    network = build_network(loaded.config.model, QUICKSTART.parent)
    cells = grid.measure(network, "conv3", "conv3", halves(tmp_path / "halves.png"), 4)
    tensors = grid.save_tensors(tmp_path, cells)
    overrides = grid.render_overrides(loaded.config, sets, tensors, cells, grid.ALIGN)
    render = load_config(QUICKSTART, overrides).config
    assert render.param.batch == 16 and render.param.shared == grid.SHARED
    plan = build_plan(render, QUICKSTART.parent)
    result = Renderer(plan).run()
    images = plan.param.opaque(result.final.images)
    scores = grid.excitation(plan.network, "conv3", images, cells.vectors)
    own, far = scores.diagonal(), scores[grid.far_cells((4, 4)), torch.arange(16)]
    assert (own > far).all(), (own, far)
    term = torch.tensor(result.final.terms["grid_cells(conv3, cells=16)"])
    assert torch.allclose(term, own, rtol=1e-4, atol=1e-4)
    assert set(result.final.terms) == {"grid_cells(conv3, cells=16)", "grid_alignment(conv3, 4, 4)"}
    for b in (0, 4, 8, 12):  # the left column: the stripes
        shares = orientation_shares(images[b])
        assert max(shares, key=shares.get) == 0, shares
    measures = grid.summary(scores, images, (4, 4))
    assert measures["own_over_farthest"] == 1.0
    assert measures["neighbour_difference"] < measures["pair_difference"]
    saved = load_file(str(tensors))
    assert saved["layout"].tolist() == [4, 4] and torch.equal(saved["vectors"], cells.vectors)
