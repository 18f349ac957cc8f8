"""A small CAM-ready CNN for training from scratch on tiny datasets."""

from __future__ import annotations

import torch
from torch import nn

SMALL_CNN = "small_cnn"


class SmallCNN(nn.Module):
    """Six conv-BN-ReLU stages, global average pooling, one linear classifier: the
    architecture CAM (Zhou et al., 2016) explains exactly.

    Stages 2 and 3 halve the resolution; stages 5 and 6 are dilated instead, so the last one,
    ``features.5``, keeps 1/4 of the input resolution (16x16 maps for a 64x64 input, fine
    enough to box objects) while each of its positions sees 49x49 input pixels.
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width]
        stages = []
        for i in range(6):
            stride = 2 if i in (1, 2) else 1
            dilation = 2 if i >= 4 else 1
            stages.append(
                nn.Sequential(
                    nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(chans[i + 1]),
                    nn.ReLU(inplace=True),
                )
            )
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
