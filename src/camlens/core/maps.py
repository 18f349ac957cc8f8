"""Map arithmetic shared by every method: normalisation and resizing."""

from __future__ import annotations

import numpy as np
from PIL import Image


def normalize(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map of ``(..., h, w)`` to [0, 1]; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    out = maps - lo  # one new array, then in place: a map as large as a big photo is copied once
    out /= np.where(span > 0, span, 1.0)
    out *= span > 0
    return out


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize each map of ``(..., h, w)`` to ``size = (height, width)``.

    Pixel centres are aligned (half-pixel convention, like ``align_corners=False``), edges are
    clamped. The operation is linear in the map, so weighting channels and resizing commute.
    """
    maps = np.asarray(maps, dtype=np.float32)
    height, width = size
    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.empty((flat.shape[0], height, width), dtype=np.float32)
    for i, m in enumerate(flat):
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(m)).resize((width, height), Image.Resampling.BILINEAR))
    return out.reshape(*maps.shape[:-2], height, width)
