"""Running methods over one forward pass: the tail every adapter shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from camlens.core import fusion
from camlens.core.fusion import fused_name
from camlens.core.methods import Method
from camlens.core.record import ATTENTION_NEEDS, AttentionMaps, ForwardPass, LayerRecord, Need, Progress
from camlens.core.result import CamResult
from camlens.core.targets import SCORES, Column, classes_of
from camlens.errors import MethodError

CHUNK_BYTES = 256 * 2**20
"""Gradients of at most about this many bytes are held at once: targets go in chunks."""


def needs_of(methods: Sequence[Method]) -> frozenset[Need]:
    """Everything the methods need together."""
    return frozenset().union(*(m.needs for m in methods))


def run(fwd: ForwardPass, methods: Sequence[Method], columns: Sequence[Column], fuse: str | None = None,
        progress: Progress | None = None) -> CamResult:
    """Maps of every method at every captured layer for every explained score.

    Score columns are walked in chunks so that gradients for many targets (``all`` classes)
    never exceed about :data:`CHUNK_BYTES`; the adapter computes gradients (and second-order
    products) only when a method needs them.

    Args:
        fwd: the adapter's forward pass of the batch, scoring ``columns``.
        methods: the methods to run (already resolved).
        columns: the batch's target columns (see :func:`camlens.core.targets.resolve`).
        fuse: also combine each method's layers into one map (see :func:`camlens.core.fusion.fuse`),
            stored under the layer key :func:`~camlens.core.fusion.fused_name`.
        progress: told how far methods that run the model again are (see :data:`~camlens.core.record.Progress`).

    Returns:
        A :class:`CamResult` with ``maps[method][layer]`` of shape ``(N, K, h, w)``.

    Raises:
        MethodError: CAM asked for a score that is not a class logit of its linear head.
    """
    needs = needs_of(methods)
    targets = classes_of(columns)
    head = fwd.head if Need.CLASS_WEIGHTS in needs else None
    if Need.CLASS_WEIGHTS in needs:
        if head is None:
            raise MethodError("CAM needs the classifier's weights, which the adapter did not find")
        for c in columns:
            if not c.linear:
                raise MethodError(
                    f"CAM explains a class logit of a linear head after global pooling; a {c.kind} target is not "
                    "one (use a gradient method such as gradcam)"
                )
    acts = dict(fwd.activations)
    probe = fwd.probe if Need.FORWARDS in needs else None
    if Need.FORWARDS in needs and probe is None:
        raise MethodError("a method needs extra forward passes, which this adapter did not provide")
    attention = fwd.attention if needs & ATTENTION_NEEDS else None
    if needs & ATTENTION_NEEDS and attention is None:
        raise MethodError("a method needs the attention maps of a transformer, which this adapter did not capture")
    count = len(columns)
    chunk = _chunk(acts, (targets.shape[0], count), needs, attention)
    parts: dict[str, dict[str, list[np.ndarray]]] = {m.name: {name: [] for name in acts} for m in methods}
    for start in range(0, count, chunk):
        index = np.arange(start, min(start + chunk, count))
        cols = np.ascontiguousarray(targets[:, index])
        grads: Mapping[str, np.ndarray] = {}
        hessian: Mapping[str, np.ndarray] = {}
        if Need.HESSIAN in needs:
            grads, hessian = fwd.hessian_products(index)
        elif Need.GRADIENTS in needs:
            grads = fwd.gradients(index)
        final = fwd.attention_gradients(index) if Need.ATTENTION_GRADIENTS in needs else None
        layerwise = fwd.attention_gradients(index, layerwise=True) if Need.LAYERWISE_GRADIENTS in needs else None
        for name, a in acts.items():
            weights = features = None
            if head is not None and head.layer == name:
                shared = bool((cols == cols[:1]).all())  # same classes for every sample ("all", a class list)
                weights = head.weights[cols[0]][None] if shared else head.weights[cols]
                features = head.features
            record = LayerRecord(name, a, cols, grads.get(name), hessian.get(name), weights, features,
                                 fwd.scores[:, index], probe, index, attention, final, layerwise, progress)
            for m in methods:
                if Need.CLASS_WEIGHTS in m.needs and weights is None:
                    raise MethodError(f"{m.title} needs the classifier's weights at layer {name!r}")
                parts[m.name][name].append(np.asarray(m.maps(record), dtype=np.float32))
    maps = {m: {name: np.concatenate(chunks, axis=1) for name, chunks in by_layer.items()} for m, by_layer in parts.items()}
    if fuse is not None:
        for by_layer in maps.values():
            by_layer[fused_name(fuse, list(by_layer))] = fusion.fuse(by_layer, fuse)
    out = fwd.output
    return CamResult(
        logits=out.array if out.kind == SCORES else None,
        probabilities=out.probabilities,
        targets=targets,
        columns=tuple(columns),
        scores=fwd.scores,
        maps=maps,
        activations=acts,
    )


def _chunk(acts: dict[str, np.ndarray], shape: tuple[int, ...], needs: frozenset[Need],
           attention: AttentionMaps | None = None) -> int:
    """Target columns per chunk: all of them unless their gradients would exceed the budget."""
    if not needs & {Need.GRADIENTS, Need.HESSIAN, Need.ATTENTION_GRADIENTS, Need.LAYERWISE_GRADIENTS}:
        return max(1, shape[1])
    per_column = 0
    if needs & {Need.GRADIENTS, Need.HESSIAN}:
        per_column += sum(a.nbytes for a in acts.values()) * (2 if Need.HESSIAN in needs else 1) * 4
    if attention is not None:  # per column: one block's (N, heads, L, L) at a time, and every block's (N, L, width)
        n, length = shape[0], attention.tokens
        if needs & {Need.ATTENTION_GRADIENTS, Need.LAYERWISE_GRADIENTS}:
            per_column += n * attention.heads * length**2 * 4 * 2
        if Need.ATTENTION_GRADIENTS in needs:  # the output gradients of every block, from one backward
            per_column += attention.blocks * n * length * attention.width * 4
    return int(max(1, min(shape[1], CHUNK_BYTES // max(per_column, 1))))
