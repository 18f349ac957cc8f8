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
from camlens.core.record import ClassifierHead, not_feature_maps, per_sample_masks
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
        for p, a in activations.items():
            if a.ndim != 4:
                raise not_feature_maps(name_of(p), a.shape)
        self.activations = {name_of(p): channels_first(a) for p, a in activations.items()}
        self.head_input = head_input
        self.head: ClassifierHead | None = None
        self.probe: KerasProbe | None = None
        self._grads, self._hvps = grads, hvps

    def gradients(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        if self._grads is None:
            raise MethodError("gradients were not recorded for this pass")
        return self._stack(self._grads(targets))

    def hessian_products(self, targets: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per layer, the gradients taken on the way and :math:`H A`."""
        if self._hvps is None:
            raise MethodError("second-order gradients were not recorded for this pass")
        pairs = self._hvps(targets)
        return self._stack([g for g, _ in pairs]), self._stack([h for _, h in pairs])

    def _stack(self, columns: list[dict[LayerPath, np.ndarray]]) -> dict[str, np.ndarray]:
        return {name_of(p): np.stack([channels_first(c[p]) for c in columns], axis=1) for p in self.paths}


class KerasProbe:
    """The :class:`~camlens.core.record.Probe` of one Keras batch: the model run again through
    its graph (pre-activation scores, as for gradients), at most ``max_batch`` inputs at a time.

    ``score_replaced`` swaps the layer's output during the run (the layers before it still run,
    so residual connections that bypass it are exact); activations arrive channels first and
    are handed to the model channels last.
    """

    def __init__(self, model: Any, batch: np.ndarray, paths: Sequence[LayerPath], head: Head, max_batch: int = 32) -> None:
        self._model, self._batch, self._head = model, np.asarray(batch, dtype=np.float32), head
        self._paths = {name_of(p): p for p in paths}
        self.max_batch = max_batch

    def score_masked(self, masks: np.ndarray, baseline: float | np.ndarray = 0.0) -> np.ndarray:
        n = self._batch.shape[0]
        m = per_sample_masks(masks, n, self._batch.shape[1:3])
        flat = m.reshape(-1, *m.shape[2:])[..., None]
        base = np.asarray(baseline, dtype=np.float32)
        count = m.shape[1]

        def inputs(rows: slice) -> np.ndarray:
            x = self._batch[np.arange(rows.start, rows.stop) // count]
            return x * flat[rows] + base * (1.0 - flat[rows])

        return self._scores(n, count, inputs, None)

    def score_replaced(self, layer: str, activations: np.ndarray) -> np.ndarray:
        if layer not in self._paths:
            raise MethodError(f"layer {layer!r} was not captured; replace one of {', '.join(self._paths)}")
        n, count = activations.shape[:2]
        flat = np.transpose(activations.reshape(n * count, *activations.shape[2:]), (0, 2, 3, 1))
        current: list[Any] = []

        def inputs(rows: slice) -> np.ndarray:
            current[:] = [keras.ops.convert_to_tensor(np.ascontiguousarray(flat[rows]))]
            return self._batch[np.arange(rows.start, rows.stop) // count]

        return self._scores(n, count, inputs, (self._paths[layer], current))

    def _scores(
        self, n: int, count: int, inputs: Callable[[slice], np.ndarray], replace: tuple[LayerPath, list[Any]] | None
    ) -> np.ndarray:
        paths = [replace[0]] if replace else []
        out = []
        with _no_grad():
            for start in range(0, n * count, self.max_batch):
                x = inputs(slice(start, min(start + self.max_batch, n * count)))
                logits, _ = _forward(self._model, x, paths, self._head, lambda p, o: replace[1][0] if replace else o)
                out.append(_numpy(logits))
        scores = np.concatenate(out)
        return scores.reshape(n, count, scores.shape[1])


def _no_grad() -> Any:
    """No autograd graph for probe runs on the torch backend (TF and JAX record none here)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    import contextlib

    return contextlib.nullcontext()


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
        with tape:  # a persistent tape records the scores too
            scores_ = [score(targets, k) for k in range(targets.shape[1])]
            stacked = tf.stack(scores_) if len(scores_) > 1 else None
        if stacked is not None:  # several targets: one vectorised Jacobian (pfor) of the k scores
            return _columns(paths, [_numpy(j) for j in tape.jacobian(stacked, xs)])
        return [{p: _numpy(g) for p, g in zip(paths, tape.gradient(scores_[0], xs), strict=True)}]

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
            if targets.shape[1] > 1:  # several targets: one batched vector-Jacobian product
                one_hot = torch.zeros((targets.shape[1], *logits.shape), dtype=logits.dtype, device=logits.device)
                one_hot.scatter_(2, torch.as_tensor(targets.T, device=logits.device)[:, :, None], 1.0)
                try:
                    batched = torch.autograd.grad(logits, xs, one_hot, retain_graph=True, is_grads_batched=True)
                    return _columns(paths, [_numpy(g) for g in batched])
                except RuntimeError:  # an operation without a batching rule: one backward per target
                    pass
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
        if targets.shape[1] > 1:  # several targets: the VJP vectorised over their one-hot cotangents
            cotangents = jax.numpy.stack([one_hot(targets, k) for k in range(targets.shape[1])])
            (values,) = jax.vmap(vjp)(cotangents)
            return _columns(paths, [_numpy(values[p]) for p in paths])
        return [{p: _numpy(vjp(one_hot(targets, 0))[0][p]) for p in paths}]

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


def _columns(paths: list[LayerPath], stacked: list[np.ndarray]) -> list[dict[LayerPath, np.ndarray]]:
    """Per-layer ``(k, ...)`` arrays as ``k`` per-target dicts."""
    return [{p: a[k] for p, a in zip(paths, stacked, strict=True)} for k in range(stacked[0].shape[0])]


def _last(values: list[Any]) -> np.ndarray | None:
    return _numpy(values[-1]) if values else None
