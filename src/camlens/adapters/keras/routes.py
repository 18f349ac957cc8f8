"""One forward pass through a Keras model that captures layer outputs, and gradients of the
target scores with respect to them, by each backend's own route:

* TensorFlow: ``tf.GradientTape`` watching the captured outputs (no variables watched).
* PyTorch: a zero tensor that requires grad is added to each captured output, and
  ``torch.autograd.grad`` is taken with respect to those only (no parameter ``.grad`` filled).
* JAX: the same zero offsets are the arguments of ``jax.vjp``; one VJP call per target column.

Targets are chosen from the logits between the forward and the backward passes, so top-k
targets cost no second forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from camlens.adapters.keras.graph import LayerPath, descend_set, run
from camlens.adapters.keras.head import Head, _kind, pre_activation, scores
from camlens.errors import MethodError

ChooseTargets = Callable[[np.ndarray], np.ndarray]


@dataclass
class Captured:
    """NumPy results of one pass; arrays are channels-last as Keras produced them."""

    logits: np.ndarray
    activations: dict[LayerPath, np.ndarray]
    targets: np.ndarray
    gradients: list[dict[LayerPath, np.ndarray]] | None
    head_input: np.ndarray | None


def capture(
    model: Any,
    batch: np.ndarray,
    paths: Sequence[LayerPath],
    head: Head,
    choose: ChooseTargets,
    with_gradients: bool,
) -> Captured:
    """Run the model once and return logits, activations, targets and (optionally) gradients."""
    backend = keras.backend.backend()
    route = {"tensorflow": _tensorflow, "torch": _torch, "jax": _jax}.get(backend)
    if route is None:
        raise MethodError(f"Keras backend {backend!r} cannot give gradients; use tensorflow, jax or torch")
    return route(model, batch, list(paths), head, choose, with_gradients)


def _forward(
    model: Any, batch: Any, paths: list[LayerPath], head: Head, record: Callable[[LayerPath, Any], Any]
) -> tuple[Any, list[Any]]:
    """Scores of the head's output, with ``record`` applied to every captured layer output."""
    head_inputs: list[Any] = []
    targets = set(paths)

    def head_call(x: Any, *args: Any, **kwargs: Any) -> Any:
        head_inputs.append(x)
        dense = head.dense
        return pre_activation(dense, x) if _kind(dense.activation) != "logits" else dense(x, *args, **kwargs)

    def hook(path: LayerPath, op: Any) -> Callable[..., Any] | None:
        if path in targets:
            return lambda *args, **kwargs: record(path, op(*args, **kwargs))
        if path == head.skip_path:
            return lambda x, *args, **kwargs: x
        if path == head.dense_path:
            return head_call
        return None

    out = run(model, keras.ops.convert_to_tensor(batch), hook, descend_set(paths))
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        out = out[head.output_index]
    return scores(head, out), head_inputs


def _numpy(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def _tensorflow(model, batch, paths, head, choose, with_gradients) -> Captured:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    captured: dict[LayerPath, Any] = {}
    tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
    with tape:

        def record(path: LayerPath, out: Any) -> Any:
            tape.watch(out)
            captured[path] = out
            return out

        logits, head_inputs = _forward(model, batch, paths, head, record)
        logits_np = _numpy(logits)
        targets = choose(logits_np)
        # the scores must be computed while the tape records
        column_scores = [tf.reduce_sum(tf.gather(logits, targets[:, k], axis=1, batch_dims=1)) for k in range(targets.shape[1])]
    grads = None
    if with_gradients:
        grads = []
        for score in column_scores:
            values = tape.gradient(score, [captured[p] for p in paths])
            grads.append({p: _numpy(g) for p, g in zip(paths, values, strict=True)})
    return Captured(logits_np, {p: _numpy(a) for p, a in captured.items()}, targets, grads, _last(head_inputs))


def _torch(model, batch, paths, head, choose, with_gradients) -> Captured:  # type: ignore[no-untyped-def]
    import torch

    captured: dict[LayerPath, Any] = {}
    offsets: dict[LayerPath, Any] = {}

    def record(path: LayerPath, out: Any) -> Any:
        captured[path] = out
        if not with_gradients:
            return out
        offsets[path] = torch.zeros_like(out, requires_grad=True)
        return out + offsets[path]

    with torch.inference_mode(False), torch.set_grad_enabled(with_gradients):
        logits, head_inputs = _forward(model, batch, paths, head, record)
        logits_np = _numpy(logits.detach())
        targets = choose(logits_np)
        grads = None
        if with_gradients:
            grads = []
            index = torch.as_tensor(targets, device=logits.device)
            for k in range(targets.shape[1]):
                score = logits.gather(1, index[:, k : k + 1]).sum()
                values = torch.autograd.grad(score, [offsets[p] for p in paths], retain_graph=k < targets.shape[1] - 1)
                grads.append({p: _numpy(g) for p, g in zip(paths, values, strict=True)})
    acts = {p: _numpy(a.detach()) for p, a in captured.items()}
    head_in = _last(head_inputs)
    return Captured(logits_np, acts, targets, grads, head_in)


def _jax(model, batch, paths, head, choose, with_gradients) -> Captured:  # type: ignore[no-untyped-def]
    import jax

    def forward(offsets: dict[LayerPath, Any] | None) -> tuple[Any, tuple[dict[LayerPath, Any], list[Any]]]:
        captured: dict[LayerPath, Any] = {}

        def record(path: LayerPath, out: Any) -> Any:
            captured[path] = out
            return out if offsets is None else out + offsets[path]

        logits, head_inputs = _forward(model, batch, paths, head, record)
        return logits, (captured, head_inputs)

    if not with_gradients:
        logits, (captured, head_inputs) = forward(None)
        logits_np = _numpy(logits)
        return Captured(logits_np, {p: _numpy(a) for p, a in captured.items()}, choose(logits_np), None, _last(head_inputs))
    shapes = jax.eval_shape(lambda: forward(None)[1][0])
    zeros = {p: jax.numpy.zeros(s.shape, s.dtype) for p, s in shapes.items()}
    logits, vjp, (captured, head_inputs) = jax.vjp(forward, zeros, has_aux=True)
    logits_np = _numpy(logits)
    targets = choose(logits_np)
    grads = []
    for k in range(targets.shape[1]):
        (values,) = vjp(jax.nn.one_hot(targets[:, k], logits.shape[1], dtype=logits.dtype))
        grads.append({p: _numpy(values[p]) for p in paths})
    return Captured(logits_np, {p: _numpy(a) for p, a in captured.items()}, targets, grads, _last(head_inputs))


def _last(values: list[Any]) -> np.ndarray | None:
    return _numpy(values[-1]) if values else None
