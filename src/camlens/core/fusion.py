"""Fusing one method's maps at several layers into one map."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from camlens.core.maps import normalize, upsample
from camlens.errors import CamlensError

FUSIONS = ("mean", "max", "product")
"""How layers combine: ``mean`` (pytorch-grad-cam's multi-layer rule), ``max`` (torchcam's
``fuse_cams``) and ``product`` (RefineCAM, Domeniconi et al., arXiv:2605.14641, 2026)."""


def fused_name(how: str, layers: list[str]) -> str:
    """The layer key a fused map is stored under: ``mean(layer3+layer4)``."""
    return f"{how}({'+'.join(layers)})"


def check_fusion(how: str | None, layers: int) -> None:
    """Refuse an unknown fusion, or a fusion of fewer than two layers, before any work.

    Raises:
        CamlensError: with the reason.
    """
    if how is None:
        return
    if how not in FUSIONS:
        raise CamlensError(f"unknown layer fusion {how!r}; use {', '.join(FUSIONS)}")
    if layers < 2:
        raise CamlensError(f"fusing layers needs at least two layers, got {layers}")


def fuse(by_layer: Mapping[str, np.ndarray], how: str) -> np.ndarray:
    """Combine ``(N, K, h_l, w_l)`` maps of several layers into one ``(N, K, H, W)`` map.

    Each layer's map is upsampled (bilinear, half-pixel) to the largest layer's grid and
    min-max scaled to [0, 1] per map; then the maps are averaged, maxed or multiplied
    element-wise, and the result is min-max scaled again (a constant map becomes zeros).

    Raises:
        CamlensError: fewer than two layers, or an unknown ``how``.
    """
    check_fusion(how, len(by_layer))
    grid = max((m.shape[-2:] for m in by_layer.values()), key=lambda s: s[0] * s[1])
    stack = np.stack([normalize(upsample(m, (int(grid[0]), int(grid[1])))) for m in by_layer.values()])
    combined = {"mean": stack.mean(axis=0), "max": stack.max(axis=0), "product": stack.prod(axis=0)}[how]
    return normalize(combined)
