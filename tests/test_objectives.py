"""Objectives: each value checked against a hand computation, the algebra, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from fvis.objectives import activation as act
from fvis.objectives import batch as bat
from fvis.objectives import direction as dirn
from fvis.objectives.algebra import Activations, Interpolate, Masked, Objective, Sum, TermError

# A [2, 2, 2, 3] activation whose values are easy to sum by hand.
A = torch.arange(24, dtype=torch.float32).view(2, 2, 2, 3)
# One item, two channels, a 1x2 map: position p1 = (1, 0), position p2 = (0, 2).
P = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
V = torch.tensor([1.0, 1.0])
R2 = math.sqrt(2)


def acts(**tensors: torch.Tensor) -> Activations:
    return Activations(dict(tensors))


def value(objective: Objective, **tensors: torch.Tensor) -> list[float]:
    return objective(acts(**tensors)).tolist()


# ----------------------------------------------------------------------------- activation


def test_channel_is_the_spatial_mean() -> None:
    # item 0, channel 1 holds 6..11 -> mean 8.5; item 1, channel 1 holds 18..23 -> 20.5
    assert value(act.Channel("a", 1), a=A) == [8.5, 20.5]


def test_channel_on_dense_and_token_layers() -> None:
    dense = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert value(act.Channel("d", 2), d=dense) == [3.0, 6.0]
    tokens = torch.tensor([[[1.0, 10.0], [3.0, 20.0], [5.0, 30.0]]])  # [B=1, T=3, C=2]
    assert value(act.Channel("t", 1), t=tokens) == [20.0]


def test_neuron_defaults_to_the_centre_and_uses_x_as_column() -> None:
    # H=2, W=3: centre row 1, column 1 -> item 0 channel 0 value 4
    assert value(act.Neuron("a", 0), a=A) == [4.0, 16.0]
    # x=2 (column), y=0 (row) -> value 2 for item 0
    assert value(act.Neuron("a", 0, x=2, y=0), a=A) == [2.0, 14.0]


def test_neuron_on_a_non_square_map_and_on_tokens() -> None:
    wide = torch.zeros(1, 1, 3, 7)
    wide[0, 0, 1, 3] = 5.0  # the centre of a 3x7 map is row 1, column 3
    assert value(act.Neuron("w", 0), w=wide) == [5.0]
    tokens = torch.tensor([[[1.0, 10.0], [3.0, 20.0], [5.0, 30.0]]])
    assert value(act.Neuron("t", 1), t=tokens) == [20.0]  # centre token 1
    assert value(act.Neuron("t", 0, x=2), t=tokens) == [5.0]


def test_neuron_check_rejects_positions_outside() -> None:
    with pytest.raises(TermError, match="x=3 is outside"):
        act.Neuron("a", 0, x=3, y=0).check({"a": (2, 2, 2, 3)})
    with pytest.raises(TermError, match="channel 5 is out of range: the layer has 2 channels"):
        act.Neuron("a", 5).check({"a": (2, 2, 2, 3)})


def test_layer_mean_and_deepdream() -> None:
    assert value(act.LayerMean("a"), a=A) == [5.5, 17.5]
    assert value(act.DeepDream("p"), p=P) == [1.25]  # (1 + 0 + 0 + 4) / 4


def test_class_logit_sums_the_chosen_classes() -> None:
    z = torch.tensor([[1.0, -2.0, 5.0], [0.5, 0.25, 0.0]])
    assert value(act.ClassLogit("z", (0, 2)), z=z) == [6.0, 0.5]
    with pytest.raises(TermError, match=r"expects a \[B, classes\] layer"):
        act.ClassLogit("z", (0,)).check({"z": (1, 3, 4, 4)})


def test_total_variation_by_hand() -> None:
    x = torch.tensor([[[[0.0, 1.0], [3.0, 7.0]]]])
    # vertical |3-0| + |7-1| = 9, horizontal |1-0| + |7-3| = 5
    assert value(act.TotalVariation("image"), image=x) == [14.0]


def test_l1_l2_and_l2_mean_with_a_constant() -> None:
    x = torch.tensor([[1.0, -1.0, 3.0]])
    assert value(act.L1("x"), x=x) == [5.0]
    assert value(act.L1("x", constant=1.0), x=x) == [4.0]
    assert value(act.L2("x"), x=x)[0] == pytest.approx(11**0.5)
    assert value(act.L2("x", constant=1.0), x=x)[0] == pytest.approx(8**0.5)  # 0 + 4 + 4
    assert value(act.L2Mean("x", constant=1.0), x=x)[0] == pytest.approx(8 / 3)


# ----------------------------------------------------------------------------- directions


def test_direction_is_the_mean_dot_product_then_cosine_weighted() -> None:
    assert value(dirn.Direction("p", V, None), p=P) == [1.5]  # dots 1 and 2
    # cos is 1/sqrt(2) at both positions: (1 + 2) / sqrt(2) / 2
    assert value(dirn.Direction("p", V, None, cossim_pow=1), p=P)[0] == pytest.approx(3 / R2 / 2)


def test_cosine() -> None:
    assert value(dirn.Cosine("p", V, None), p=P)[0] == pytest.approx(1 / R2)


def test_dot_cossim_never_rewards_the_opposite_direction() -> None:
    aligned = torch.tensor([[[[1.0]], [[1.0]]]])
    opposite = -aligned
    objective = dirn.DotCossim("a", V, None, cossim_pow=1, floor=0.1)
    assert value(objective, a=aligned)[0] == pytest.approx(2.0)  # dot 2, cos 1
    # dot -2, cos -1 floored to 0.1: -2 * 0.1 < 0 ...
    assert value(objective, a=opposite)[0] == pytest.approx(-0.2)
    # ... where the unfloored product of two negatives would reward it: -2 * -1 = +2
    assert value(dirn.DotCossim("a", V, None, cossim_pow=1, floor=-1.0), a=opposite) == [2.0]


def test_neuron_directions_read_the_centre() -> None:
    # 1x2 map: centre column 1 -> p2 = (0, 2): dot 2, cos 1/sqrt(2)
    assert value(dirn.NeuronDirection("p", V, None), p=P) == [2.0]
    angled = dirn.AngledNeuronDirection("p", V, None, cossim_pow=4)
    assert value(angled, p=P)[0] == pytest.approx(2 * 0.25)


def test_whitened_comparison_maps_both_sides() -> None:
    scale_first = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # mapped p1 = (2, 0), p2 = (0, 2); mapped v = (2, 1): dots 4 and 2
    assert value(dirn.Direction("p", V, scale_first), p=P) == [3.0]


def test_dot_orthogonal_penalty() -> None:
    # each position is 45 degrees off v: along and orthogonal parts are equal
    assert value(dirn.DotOrthogonal("p", V, None, penalty=1.0), p=P)[0] == pytest.approx(0.0)
    half = dirn.DotOrthogonal("p", V, None, penalty=0.5)
    assert value(half, p=P)[0] == pytest.approx((1 / R2 + R2) / 2 / 2)


def test_vector_loss_relu() -> None:
    assert value(dirn.VectorLoss("p", V, None), p=P) == [1.5]
    assert value(dirn.VectorLoss("p", -V, None), p=P) == [0.0]
    assert value(dirn.VectorLoss("p", -V, None, relu=False), p=P) == [-1.5]


def test_tensor_direction_uses_the_centred_window() -> None:
    window = torch.tensor([[[1.0]], [[1.0]]])  # [C=2, 1, 1]; the window of a 1x2 map is p1
    assert value(dirn.TensorDirection("p", window), p=P) == [1.0]
    with pytest.raises(TermError, match="the tensor has shape"):
        dirn.TensorDirection("p", torch.ones(3, 1, 1)).check({"p": (1, 2, 1, 2)})


def test_activation_weights() -> None:
    weights = torch.tensor([2.0, 3.0])
    assert value(dirn.ActivationWeights("p", weights), p=P) == [4.0]  # (2 + 6) / 2
    per_element = torch.tensor([[[1.0, 0.0]], [[0.0, 0.5]]])
    assert value(dirn.ActivationWeights("p", per_element), p=P) == [1.0]  # (1 + 1) / 2


def test_facet() -> None:
    facet = dirn.Facet("p", "u", V, torch.tensor([2.0, 3.0]), strength=0.5)
    assert facet.reads == ("p", "u")
    assert value(facet, p=P, u=torch.tensor([[1.0, 2.0]])) == [3.0 + 0.5 * 4.0]


def test_l2_inversion() -> None:
    # per-position target (1, 0): p1 matches, p2 is off by (-1, 2)
    assert value(dirn.L2Inversion("p", torch.tensor([1.0, 0.0])), p=P)[0] == pytest.approx(
        -math.sqrt(5)
    )
    assert value(dirn.L2Inversion("p", P[0]), p=P)[0] == pytest.approx(0.0, abs=1e-5)


def test_vector_shape_errors_state_both_shapes() -> None:
    with pytest.raises(TermError, match=r"the vector has shape \[3\], the layer needs \[2\]"):
        dirn.Direction("p", torch.ones(3), None).check({"p": (1, 2, 1, 2)})


# ----------------------------------------------------------------------------- batch


def test_diversity_by_gram_cosine() -> None:
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, :, None, None]  # grams don't overlap
    assert value(bat.Diversity("a"), a=orthogonal) == [0.0, 0.0]
    same_style = torch.tensor([[1.0, 0.0], [2.0, 0.0]])[:, :, None, None]
    assert value(bat.Diversity("a"), a=same_style) == pytest.approx([-1.0, -1.0])
    assert value(bat.Diversity("a"), a=orthogonal[:1]) == [0.0]


def test_alignment_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0]])
    # pairs: (0,1) mse 1 / 2, (1,2) mse 4 / 2, (0,2) mse 9 / 4; half of each to each item
    got = value(bat.Alignment("a", decay=2.0, distance=4), a=x)
    assert got == pytest.approx([-(0.25 + 1.125), -(0.25 + 1.0), -(1.0 + 1.125)])


def test_interpolation_weights_items_along_the_batch() -> None:
    x = torch.tensor([[1.0, 3.0], [1.0, 3.0], [1.0, 3.0]])
    interpolate = Interpolate(act.Channel("x", 0), act.Channel("x", 1))
    assert value(interpolate, x=x) == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- algebra


def test_algebra_composes_like_numbers() -> None:
    a, b = act.Channel("a", 0), act.Channel("a", 1)  # [2.5, 14.5] and [8.5, 20.5]
    combined = 2 * a - b + 1.0
    assert value(combined, a=A) == [2 * 2.5 - 8.5 + 1, 2 * 14.5 - 20.5 + 1]
    assert value(-a, a=A) == [-2.5, -14.5]
    assert value(a * b, a=A) == [2.5 * 8.5, 14.5 * 20.5]
    assert value(a**2, a=A) == [6.25, 210.25]
    assert value(a / 2, a=A) == [1.25, 7.25]
    assert combined.name == "2 * channel(a, 0) - channel(a, 1) + 1"
    assert [leaf.name for leaf in combined.leaves()] == ["channel(a, 0)", "channel(a, 1)"]
    assert combined.layers == {"a"}


def test_masked_restricts_to_batch_items() -> None:
    assert value(Masked(act.Channel("a", 0), (1,)), a=A) == [0.0, 14.5]


def test_leaf_values_are_computed_once_per_pass() -> None:
    calls = []

    class Counting(act.Channel):
        def value(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return super().value(x)

    leaf = Counting("a", 0)
    (leaf + 2 * leaf)(acts(a=A))
    assert len(calls) == 1


def test_tuple_outputs_are_selected_by_spec() -> None:
    activations = Activations({"block": (torch.ones(1, 2), {"attn": torch.zeros(1, 3)})})
    assert activations["block[0]"].shape == (1, 2)
    assert activations["block[1][attn]"].shape == (1, 3)
    with pytest.raises(TypeError, match="not a tensor; select one with"):
        activations["block"]


LEAVES = [
    act.Channel("a", 1),
    act.Neuron("a", 1),
    act.LayerMean("a"),
    act.DeepDream("a"),
    act.TotalVariation("a"),
    act.L1("a"),
    act.L2("a"),
    act.L2Mean("a"),
    dirn.Direction("a", torch.ones(4), None, cossim_pow=1),
    dirn.DotCossim("a", torch.ones(4), None, cossim_pow=1),
    dirn.Cosine("a", torch.ones(4), None),
    dirn.NeuronDirection("a", torch.ones(4), None),
    dirn.AngledNeuronDirection("a", torch.ones(4), None, cossim_pow=4),
    dirn.DotOrthogonal("a", torch.ones(4), None),
    dirn.VectorLoss("a", torch.ones(4), None),
    dirn.TensorDirection("a", torch.ones(4, 2, 2)),
    dirn.ActivationWeights("a", torch.arange(4.0)),
    dirn.Facet("a", "a", torch.ones(4), torch.ones(4)),
    dirn.L2Inversion("a", torch.ones(4)),
    bat.Diversity("a"),
    bat.Alignment("a"),
    Interpolate(act.Channel("a", 0), act.Channel("a", 1)),
]


@pytest.mark.parametrize("objective", LEAVES, ids=lambda o: o.name.split("(")[0])
def test_gradient_reaches_the_image(objective: Objective) -> None:
    image = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    score = objective(acts(a=conv(image)))
    assert score.shape == (3,)
    score.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_class_logit_gradient_reaches_the_image() -> None:
    image = torch.rand(2, 3, 4, 4, requires_grad=True)
    logits = torch.nn.Linear(48, 5)(image.flatten(1))
    act.ClassLogit("z", (3,))(acts(z=logits)).sum().backward()
    assert image.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- several channels


def test_several_channels_sum_their_means() -> None:
    """keras-vis's filter_indices: the sum over the listed channels of each one's mean."""
    assert value(act.Channel("a", (0, 1)), a=A) == [2.5 + 8.5, 14.5 + 20.5]
    assert value(act.Channel("a", [1, 1]), a=A) == [17.0, 41.0]  # listed twice, counted twice
    one = act.Channel("a", [1])
    assert (one.channel, one.name, value(one, a=A)) == (1, "channel(a, 1)", [8.5, 20.5])


def test_several_channels_of_a_neuron_sum_at_its_position() -> None:
    assert value(act.Neuron("a", (0, 1)), a=A) == [4.0 + 10.0, 16.0 + 22.0]


def test_each_listed_channel_is_checked_and_named() -> None:
    act.Channel("a", (0, 1)).check({"a": (1, 2, 2, 3)})
    with pytest.raises(TermError, match="channel 7 is out of range: the layer has 2") as info:
        act.Channel("a", (1, 7)).check({"a": (1, 2, 2, 3)})
    assert info.value.loc == ("channel", 1)
    with pytest.raises(TermError) as info:
        act.Neuron("a", 7).check({"a": (1, 2, 2, 3)})
    assert info.value.loc == ("channel",)


# ----------------------------------------------------------------------------- labels

VEC = torch.tensor([1.0, 1.0])


def test_labels_show_the_parameters_that_tell_terms_apart() -> None:
    """Each leaf's name (its label in run.json) shows its parameters where they differ from the
    defaults: two terms differing in any parameter never share a label (issue 15)."""
    labels = {
        act.L1("image"): "l1(image)",
        act.L1("image", 0.5): "l1(image, 0.5)",
        act.L2("image", 1e-7): "l2(image, 1e-07)",
        act.L2Mean("image", 0.1234567): "l2_mean(image, 0.1234567)",
        act.Channel("a", (5, 12)): "channel(a, [5, 12])",
        act.Neuron("a", 1, y=2): "neuron(a, 1, y=2)",
        act.ClassLogit("output", (1,)): "class_logit(output, 1)",
        act.ClassLogit("output", (1, 2)): "class_logit(output, [1, 2])",
        dirn.Direction("p", VEC, None): "direction(p, vector#e242)",
        dirn.Direction("p", -VEC, None): "direction(p, vector#e3a3)",
        dirn.Direction("p", VEC, None, cossim_pow=1): "direction(p, vector#e242, cossim_pow=1)",
        dirn.Direction(
            "p", VEC, torch.eye(2)
        ): "direction(p, vector#e242, transform=transform#acc3)",
        dirn.Direction("p", VEC, None, sources={"vector": "random(3)"}): "direction(p, random(3))",
        dirn.DotCossim("p", VEC, None): "dot_cossim(p, vector#e242)",
        dirn.DotCossim("p", VEC, None, cossim_pow=2): "dot_cossim(p, vector#e242, cossim_pow=2)",
        dirn.AngledNeuronDirection("p", VEC, None): "angled_neuron_direction(p, vector#e242)",
        dirn.NeuronDirection("p", VEC, None, x=1): "neuron_direction(p, vector#e242, x=1)",
        dirn.VectorLoss("p", VEC, None, relu=False): "vector(p, vector#e242, relu=False)",
        dirn.DotOrthogonal("p", VEC, None, penalty=2): "dot_orthogonal_penalty(p, vector#e242, "
        "penalty=2)",
        dirn.TensorDirection("p", torch.ones(2, 1, 1)): "tensor_direction(p, tensor#160b)",
        dirn.ActivationWeights("p", VEC): "activation_weights(p, weights#e242)",
        dirn.Facet("p", "u", VEC, VEC, strength=0.5): "facet(p, u, vector#e242, weights#e242, "
        "strength=0.5)",
        dirn.L2Inversion("p", VEC): "l2_inversion(p, target#e242)",
        bat.Alignment("p"): "alignment(p)",
        bat.Alignment("p", 3.0, 2): "alignment(p, decay=3, distance=2)",
    }
    assert {leaf: leaf.name for leaf in labels} == labels


def test_a_vector_label_is_its_values_digest_on_any_device_and_dtype() -> None:
    """The same numbers give the same label in every run, whatever the tensor's dtype."""
    assert dirn.Direction("p", VEC.double(), None).name == "direction(p, vector#e242)"
    moved = dirn.Direction("p", VEC, None).to(torch.device("cpu"), torch.float64)
    assert moved.name == "direction(p, vector#e242)"


# ----------------------------------------------------------------------------- item-wise


def test_item_wise_scores_each_item_by_its_own_term_as_masks_would() -> None:
    # Item i of a batch of 4 scores terms[i]: channel sweeps on two layers and directions
    # (each stacked), every item's own copy of one regularizer (computed once), a channel list
    # and a constant (each on its own).
    image = torch.rand(4, 3, 4, 4, requires_grad=True)
    a = image.repeat(1, 2, 1, 1) * 2 - 0.5  # [4, 6, 4, 4]
    d = image.flatten(1)[:, :5] ** 2  # a dense layer [4, 5]
    u, w = torch.randn(6), torch.randn(6)

    def terms() -> tuple[Objective, ...]:
        return (
            act.Channel("a", 4) - 0.5 * act.TotalVariation(),
            act.Channel("d", 2) + 2.0 * act.Channel("a", 1) - 0.25 * act.TotalVariation(),
            act.Channel("a", (0, 5)) + 1.0 - 0.5 * act.TotalVariation(),
            dirn.DotCossim("a", u, None) + 3.0 * dirn.DotCossim("a", w, None),
        )

    masked = Sum(tuple(Masked(t, (i,)) for i, t in enumerate(terms())))
    item_wise = bat.ItemWise(terms())
    got = acts(a=a, d=d, image=image)
    expected = masked(acts(a=a, d=d, image=image))
    assert torch.allclose(item_wise(got), expected)
    by_hand = [
        (a[0, 4].mean() - 0.5 * act.TotalVariation().value(image)[0]).item(),
        (d[1, 2] + 2 * a[1, 1].mean() - 0.25 * act.TotalVariation().value(image)[1]).item(),
        (a[2, 0].mean() + a[2, 5].mean() + 1 - 0.5 * act.TotalVariation().value(image)[2]).item(),
        (
            dirn.DotCossim("a", u, None).value(a)[3] + 3 * dirn.DotCossim("a", w, None).value(a)[3]
        ).item(),
    ]
    assert item_wise(got).tolist() == pytest.approx(by_hand, rel=1e-6)
    # every leaf's memoized value is its value on every item, as a render's trace records it
    for leaf in item_wise.leaves():
        assert torch.allclose(got.values[leaf], leaf.compute(got)), leaf.name
    # and the gradient to the image is the masked sum's
    (grad,) = torch.autograd.grad(
        item_wise(acts(a=a, d=d, image=image)).sum(), image, retain_graph=True
    )
    (want,) = torch.autograd.grad(expected.sum(), image)
    assert torch.allclose(grad, want, atol=1e-6)
    assert item_wise.name == masked.name
    # one gather per layer of single channels, one product for the directions; the items'
    # regularizers computed once
    stacks = {(kind.__name__, key): len(m) for (kind, key), m in item_wise.stacks.items()}
    assert stacks == {
        ("Channel", ("a",)): 2,
        ("Channel", ("d",)): 1,
        ("DotCossim", ("a", 1.0, 0.1)): 2,
    }
    assert len(item_wise.shared[act.TotalVariation, ("image",)]) == 3
