"""A PyTorch model's output as the targets read it, and the torch operations they use.

Models return many things; none needs a wrapper module: a tensor, a tuple or list (its first
tensor), a dict or HuggingFace ``ModelOutput`` (``logits``, torchvision segmentation's ``out``,
``image_embeds``/``pooler_output`` of an embedding model, or the key ``output=`` names), or a
torchvision detector's list of per-image dicts (``boxes``, ``scores``, ``labels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from camlens.core.targets import DETECTIONS, MAPS, SCORES, Output
from camlens.errors import ModelError

KEYS = ("logits", "out", "image_embeds", "pooler_output")
"""Keys of a dict or ``ModelOutput`` tried in order when ``output=`` names none."""


class TorchOps:
    """:class:`~camlens.core.targets.Ops` with torch tensors on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x.detach().float().cpu().numpy(), dtype=np.float32)

    def constant(self, a: np.ndarray) -> Any:
        return torch.as_tensor(np.array(a, dtype=np.float32, order="C"), device=self.device)  # 0-d stays 0-d

    def take(self, x: Any, index: np.ndarray) -> Any:
        i = torch.as_tensor(np.ascontiguousarray(index), dtype=torch.int64, device=x.device)
        i = i.reshape(*i.shape, *([1] * (x.ndim - 2))).expand(*i.shape, *x.shape[2:])
        return x.gather(1, i)

    def softmax(self, x: Any) -> Any:
        return torch.softmax(x, dim=1)

    def sigmoid(self, x: Any) -> Any:
        return torch.sigmoid(x)

    def sum(self, x: Any, axes: tuple[int, ...]) -> Any:
        return x.sum(dim=axes)

    def sqrt(self, x: Any) -> Any:
        return torch.sqrt(x)

    def clip(self, x: Any, low: float | None = None, high: float | None = None) -> Any:
        return torch.clamp(x, min=low, max=high)

    def stack(self, xs: Sequence[Any]) -> Any:
        return torch.stack(list(xs))

    def concat(self, xs: Sequence[Any]) -> Any:
        return torch.cat(list(xs), dim=1)


def select(raw: object, output: int | str | None = None) -> object:
    """The part of a model's raw output that holds its scores (see the module docstring).

    Raises:
        ModelError: ``output`` names nothing in it, or nothing in it is a score tensor.
    """
    if output is not None:
        try:
            if isinstance(output, int) and isinstance(raw, (tuple, list)):
                return raw[output]
            if isinstance(output, str) and isinstance(raw, Mapping):
                return raw[output]
            if isinstance(output, str) and hasattr(raw, output):
                return getattr(raw, output)
        except (IndexError, KeyError):
            pass
        raise ModelError(f"model output has no {output!r}; it returned {_describe(raw)}")
    if isinstance(raw, torch.Tensor) or _is_detections(raw):
        return raw
    if isinstance(raw, Mapping):
        for key in KEYS:
            if isinstance(raw.get(key), torch.Tensor):
                return raw[key]
        raise ModelError(f"model returned {_describe(raw)}; name the entry to explain with output=")
    if isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], torch.Tensor):
        return raw[0]
    if isinstance(getattr(raw, "logits", None), torch.Tensor):
        return raw.logits  # type: ignore[attr-defined]
    raise ModelError(f"model returned {_describe(raw)}; expected scores (N, classes), maps or detections")


def canonical(raw: object, output: int | str | None, input_size: tuple[int, int], device: torch.device) -> Output:
    """The :class:`~camlens.core.targets.Output` of a raw model output.

    A ``(N, U)`` tensor is a score vector (``(N,)`` is taken as ``(N, 1)``); a one-unit head
    becomes the two scores ``[-z/2, z/2]`` (negative, positive); ``(N, classes, h, w)`` is a
    segmentation output; a list of dicts with ``boxes``/``scores``/``labels`` is a detector's.
    """
    value = select(raw, output)
    ops = TorchOps(device)
    if _is_detections(value):
        return Output(DETECTIONS, list(value), raw, ops, input_size)  # type: ignore[call-overload]
    if not isinstance(value, torch.Tensor):
        raise ModelError(f"model output {output!r} is {type(value).__name__}, not a tensor")
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim == 2:
        if value.shape[1] == 1:
            return Output(SCORES, torch.cat([-value / 2, value / 2], dim=1), raw, ops, input_size, binary=True)
        return Output(SCORES, value, raw, ops, input_size)
    if value.ndim == 4:
        return Output(MAPS, value, raw, ops, input_size)
    raise ModelError(f"model returned a tensor of shape {tuple(value.shape)}; expected (N, classes), "
                     "(N, classes, H, W) or detections (choose an entry with output=)")


def _is_detections(value: object) -> bool:
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(d, Mapping) and {"boxes", "scores", "labels"} <= set(d) for d in value))


def _describe(raw: object) -> str:
    if isinstance(raw, torch.Tensor):
        return f"a tensor of shape {tuple(raw.shape)}"
    if isinstance(raw, Mapping):
        return f"{type(raw).__name__} with keys {', '.join(map(str, list(raw)[:8]))}"
    if isinstance(raw, (tuple, list)):
        return f"a {type(raw).__name__} of {len(raw)}"
    return type(raw).__name__
