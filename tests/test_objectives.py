"""Objectives: values checked against hand computation, the algebra, gradients to the image."""

from __future__ import annotations

import pytest
import torch

from fvis import objectives as obj
from fvis.objectives import Activations


def acts(**tensors: torch.Tensor) -> Activations:
    return Activations(dict(tensors))


# A [2, 2, 2, 3] activation whose values are easy to sum by hand.
A = torch.arange(24, dtype=torch.float32).view(2, 2, 2, 3)


def test_channel_is_the_spatial_mean() -> None:
    # item 0, channel 1 holds 6..11 -> mean 8.5; item 1, channel 1 holds 18..23 -> 20.5
    assert obj.Channel("a", 1)(acts(a=A)).tolist() == [8.5, 20.5]


def test_channel_on_a_dense_layer() -> None:
    dense = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert obj.Channel("d", 2)(acts(d=dense)).tolist() == [3.0, 6.0]


def test_neuron_defaults_to_the_centre_and_uses_x_as_column() -> None:
    # H=2, W=3: centre row 1, column 1 -> item 0 channel 0 value 4
    assert obj.Neuron("a", 0)(acts(a=A)).tolist() == [4.0, 16.0]
    # x=2 (column), y=0 (row) -> value 2 for item 0
    assert obj.Neuron("a", 0, x=2, y=0)(acts(a=A)).tolist() == [2.0, 14.0]


def test_neuron_check_rejects_positions_outside() -> None:
    with pytest.raises(obj.TermError, match="x=3 is outside"):
        obj.Neuron("a", 0, x=3, y=0).check((2, 2, 2, 3))


def test_layer_mean() -> None:
    assert obj.LayerMean("a")(acts(a=A)).tolist() == [5.5, 17.5]


def test_class_logit_sums_the_chosen_classes() -> None:
    z = torch.tensor([[1.0, -2.0, 5.0], [0.5, 0.25, 0.0]])
    assert obj.ClassLogit("z", (0, 2))(acts(z=z)).tolist() == [6.0, 0.5]


def test_total_variation_by_hand() -> None:
    x = torch.tensor([[[[0.0, 1.0], [3.0, 7.0]]]])
    # vertical |3-0| + |7-1| = 9, horizontal |1-0| + |7-3| = 5
    assert obj.TotalVariation("image")(acts(image=x)).tolist() == [14.0]


def test_l1_and_l2_with_a_constant() -> None:
    x = torch.tensor([[1.0, -1.0, 3.0]])
    assert obj.L1("x")(acts(x=x)).tolist() == [5.0]
    assert obj.L1("x", constant=1.0)(acts(x=x)).tolist() == [4.0]
    assert obj.L2("x")(acts(x=x)).item() == pytest.approx(11**0.5)
    assert obj.L2("x", constant=1.0)(acts(x=x)).item() == pytest.approx(8**0.5)  # 0 + 4 + 4


def test_algebra_composes_like_numbers() -> None:
    a, b = obj.Channel("a", 0), obj.Channel("a", 1)  # [2.5, 14.5] and [8.5, 20.5]
    combined = 2 * a - b + 1.0
    assert combined(acts(a=A)).tolist() == [2 * 2.5 - 8.5 + 1, 2 * 14.5 - 20.5 + 1]
    assert (-a)(acts(a=A)).tolist() == [-2.5, -14.5]
    assert combined.name == "2 * channel(a, 0) - channel(a, 1) + 1"
    assert [leaf.name for leaf in combined.leaves()] == ["channel(a, 0)", "channel(a, 1)"]
    assert combined.layers == {"a"}


def test_masked_restricts_to_batch_items() -> None:
    masked = obj.Masked(obj.Channel("a", 0), (1,))
    assert masked(acts(a=A)).tolist() == [0.0, 14.5]


def test_leaf_values_are_computed_once_per_pass() -> None:
    calls = []

    class Counting(obj.Channel):
        def value(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return super().value(x)

    leaf = Counting("a", 0)
    activations = acts(a=A)
    (leaf + 2 * leaf)(activations)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "objective",
    [
        obj.Channel("a", 1),
        obj.Neuron("a", 1),
        obj.LayerMean("a"),
        obj.TotalVariation("a"),
        obj.L1("a"),
        obj.L2("a"),
    ],
    ids=lambda o: o.name,
)
def test_gradient_reaches_the_image(objective: obj.Objective) -> None:
    image = torch.rand(2, 3, 8, 8, requires_grad=True)
    conv = torch.nn.Conv2d(3, 4, 3)
    score = objective(acts(a=conv(image)))
    score.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_class_logit_gradient_reaches_the_image() -> None:
    image = torch.rand(2, 3, 4, 4, requires_grad=True)
    logits = torch.nn.Linear(48, 5)(image.flatten(1))
    obj.ClassLogit("z", (3,))(acts(z=logits)).sum().backward()
    assert image.grad.abs().sum() > 0
