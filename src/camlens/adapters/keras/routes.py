"""One forward pass through a Keras model that captures layer outputs, and gradients of the
explained scores with respect to them, by each backend's own route:

* TensorFlow: ``tf.GradientTape`` watching the captured outputs (no variables watched).
* PyTorch: a zero tensor that requires grad is added to each captured output, and
  ``torch.autograd.grad`` is taken with respect to those only (no parameter ``.grad`` filled).
* JAX: the same zero offsets are the arguments of ``jax.vjp``; the targets' scores get their
  own VJP on the output, chained to the model's.

Second-order products (:math:`H A`, for Shapley-CAM) come from nested tapes (TensorFlow),
``create_graph`` (PyTorch) and a JVP of the gradient (JAX). Targets freeze their decisions on
the output between the forward and the backward passes, so top-k targets cost no second forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from camlens.adapters.keras.graph import LayerPath, descend_set, name_of, run
from camlens.adapters.keras.head import Head, _kind, pre_activation
from camlens.adapters.keras.outputs import output_of
from camlens.core import targets as tg
from camlens.core.layouts import NHWC, Layout
from camlens.core.record import (
    MAX_BATCH,
    AttentionMaps,
    ClassifierHead,
    not_feature_maps,
    per_sample_baseline,
    per_sample_masks,
    prefix_shared,
    probe_samples,
    replacement_rows,
)
from camlens.core.targets import Column, Output
from camlens.errors import CamlensError, LayerError, MethodError, ModelFailure

Columns = Callable[[np.ndarray], list[dict[LayerPath, np.ndarray]]]
PairColumns = Callable[[np.ndarray], list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]]
Prepare = Callable[[Sequence[Column]], tuple[np.ndarray, Columns | None, PairColumns | None]]


class KerasPass:
    """A :class:`~camlens.core.record.ForwardPass` over one Keras forward: arrays handed to the
    core channels-first, keyed by layer name. :meth:`bind` scores the target columns (inside
    the backend's gradient recording) before gradients are asked for."""

    def __init__(self, output: Output, activations: dict[LayerPath, np.ndarray], head_input: np.ndarray | None,
                 prepare: Prepare) -> None:
        self.output = output
        self.paths = list(activations)
        self.raw = activations
        self.activations: dict[str, np.ndarray] = {}
        self._layouts: dict[LayerPath, Layout] = {}
        self._size = (0, 0)
        self.head_input = head_input
        self.head: ClassifierHead | None = None
        self.probe: KerasProbe | None = None
        self.attention: AttentionMaps | None = None  # no Keras transformer attention is captured yet
        self.scores = np.zeros((output.size, 0), np.float32)
        self._prepare = prepare
        self._grads: Columns | None = None
        self._hvps: PairColumns | None = None

    def arrange(self, layouts: Mapping[LayerPath, Layout], input_size: tuple[int, int]) -> None:
        """Lay out each layer's activations channels first (NHWC unless ``layouts`` says tokens).

        Raises:
            LayerError: a layer whose output holds no feature map in its layout.
        """
        self._size = input_size
        for p, a in self.raw.items():
            layout = layouts.get(p) or (Layout(NHWC) if a.ndim == 4 else None)
            if layout is None:
                raise not_feature_maps(name_of(p), a.shape, layouts=True)
            try:
                layout.grid_of(a.shape, input_size)
            except LayerError as exc:
                raise LayerError(f"layer {name_of(p)!r}: {exc}") from None
            self._layouts[p] = layout
        self.activations = {name_of(p): self._nchw(p, a, 1) for p, a in self.raw.items()}

    def _nchw(self, path: LayerPath, a: np.ndarray, lead: int) -> np.ndarray:
        return self._layouts[path].to_nchw(a, self._size, lead)

    def layout(self, path: LayerPath) -> Layout:
        """The layout a captured layer's activations were read in."""
        return self._layouts[path]

    def bind(self, columns: Sequence[Column]) -> None:
        """Score ``columns`` on this pass's output, ready for their gradients."""
        self.scores, self._grads, self._hvps = self._prepare(columns)

    def gradients(self, columns: np.ndarray) -> dict[str, np.ndarray]:
        if self._grads is None:
            raise MethodError("gradients were not recorded for this pass")
        return self._stack(self._grads(columns))

    def hessian_products(self, columns: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per layer, the gradients taken on the way and :math:`H A`."""
        if self._hvps is None:
            raise MethodError("second-order gradients were not recorded for this pass")
        pairs = self._hvps(columns)
        return self._stack([g for g, _ in pairs]), self._stack([h for _, h in pairs])

    def attention_gradients(self, columns: np.ndarray, layerwise: bool = False) -> tuple[np.ndarray, ...]:
        """Not captured for Keras models (no Keras attention is read yet)."""
        raise MethodError("attention methods read PyTorch transformers; no Keras attention is captured")

    def _stack(self, columns: list[dict[LayerPath, np.ndarray]]) -> dict[str, np.ndarray]:
        return {name_of(p): self._nchw(p, np.stack([c[p] for c in columns], axis=1), 2) for p in self.paths}


class KerasProbe:
    """The :class:`~camlens.core.record.Probe` of one Keras batch: the model run again through
    its graph (pre-activation scores, as for gradients), at most ``max_batch`` inputs at a time,
    the batch's target ``columns`` scored on each output (every class when None).

    ``score_replaced`` swaps the layer's output during the run. As for PyTorch, where a check
    shows the model allows it (the unchanged output twice from one input row scores as the
    model does), one input row per forward serves every replacement of that sample, so the
    layers before run once per forward; otherwise each replacement runs the whole model.
    Activations arrive channels first and are handed to the model in the layer's layout
    (``capture``'s; a token layer keeps each sample's own prefix tokens).
    """

    def __init__(self, model: Any, batch: np.ndarray, paths: Sequence[LayerPath], head: Head,
                 columns: Sequence[Column] | None = None, max_batch: int = MAX_BATCH, capture: KerasPass | None = None) -> None:
        self._model, self._batch, self._head = model, np.asarray(batch, dtype=np.float32), head
        self._capture = capture
        self._paths = {name_of(p): p for p in paths}
        self._columns = list(columns) if columns is not None else None
        self._shared: dict[str, bool] = {}
        self.max_batch = max_batch
        self.input_size = (int(self._batch.shape[1]), int(self._batch.shape[2]))
        self.layout = "NHWC"

    def inputs(self, samples: np.ndarray | None = None) -> np.ndarray:
        return self._batch[probe_samples(int(self._batch.shape[0]), samples)]

    def score_masked(self, masks: np.ndarray, baseline: float | np.ndarray = 0.0, columns: np.ndarray | None = None,
                     samples: np.ndarray | None = None, probability: bool = False) -> np.ndarray:
        which = probe_samples(int(self._batch.shape[0]), samples)
        m = per_sample_masks(masks, len(which), self.input_size)
        flat = m.reshape(-1, *m.shape[2:])[..., None]
        base = per_sample_baseline(baseline, len(which), self._batch.shape[1:])
        count = m.shape[1]

        def inputs(rows: slice) -> np.ndarray:
            position = np.arange(rows.start, rows.stop) // count
            x = self._batch[which[position]]
            return x * flat[rows] + base[position] * (1.0 - flat[rows])

        return self._scores(count, inputs, None, columns, which, samples is not None, probability)

    def score_replaced(self, layer: str, activations: np.ndarray, columns: np.ndarray | None = None,
                       samples: np.ndarray | None = None, probability: bool = False) -> np.ndarray:
        if layer not in self._paths:
            raise MethodError(f"layer {layer!r} was not captured; replace one of {', '.join(self._paths)}")
        which = probe_samples(int(self._batch.shape[0]), samples)
        if activations.shape[0] != len(which):
            raise MethodError(f"replacements for {len(which)} samples expected, got {activations.shape[0]}")
        count = activations.shape[1]
        flat = activations.reshape(len(which) * count, *activations.shape[2:])
        path = self._paths[layer]
        layout = self._capture.layout(path) if self._capture is not None else Layout(NHWC)
        current: list[Any] = []
        shared = self._prefix_shared(layer, current, columns, int(which[0]))

        def inputs(rows: slice) -> np.ndarray:
            rows_of = which[np.arange(rows.start, rows.stop) // count]
            like = self._capture.raw[path][rows_of] if self._capture is not None else flat[rows]
            current[:] = [keras.ops.convert_to_tensor(layout.from_nchw(flat[rows], like))]
            return self._batch[rows_of[:1] if shared else rows_of]

        rows = replacement_rows(self.max_batch, self._batch[0].nbytes, flat[0].nbytes) if shared else self.max_batch
        return self._scores(count, inputs, (path, current), columns, which, True, probability, batch=rows)

    def _prefix_shared(self, layer: str, current: list[Any], columns: np.ndarray | None, sample: int) -> bool:
        """Whether ``layer``'s replacements may share one run of the layers before it (see the
        class docstring)."""
        if layer not in self._shared:
            if self._capture is None:
                self._shared[layer] = False
                return False
            own = np.asarray(self._capture.raw[self._paths[layer]][sample : sample + 1])
            which, replace = np.array([sample]), (self._paths[layer], current)

            def check(rows: int) -> Callable[[slice], np.ndarray]:
                def inputs(_: slice) -> np.ndarray:
                    current[:] = [keras.ops.convert_to_tensor(np.repeat(own, rows, axis=0))]
                    return self._batch[sample : sample + 1]
                return inputs

            self._shared[layer] = prefix_shared(lambda: self._scores(2, check(2), replace, columns, which, True, batch=2),
                                                lambda: self._scores(1, check(1), replace, columns, which, True))
        return self._shared[layer]

    def _scores(
        self, count: int, inputs: Callable[[slice], np.ndarray], replace: tuple[LayerPath, list[Any]] | None,
        columns: np.ndarray | None, which: np.ndarray, per_sample: bool, probability: bool = False,
        batch: int | None = None,
    ) -> np.ndarray:
        paths = [replace[0]] if replace else []

        def forward(rows: slice) -> Output:
            value, _ = _forward(self._model, inputs(rows), paths, self._head, lambda p, o: replace[1][0] if replace else o)
            return output_of(self._head, value, self.input_size)

        with _no_grad():
            return tg.score_rows(self._columns, columns, int(self._batch.shape[0]), count, batch or self.max_batch, forward,
                                 which if per_sample else None, probability)


def _no_grad() -> Any:
    """No autograd graph for probe runs on the torch backend (TF and JAX record none here)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    import contextlib

    return contextlib.nullcontext()


def forward_pass(
    model: Any, batch: np.ndarray, paths: Sequence[LayerPath], head: Head, with_gradients: bool, second_order: bool = False,
    layouts: Mapping[LayerPath, Layout] | None = None,
) -> KerasPass:
    """Run the model once, recording what gradients (and second-order products) need; call
    :meth:`KerasPass.bind` with the target columns before asking for gradients. Layers are
    read in ``layouts`` (NHWC when not given)."""
    backend = keras.backend.backend()
    route = {"tensorflow": _tensorflow, "torch": _torch, "jax": _jax}.get(backend)
    if route is None:
        raise MethodError(f"Keras backend {backend!r} cannot give gradients; use tensorflow, jax or torch")
    fwd: KerasPass = route(model, batch, list(paths), head, with_gradients, second_order)
    fwd.arrange(dict(layouts or {}), _size(batch))
    return fwd


def _forward(
    model: Any, batch: Any, paths: list[LayerPath], head: Head, record: Callable[[LayerPath, Any], Any]
) -> tuple[Any, list[Any]]:
    """The head's pre-activation output, with ``record`` applied to every captured layer output."""
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

    try:
        out = run(model, keras.ops.convert_to_tensor(batch), hook, descend_set(paths))
    except CamlensError:
        raise
    except Exception as exc:  # the model's own code refused the batch: one line, as for PyTorch
        first = (str(exc).strip().splitlines() or ["no details"])[0][:300]
        shape = tuple(np.shape(batch))
        raise ModelFailure(f"the model failed on an input of shape {shape}: {type(exc).__name__}: {first}") from exc
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        out = out[head.output_index]
    return out, head_inputs


def _numpy(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def _size(batch: Any) -> tuple[int, int]:
    return int(np.shape(batch)[1]), int(np.shape(batch)[2])


def _one_hot(scores: Any, columns: np.ndarray) -> np.ndarray:
    """``(k, N, K)`` cotangents selecting each of ``columns``' scores."""
    n, count = int(scores.shape[0]), int(scores.shape[1])
    ct = np.zeros((len(columns), n, count), np.float32)
    ct[np.arange(len(columns)), :, columns] = 1.0
    return ct


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
        value, head_inputs = _forward(model, batch, paths, head, record)
        output = output_of(head, value, _size(batch))
    xs = [captured[p] for p in paths]

    def prepare(columns: Sequence[Column]) -> tuple[np.ndarray, Columns | None, PairColumns | None]:
        with recording():  # persistent tapes record the scores too
            scores = tg.score(columns, output)

        def grads(index: np.ndarray) -> list[dict[LayerPath, np.ndarray]]:
            with tape:
                picked = [tf.reduce_sum(scores[:, int(c)]) for c in index]
                stacked = tf.stack(picked) if len(picked) > 1 else None
            if stacked is not None:  # several columns: one vectorised Jacobian (pfor)
                return _columns(paths, [_numpy(j) for j in tape.jacobian(stacked, xs)])
            return [{p: _gradient(g, x) for p, g, x in zip(paths, tape.gradient(picked[0], xs), xs, strict=True)}]

        def hvps(index: np.ndarray) -> list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]:
            assert outer is not None
            out = []
            for c in index:
                with recording():
                    g = tape.gradient(tf.reduce_sum(scores[:, int(c)]), xs)
                column = {}
                for p, gj, x in zip(paths, g, xs, strict=True):
                    hx = outer.gradient(gj, x, output_gradients=x) if gj is not None else None
                    column[p] = _numpy(hx) if hx is not None else np.zeros(x.shape, np.float32)
                out.append(({p: _gradient(gj, x) for p, gj, x in zip(paths, g, xs, strict=True)}, column))
            return out

        return _numpy(scores), grads if with_gradients else None, hvps if second_order else None

    return KerasPass(output, {p: _numpy(a) for p, a in captured.items()}, _last(head_inputs), prepare)


def _gradient(g: Any, x: Any) -> np.ndarray:
    """A gradient as NumPy; zeros where the score does not reach the layer (a constant score)."""
    return _numpy(g) if g is not None else np.zeros(tuple(x.shape), np.float32)


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
        value, head_inputs = _forward(model, batch, paths, head, record)
        output = output_of(head, value, _size(batch))
    xs: list[Any] = [offsets.get(p) for p in paths]

    def prepare(columns: Sequence[Column]) -> tuple[np.ndarray, Columns | None, PairColumns | None]:
        with torch.inference_mode(False), torch.set_grad_enabled(with_gradients):
            scores = tg.score(columns, output)

        def grad(c: int, create_graph: bool = False) -> list[Any]:
            s = scores[:, c].sum()
            if not s.requires_grad:
                return [torch.zeros_like(x) for x in xs]
            got = torch.autograd.grad(s, xs, retain_graph=True, create_graph=create_graph, allow_unused=True)
            return [g if g is not None else torch.zeros_like(x) for g, x in zip(got, xs, strict=True)]

        def grads(index: np.ndarray) -> list[dict[LayerPath, np.ndarray]]:
            with torch.inference_mode(False), torch.enable_grad():
                if len(index) > 1 and scores.requires_grad:  # several columns: one batched vector-Jacobian product
                    ct = torch.as_tensor(_one_hot(scores, index), dtype=scores.dtype, device=scores.device)
                    try:
                        batched = torch.autograd.grad(scores, xs, ct, retain_graph=True, is_grads_batched=True)
                        return _columns(paths, [_numpy(g) for g in batched])
                    except RuntimeError:  # an operation without a batching rule: one backward per column
                        pass
                return [{p: _numpy(g) for p, g in zip(paths, grad(int(c)), strict=True)} for c in index]

        def hvps(index: np.ndarray) -> list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]:
            from camlens.adapters.pytorch.capture import hessian_vector

            out = []
            with torch.inference_mode(False), torch.enable_grad():
                for c in index:
                    g = grad(int(c), create_graph=True)
                    column = {}
                    for p, gj, x in zip(paths, g, xs, strict=True):
                        hx = None
                        if gj.requires_grad:  # else the score is piecewise linear in x: H x = 0
                            hx = hessian_vector(gj, x, captured[p].detach())
                        column[p] = _numpy(hx.detach()) if hx is not None else np.zeros(tuple(x.shape), np.float32)
                    out.append(({p: _numpy(gj.detach()) for p, gj in zip(paths, g, strict=True)}, column))
            return out

        return _numpy(scores.detach()), grads if with_gradients else None, hvps if second_order else None

    acts = {p: _numpy(a.detach()) for p, a in captured.items()}
    return KerasPass(output, acts, _last(head_inputs), prepare)


def _jax(model, batch, paths, head, with_gradients, second_order) -> KerasPass:  # type: ignore[no-untyped-def]
    import jax

    size = _size(batch)

    def forward(offsets: dict[LayerPath, Any] | None) -> tuple[Any, tuple[dict[LayerPath, Any], list[Any]]]:
        captured: dict[LayerPath, Any] = {}

        def record(path: LayerPath, out: Any) -> Any:
            captured[path] = out
            return out if offsets is None else out + offsets[path]

        value, head_inputs = _forward(model, batch, paths, head, record)
        return value, (captured, head_inputs)

    if not with_gradients:
        value, (captured, head_inputs) = forward(None)
        output = output_of(head, value, size)
        return KerasPass(output, {p: _numpy(a) for p, a in captured.items()}, _last(head_inputs),
                         lambda columns: (_numpy(tg.score(columns, output)), None, None))
    shapes = jax.eval_shape(lambda: forward(None)[1][0])
    zeros = {p: jax.numpy.zeros(s.shape, s.dtype) for p, s in shapes.items()}
    value, vjp, (captured, head_inputs) = jax.vjp(forward, zeros, has_aux=True)
    output = output_of(head, value, size)

    def prepare(columns: Sequence[Column]) -> tuple[np.ndarray, Columns | None, PairColumns | None]:
        def scored(v: Any) -> Any:
            return tg.score(columns, output_of(head, v, size))

        scores, vjp_scores = jax.vjp(scored, value)

        def chain(ct: Any) -> dict[LayerPath, Any]:
            return vjp(vjp_scores(ct)[0])[0]  # type: ignore[no-any-return]

        def grads(index: np.ndarray) -> list[dict[LayerPath, np.ndarray]]:
            cts = jax.numpy.asarray(_one_hot(scores, index))
            if len(index) > 1:  # several columns: the chained VJP vectorised over their cotangents
                values = jax.vmap(chain)(cts)
                return _columns(paths, [_numpy(values[p]) for p in paths])
            return [{p: _numpy(a) for p, a in chain(cts[0]).items()}]

        def hvps(index: np.ndarray) -> list[tuple[dict[LayerPath, np.ndarray], dict[LayerPath, np.ndarray]]]:
            out = []
            for c in index:
                def gradient(offsets: dict[LayerPath, Any], c: int = int(c)) -> dict[LayerPath, Any]:
                    return jax.grad(lambda o: scored(forward(o)[0])[:, c].sum())(offsets)  # type: ignore[no-any-return]

                column, first = {}, {}
                for p in paths:  # H_jj A_j: the tangent is A_j at layer j only
                    tangent = {q: captured[q] if q == p else jax.numpy.zeros_like(zeros[q]) for q in paths}
                    g, hx = jax.jvp(gradient, (zeros,), (tangent,))
                    column[p], first[p] = _numpy(hx[p]), _numpy(g[p])
                out.append((first, column))
            return out

        return _numpy(scores), grads, hvps if second_order else None

    return KerasPass(output, {p: _numpy(a) for p, a in captured.items()}, _last(head_inputs), prepare)


def _columns(paths: list[LayerPath], stacked: list[np.ndarray]) -> list[dict[LayerPath, np.ndarray]]:
    """Per-layer ``(k, ...)`` arrays as ``k`` per-target dicts."""
    return [{p: a[k] for p, a in zip(paths, stacked, strict=True)} for k in range(stacked[0].shape[0])]


def _last(values: list[Any]) -> np.ndarray | None:
    return _numpy(values[-1]) if values else None
