"""How a layer's output holds its feature map: channels first, channels last, or tokens.

A :class:`Layout` is decided once per layer by the adapter, from the model's own metadata
(timm's ``num_prefix_tokens`` and ``output_fmt``, torchvision's ViT and Swin classes, a
HuggingFace config's ``patch_size``), never from the number of dimensions alone; the user may
state one (:meth:`Layout.parse`). Activations and gradients go through :meth:`Layout.to_nchw`
before the core sees them, so every method works on ``(N, C, h, w)`` maps whatever the model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from camlens.errors import LayerError

NCHW, NHWC, TOKENS = "NCHW", "NHWC", "tokens"
MAX_PREFIX = 16
"""At most this many leading non-patch tokens (class, distillation, register tokens)."""


@dataclass(frozen=True)
class Layout:
    """The layout of one layer's output.

    Attributes:
        kind: :data:`NCHW` ``(N, C, h, w)``, :data:`NHWC` ``(N, h, w, C)`` or :data:`TOKENS`
            ``(N, L, C)``: ``prefix`` non-patch tokens, then the patch tokens row by row.
        prefix: the number of leading non-patch tokens (tokens only).
        grid: ``(h, w)`` of the patch tokens; when None, found from the token count and the
            input's aspect ratio (for each batch, so that any input size works).
    """

    kind: str = NCHW
    prefix: int = 0
    grid: tuple[int, int] | None = None

    @classmethod
    def parse(cls, spec: str | Layout) -> Layout:
        """``"nchw"``, ``"nhwc"``, ``"tokens"``, ``"tokens:1"`` (one prefix token) or
        ``"tokens:1:14x14"`` (and a grid), any case.

        Raises:
            LayerError: anything else.
        """
        if isinstance(spec, Layout):
            return spec
        text = str(spec).strip().lower()
        if text in ("nchw", "nhwc"):
            return cls(text.upper())
        m = re.fullmatch(r"tokens(?::(\d+))?(?::(\d+)x(\d+))?", text)
        if m is None:
            raise LayerError(f"unknown layout {spec!r}; use nchw, nhwc, tokens, tokens:PREFIX or tokens:PREFIX:HxW")
        grid = (int(m.group(2)), int(m.group(3))) if m.group(2) else None
        return cls(TOKENS, int(m.group(1) or 0), grid)

    def grid_of(self, shape: tuple[int, ...], input_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of an output of ``shape`` (batch first) for an input of ``input_size``.

        Raises:
            LayerError: the shape does not hold a grid in this layout.
        """
        if self.kind == NCHW and len(shape) == 4:
            return int(shape[2]), int(shape[3])
        if self.kind == NHWC and len(shape) == 4:
            return int(shape[1]), int(shape[2])
        if self.kind == TOKENS and len(shape) == 3:
            patches = int(shape[1]) - self.prefix
            grid = self.grid or token_grid(patches, input_size)
            if grid is not None and grid[0] * grid[1] == patches:
                return grid
            raise LayerError(
                f"{shape[1]} tokens ({self.prefix} prefix) do not form a grid for a {input_size[0]}x{input_size[1]} input; "
                "state the layout, e.g. layout='tokens:1' (one class token) or 'tokens:1:14x14'"
            )
        raise LayerError(f"an output of shape {tuple(shape)} is not {self.describe()}")

    def to_nchw(self, a: np.ndarray, input_size: tuple[int, int], lead: int = 1) -> np.ndarray:
        """``a`` as ``(*lead dims, C, h, w)``: the first ``lead`` axes (batch, targets) kept."""
        head, body = a.shape[:lead], a.shape[lead:]
        flat = a.reshape(-1, *body)
        h, w = self.grid_of((flat.shape[0], *body), input_size)
        if self.kind == NCHW:
            out = flat
        elif self.kind == NHWC:
            out = flat.transpose(0, 3, 1, 2)
        else:
            out = flat[:, self.prefix :].reshape(flat.shape[0], h, w, body[-1]).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out).reshape(*head, *out.shape[1:])

    def from_nchw(self, maps: np.ndarray, like: np.ndarray) -> np.ndarray:
        """``(M, C, h, w)`` maps back in this layout; prefix tokens are taken from ``like``
        (one original output, batch first, broadcast over ``M``)."""
        if self.kind == NCHW:
            return maps
        channels_last = maps.transpose(0, 2, 3, 1)
        if self.kind == NHWC:
            return np.ascontiguousarray(channels_last)
        tokens = channels_last.reshape(maps.shape[0], -1, maps.shape[1])
        prefix = np.broadcast_to(like[:, : self.prefix], (maps.shape[0], self.prefix, maps.shape[1]))
        return np.ascontiguousarray(np.concatenate([prefix, tokens], axis=1))

    def describe(self, grid: tuple[int, int] | None = None) -> str:
        """``NCHW``, ``NHWC`` or ``tokens 14x14 +1`` (the grid, and the prefix tokens before it)."""
        if self.kind != TOKENS:
            return self.kind
        g = grid or self.grid
        return "tokens" + (f" {g[0]}x{g[1]}" if g else "") + (f" +{self.prefix}" if self.prefix else "")


def token_grid(patches: int, input_size: tuple[int, int]) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w == patches`` and ``h / w`` the input's aspect ratio (one patch
    size for both axes), or None."""
    if patches < 1:
        return None
    height, width = input_size
    stride = math.sqrt(height * width / patches)
    h, w = round(height / stride), round(width / stride)
    return (h, w) if h * w == patches and h > 0 and w > 0 else None


__all__ = ["MAX_PREFIX", "NCHW", "NHWC", "TOKENS", "Layout", "token_grid"]
