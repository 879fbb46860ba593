"""ShapesNet: the small CNN of the "shapes" zoo model, with named, hookable layers.

Layout (for a 64x64 input; any size works thanks to the global pooling):

* ``conv1``: Conv3x3(3->16)-BN-ReLU, output ``[B, 16, 64, 64]`` (post-ReLU), then ``pool1``;
* ``conv2``: Conv3x3(16->32)-BN-ReLU, output ``[B, 32, 32, 32]`` (post-ReLU), then ``pool2``;
* ``conv3``: Conv3x3(32->64)-BN-ReLU, output ``[B, 64, 16, 16]`` (post-ReLU), then ``pool3``;
* ``conv4``: Conv3x3(64->64)-BN-ReLU, output ``[B, 64, 8, 8]`` (post-ReLU);
* ``pool``: global average pooling, ``[B, 64, 1, 1]``;
* ``logits``: Linear(64->10), ``[B, 10]`` (pre-softmax class scores).

Hooking a block name (``conv3``) gives its post-ReLU activation; the inner modules are reachable
as ``conv3.conv`` (pre-BN), ``conv3.bn`` (pre-ReLU) and ``conv3.relu``. The input is expected
already normalized with the dataset's per-channel mean and std (see `fvis.zoo.MODELS`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CHANNELS: tuple[int, ...] = (16, 32, 64, 64)
NUM_CLASSES = 10


class ConvBlock(nn.Sequential):
    """Conv3x3 (no bias, BN follows) -> BatchNorm -> ReLU, padding kept so size is preserved."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=False)


class ShapesNet(nn.Module):
    """Four conv blocks with 2x2 max pooling between them, global average pooling, a linear head.

    About 62k parameters; receptive field of ``conv4`` is 38 px.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c1, c2, c3, c4 = CHANNELS
        self.conv1 = ConvBlock(3, c1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = ConvBlock(c1, c2)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = ConvBlock(c2, c3)
        self.pool3 = nn.MaxPool2d(2)
        self.conv4 = ConvBlock(c3, c4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.logits = nn.Linear(c4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``[B, num_classes]`` of a normalized image batch ``[B, 3, H, W]``."""
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.pool(self.conv4(x))
        return self.logits(torch.flatten(x, 1))
