"""A pad that keeps its frame: the model sees the whole padded canvas (lucid's transforms); terms
that average over positions read the frame's positions too, terms that index positions read the
image's own."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from conftest import tiny_config
from fvis.build import build_plan, streams_for
from fvis.config import StandardTransform, load_config
from fvis.objectives.activation import Channel, Neuron
from fvis.objectives.algebra import Activations
from fvis.objectives.batch import ItemWise
from fvis.render import Renderer
from fvis.transforms import Jitter, Pad, Pipeline, build_transforms


def test_a_framed_pad_gives_the_model_the_whole_canvas() -> None:
    x = torch.rand(2, 3, 8, 10)
    framed = Pipeline([Pad(3, "constant", 0.3, frame=True), Jitter(0)])
    out = framed(x, streams_for(0, [0, 1]))
    assert out.shape == (2, 3, 14, 16) and framed.canvas((8, 10)) == (14, 16)
    assert torch.allclose(out, F.pad(x, (3,) * 4, value=0.3), atol=1e-6)
    cropped = Pipeline([Pad(3, "constant", 0.3), Jitter(0)])
    assert cropped.canvas((8, 10)) == (8, 10)
    assert cropped(x, streams_for(0, [0, 1])).shape == x.shape


def test_the_standard_stack_frames_with_its_own_pad() -> None:
    framed = build_transforms([StandardTransform(kind="standard", frame=True)], (64, 64))
    assert framed.canvas((64, 64)) == (70, 70)  # lucid's 12 px pad, scaled to 64 px: 3
    cropped = build_transforms([StandardTransform(kind="standard")], (64, 64))
    assert cropped.canvas((64, 64)) == (64, 64)


def _framed_acts() -> tuple[torch.Tensor, Activations]:
    """A [2, 1, 6, 6] map whose image part is its centre 2 x 2 (a frame of 2 positions)."""
    x = torch.arange(72.0).view(2, 1, 6, 6)
    return x, Activations({"a": x}, regions={"a": (2, 2)})


def test_indexing_gives_the_image_part_of_a_framed_map_and_whole_gives_all() -> None:
    x, acts = _framed_acts()
    assert torch.equal(acts["a"], x[..., 2:4, 2:4])
    assert acts.whole("a") is x
    assert Activations({"a": x})["a"] is x  # no frame: the map as it is


def test_averaging_terms_read_the_frame_and_position_terms_the_image() -> None:
    x, acts = _framed_acts()
    # mean of 0..35 is 17.5 for item 0, of 36..71 is 53.5 for item 1
    assert Channel("a", 0)(acts).tolist() == [17.5, 53.5]
    # the image's top-left position is the canvas map's (2, 2): 2 * 6 + 2 = 14
    assert Neuron("a", 0, x=0, y=0)(acts).tolist() == [14.0, 50.0]
    assert Neuron("a", 0, x=1, y=0)(acts).tolist() == [15.0, 51.0]
    # a sweep's stacked channels read the frame as the channel alone does
    sweep = ItemWise((Channel("a", 0), Channel("a", 0)))
    assert sweep(Activations({"a": x}, regions={"a": (2, 2)})).tolist() == [17.5, 53.5]


def _render(workdir: Path, frame: bool, objective: dict) -> Renderer:
    config = tiny_config(
        objective=objective,
        param={"kind": "pixel", "size": 24},
        optim={"steps": 1, "redirected_relu": 0},
        transforms=[{"kind": "pad", "pixels": 4, "frame": frame}, {"kind": "jitter", "pixels": 0}],
    )
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))
    loaded = load_config(workdir / "cfg.yaml", []).config
    return Renderer(build_plan(loaded, workdir))


def test_a_framed_neuron_at_the_image_corner_moves_the_image_corner(workdir: Path) -> None:
    """conv2 (stride 2) maps the 24 px image to 12 x 12 and the 32 px canvas to 16 x 16; the
    neuron at the image's (0, 0) is the canvas map's (2, 2), whose receptive field covers the
    image's top-left pixels. Read at the canvas's (0, 0), it would see the frame only."""
    neuron = {"kind": "neuron", "layer": "conv2", "channel": 3, "x": 0, "y": 0}
    renderer = _render(workdir, True, neuron)
    assert renderer.plan.regions == {"2": (12, 12)}
    result = renderer.run()
    moved = (result.final.images - result.snapshots[0].images).abs().sum((0, 1)) > 0
    assert moved[:3, :3].all()  # the pixels under the neuron's receptive field
    assert not moved[8:, :].any() and not moved[:, 8:].any()


def test_a_framed_render_differs_from_a_cropped_one(workdir: Path) -> None:
    channel = {"kind": "channel", "layer": "conv2", "channel": 3}
    framed, cropped = (_render(workdir, frame, channel) for frame in (True, False))
    assert cropped.plan.regions == {}
    images = [r.run().final.images for r in (framed, cropped)]
    assert not torch.equal(*images)
