"""Which classes to explain: target specs turned into ``(N, K)`` class indices."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from camlens.errors import TargetError

Targets = int | str | Sequence[int] | Sequence[Sequence[int]] | np.ndarray | Callable[[np.ndarray], object] | None

ALL = "all"
"""The target spec for every class of the model, in class order."""


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties by lower index)."""
    return np.argsort(-logits, axis=1, kind="stable")[:, : min(k, logits.shape[1])]


def resolve_targets(targets: Targets, logits: np.ndarray, top: int | None = None) -> np.ndarray:
    """Turn a target spec into ``(N, K)`` int64 class indices.

    ``None`` -> top-1 (or the ``top`` best); ``"all"`` -> every class, in class order; an int
    -> that class for every sample; a sequence of N ints -> one class per sample; an ``(N, K)``
    array -> K classes per sample; a callable -> called with the ``(N, classes)`` logits
    (NumPy), returning any of the above. Framework tensors are accepted wherever arrays are.
    """
    n, classes = logits.shape
    if callable(targets):
        targets = targets(logits)  # type: ignore[assignment]
    if targets is None:
        return top_k(logits, top or 1)
    if isinstance(targets, str):
        if targets.strip().lower() != ALL:
            raise TargetError(f"unknown target {targets!r}; a class index, {ALL!r}, or class indices per sample")
        return np.tile(np.arange(classes, dtype=np.int64), (n, 1))
    if hasattr(targets, "detach"):  # a torch tensor
        targets = targets.detach().cpu().numpy()  # type: ignore[union-attr]
    t = np.asarray(targets, dtype=np.int64)
    if t.ndim == 0:
        t = np.full((n, 1), int(t))
    elif t.ndim == 1:
        if t.shape[0] != n:
            raise TargetError(f"{t.shape[0]} targets for a batch of {n}; give one per sample")
        t = t[:, None]
    elif t.ndim != 2 or t.shape[0] != n:
        raise TargetError(f"targets of shape {tuple(t.shape)} do not fit a batch of {n}")
    bad = t[(t < 0) | (t >= classes)]
    if bad.size:
        raise TargetError(f"class index {int(bad[0])} is out of range: the model has {classes} classes")
    return np.ascontiguousarray(t)
