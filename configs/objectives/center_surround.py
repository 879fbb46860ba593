"""A plugin objective for plugin.yaml: a channel's response in the centre minus its mean.

Any importable module works; fvis puts the config's folder on the import path. The factory gets
`layer` resolved to its layer spec and the node's other keys as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fvis.objectives import Leaf


@dataclass(eq=False)
class CenterSurround(Leaf):
    """mean of channel c over the central half of the map minus its mean over the whole map."""

    layer: str
    channel: int

    def __post_init__(self) -> None:
        self.name = f"center_surround({self.layer}, {self.channel})"

    def value(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, self.channel]
        h, w = a.shape[-2:]
        centre = a[:, h // 4 : h - h // 4, w // 4 : w - w // 4]
        return centre.mean((1, 2)) - a.mean((1, 2))


def center_surround(layer: str, channel: int) -> CenterSurround:
    """The factory plugin.yaml names."""
    return CenterSurround(layer, channel)
