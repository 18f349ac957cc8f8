"""Turning images into the model's input tensor: resize the whole image, scale, normalise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """The model's own input config.

    The whole image is resized to ``input_size = (height, width)``, with no centre crop, so a
    map covers every pixel of the picture the user sees. ``channels`` is 3 (RGB) or 1
    (grayscale models; ``mean`` and ``std`` then hold one value each).
    """

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    input_size: tuple[int, int] = (224, 224)
    interpolation: str = "bicubic"
    channels: int = 3

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return a ``(N, channels, H, W)`` float tensor for PIL images."""
        h, w = self.input_size
        resample = _RESAMPLE.get(self.interpolation, Image.Resampling.BICUBIC)
        mode = "L" if self.channels == 1 else "RGB"
        arrays = [np.asarray(img.convert(mode).resize((w, h), resample), dtype=np.float32) for img in images]
        x = torch.from_numpy(np.stack(arrays)).reshape(len(arrays), h, w, self.channels).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly form (for checkpoints and run summaries)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=tuple(data.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(data.get("std", cls.std)),  # type: ignore[arg-type]
            input_size=tuple(data.get("input_size", cls.input_size)),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", cls.interpolation)),
            channels=int(data.get("channels", cls.channels)),  # type: ignore[call-overload]
        )
