"""Shared fixtures: tiny hand-built models with known weights, sample photos, the bundled lens."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyGapNet(nn.Module):
    """conv(3->C, 3x3) -> ReLU -> [target] -> global average pooling -> linear(C -> classes)."""

    def __init__(self, channels: int = 4, classes: int = 3, inplace: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(channels, generator=g))
            self.fc.weight.copy_(torch.randn(classes, channels, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class TinyDeepNet(nn.Module):
    """Two conv stages with in-place ReLUs and a nonlinear MLP head (no GAP -> linear)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def tiny() -> TinyGapNet:
    return TinyGapNet().eval()


@pytest.fixture
def deep() -> TinyDeepNet:
    return TinyDeepNet().eval()


@pytest.fixture(scope="session")
def lens():  # type: ignore[no-untyped-def]
    from camlens.lens import Lens

    return Lens(device="cpu")


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from camlens.samples import write_samples

    folder = tmp_path_factory.mktemp("samples")
    write_samples(folder)
    return folder


@pytest.fixture(scope="session")
def resnet() -> nn.Module:
    """A random-weight torchvision ResNet-18 with 20 classes, for parity with peers."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=20).eval()


@pytest.fixture(scope="session")
def batch() -> torch.Tensor:
    """Three random 96x96 inputs for :func:`resnet`."""
    return torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(7))
