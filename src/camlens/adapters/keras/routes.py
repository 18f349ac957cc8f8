"""One forward pass through a Keras model that captures layer outputs, and gradients of the
target scores with respect to them, by each backend's own route:

* TensorFlow: ``tf.GradientTape`` watching the captured outputs (no variables watched).
* PyTorch: a zero tensor that requires grad is added to each captured output, and
  ``torch.autograd.grad`` is taken with respect to those only (no parameter ``.grad`` filled).
* JAX: the same zero offsets are the arguments of ``jax.vjp``; one VJP call per target column.

Second-order products (:math:`H A`, for Shapley-CAM) come from nested tapes (TensorFlow),
``create_graph`` (PyTorch) and a JVP of the gradient (JAX). Targets are chosen from the logits
between the forward and the backward passes, so top-k targets cost no second forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from camlens.adapters.keras.graph import LayerPath, descend_set, name_of, run
from camlens.adapters.keras.head import Head, _kind, pre_activation, scores
from camlens.core.record import ClassifierHead
from camlens.errors import MethodError

Columns = Callable[[np.ndarray], list[dict[LayerPath, np.ndarray]]]
PairColumns = Callable[[np.ndarray], list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]]


class KerasPass:
    """A :class:`~camlens.core.record.ForwardPass` over one Keras forward: arrays handed to the
    core channels-first, keyed by layer name."""

    def __init__(
        self,
        logits: np.ndarray,
        activations: dict[LayerPath, np.ndarray],
        head_input: np.ndarray | None,
        grads: Columns | None = None,
        hvps: PairColumns | None = None,
    ) -> None:
        self.logits = logits
        self.paths = list(activations)
        self.activations = {name_of(p): channels_first(a) for p, a in activations.items()}
        self.head_input = head_input
        self.head: ClassifierHead | None = None
        self._grads, self._hvps = grads, hvps
        self._kept: tuple[bytes, dict[str, np.ndarray]] | None = None  # gradients of the last second-order pass

    def gradients(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        if self._kept is not None and self._kept[0] == targets.tobytes() + bytes(str(targets.shape), "ascii"):
            return self._kept[1]
        if self._grads is None:
            raise MethodError("gradients were not recorded for this pass")
        return self._stack(self._grads(targets))

    def hessian_products(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """:math:`H A` per layer; the gradients taken on the way are kept for :meth:`gradients`."""
        if self._hvps is None:
            raise MethodError("second-order gradients were not recorded for this pass")
        pairs = self._hvps(targets)
        self._kept = (targets.tobytes() + bytes(str(targets.shape), "ascii"), self._stack([g for g, _ in pairs]))
        return self._stack([h for _, h in pairs])

    def _stack(self, columns: list[dict[LayerPath, np.ndarray]]) -> dict[str, np.ndarray]:
        return {name_of(p): np.stack([channels_first(c[p]) for c in columns], axis=1) for p in self.paths}


def channels_first(a: np.ndarray) -> np.ndarray:
    """``(N, h, w, C)`` -> ``(N, C, h, w)``."""
    return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


def forward_pass(
    model: Any, batch: np.ndarray, paths: Sequence[LayerPath], head: Head, with_gradients: bool, second_order: bool = False
) -> KerasPass:
    """Run the model once, recording what gradients (and second-order products) need."""
    backend = keras.backend.backend()
    route = {"tensorflow": _tensorflow, "torch": _torch, "jax": _jax}.get(backend)
    if route is None:
        raise MethodError(f"Keras backend {backend!r} cannot give gradients; use tensorflow, jax or torch")
    return route(model, batch, list(paths), head, with_gradients, second_order)


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


def _tensorflow(model, batch, paths, head, with_gradients, second_order) -> KerasPass:  # type: ignore[no-untyped-def]
    import contextlib

    import tensorflow as tf

    captured: dict[LayerPath, Any] = {}
    tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
    outer = tf.GradientTape(persistent=True, watch_accessed_variables=False) if second_order else None

    def recording() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if outer is not None:
            stack.enter_context(outer)
        stack.enter_context(tape)
        return stack

    def record(path: LayerPath, out: Any) -> Any:
        tape.watch(out)
        if outer is not None:
            outer.watch(out)
        captured[path] = out
        return out

    with recording():
        logits, head_inputs = _forward(model, batch, paths, head, record)
    xs = [captured[p] for p in paths]

    def score(targets: np.ndarray, k: int) -> Any:
        return tf.reduce_sum(tf.gather(logits, targets[:, k], axis=1, batch_dims=1))

    def grads(targets: np.ndarray) -> list[dict[LayerPath, np.ndarray]]:
        out = []
        for k in range(targets.shape[1]):
            with tape:  # a persistent tape records the score too
                s = score(targets, k)
            out.append({p: _numpy(g) for p, g in zip(paths, tape.gradient(s, xs), strict=True)})
        return out

    def hvps(targets: np.ndarray) -> list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]:
        assert outer is not None
        out = []
        for k in range(targets.shape[1]):
            with recording():
                g = tape.gradient(score(targets, k), xs)
            column = {}
            for p, gj, x in zip(paths, g, xs, strict=True):
                hx = outer.gradient(gj, x, output_gradients=x)
                column[p] = _numpy(hx) if hx is not None else np.zeros(x.shape, np.float32)
            out.append(({p: _numpy(gj) for p, gj in zip(paths, g, strict=True)}, column))
        return out

    return KerasPass(_numpy(logits), {p: _numpy(a) for p, a in captured.items()}, _last(head_inputs),
                     grads if with_gradients else None, hvps if second_order else None)


def _torch(model, batch, paths, head, with_gradients, second_order) -> KerasPass:  # type: ignore[no-untyped-def]
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
    xs: list[Any] = [offsets.get(p) for p in paths]

    def score(targets: np.ndarray, k: int) -> Any:
        index = torch.as_tensor(targets[:, k : k + 1], device=logits.device)
        return logits.gather(1, index).sum()

    def grads(targets: np.ndarray) -> list[dict[LayerPath, np.ndarray]]:
        with torch.inference_mode(False), torch.enable_grad():
            return [
                {p: _numpy(g) for p, g in zip(paths, torch.autograd.grad(score(targets, k), xs, retain_graph=True), strict=True)}
                for k in range(targets.shape[1])
            ]

    def hvps(targets: np.ndarray) -> list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]:
        out = []
        with torch.inference_mode(False), torch.enable_grad():
            for k in range(targets.shape[1]):
                g = torch.autograd.grad(score(targets, k), xs, retain_graph=True, create_graph=True)
                column = {}
                for p, gj, x in zip(paths, g, xs, strict=True):
                    hx = None
                    if gj.requires_grad:  # else the score is piecewise linear in x: H x = 0
                        (hx,) = torch.autograd.grad(gj, x, captured[p].detach(), retain_graph=True, allow_unused=True)
                    column[p] = _numpy(hx.detach()) if hx is not None else np.zeros(tuple(x.shape), np.float32)
                out.append(({p: _numpy(gj.detach()) for p, gj in zip(paths, g, strict=True)}, column))
        return out

    acts = {p: _numpy(a.detach()) for p, a in captured.items()}
    return KerasPass(_numpy(logits.detach()), acts, _last(head_inputs), grads if with_gradients else None,
                     hvps if second_order else None)


def _jax(model, batch, paths, head, with_gradients, second_order) -> KerasPass:  # type: ignore[no-untyped-def]
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
        return KerasPass(_numpy(logits), {p: _numpy(a) for p, a in captured.items()}, _last(head_inputs))
    shapes = jax.eval_shape(lambda: forward(None)[1][0])
    zeros = {p: jax.numpy.zeros(s.shape, s.dtype) for p, s in shapes.items()}
    logits, vjp, (captured, head_inputs) = jax.vjp(forward, zeros, has_aux=True)

    def one_hot(targets: np.ndarray, k: int) -> Any:
        return jax.nn.one_hot(targets[:, k], logits.shape[1], dtype=logits.dtype)

    def grads(targets: np.ndarray) -> list[dict[LayerPath, np.ndarray]]:
        return [{p: _numpy(vjp(one_hot(targets, k))[0][p]) for p in paths} for k in range(targets.shape[1])]

    def hvps(targets: np.ndarray) -> list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]:
        out = []
        for k in range(targets.shape[1]):
            weights = one_hot(targets, k)

            def gradient(offsets: dict[LayerPath, Any], weights: Any = weights) -> dict[LayerPath, Any]:
                return jax.grad(lambda o: (forward(o)[0] * weights).sum())(offsets)

            column, first = {}, {}
            for p in paths:  # H_jj A_j: the tangent is A_j at layer j only
                tangent = {q: captured[q] if q == p else jax.numpy.zeros_like(zeros[q]) for q in paths}
                g, hx = jax.jvp(gradient, (zeros,), (tangent,))
                column[p], first[p] = _numpy(hx[p]), _numpy(g[p])
            out.append((first, column))
        return out

    return KerasPass(_numpy(logits), {p: _numpy(a) for p, a in captured.items()}, _last(head_inputs), grads,
                     hvps if second_order else None)


def _last(values: list[Any]) -> np.ndarray | None:
    return _numpy(values[-1]) if values else None
