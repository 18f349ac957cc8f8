"""One forward pass that captures target-layer activations, and gradients taken down to them.

How gradients stay cheap and the caller's model untouched:

* Layers before the first target run under ``torch.no_grad()``: no graph is recorded there.
  The first target's output becomes a fresh leaf that requires grad, grad mode is switched on
  from that point, and the rest of the network records a graph as usual.
* Gradients come from ``torch.autograd.grad(score, captured_activations)``: autograd stops at
  the target layer, never reaches a parameter, never fills a ``.grad``.
* Each hook returns a *clone* of the layer's output, so in-place operations downstream (e.g.
  ``ReLU(inplace=True)``) cannot change what was captured.
* All hooks are removed in ``finally``; grad mode is restored by the context managers even when
  the model raises. Train/eval mode and ``requires_grad`` flags are never touched.
* Hooks act only in the thread that registered them, so one model can serve several threads
  (camlens calls, or the user's own inference) at once without their captures mixing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
from torch import nn

from camlens.adapters.pytorch.attention import AttentionRecord, graph_point, token_head
from camlens.adapters.pytorch.layers import call_model
from camlens.adapters.pytorch.layouts import layout_of
from camlens.adapters.pytorch.outputs import canonical
from camlens.core import targets as tg
from camlens.core.layouts import Layout
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
from camlens.core.targets import SCORES, Column, Output
from camlens.errors import LayerError, MethodError


@dataclass
class ForwardCapture:
    """The output and captured tensors of one forward pass.

    ``activations`` hold, per layer, the tensor gradients are taken with respect to (a leaf for
    the first target layer, a graph node for later ones) or a detached copy when no gradients
    were asked for. ``head_input`` is what the CAM head's linear layer received, if hooked.
    """

    output: Output
    activations: dict[str, torch.Tensor]
    layouts: dict[str, Layout]
    input_size: tuple[int, int]
    head_input: torch.Tensor | None = None


def forward(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Mapping[str, nn.Module],
    *,
    with_gradients: bool,
    head: nn.Module | None = None,
    output: int | str | None = None,
    layouts: Mapping[str, Layout] | None = None,
) -> ForwardCapture:
    """Run ``model(batch)`` once with temporary hooks on ``layers`` (and on ``head``'s input);
    ``output`` picks the entry of a tuple/dict output to explain (see
    :func:`camlens.adapters.pytorch.outputs.select`). Each layer's layout is the one stated in
    ``layouts``, else found from the model (:func:`camlens.adapters.pytorch.layouts.layout_of`);
    a layer whose output holds no feature map is refused in one line."""
    captured: dict[str, torch.Tensor] = {}
    found: dict[str, Layout] = {}
    head_inputs: list[torch.Tensor] = []
    owner = threading.get_ident()  # hooks ignore forwards that other threads run meanwhile
    size = (int(batch.shape[-2]), int(batch.shape[-1]))
    stated = dict(layouts or {})
    modules = dict(model.named_modules())

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, out: object) -> object:
            if threading.get_ident() != owner:
                return None
            rest = out[1:] if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) else None
            tensor = out[0] if rest is not None else out  # type: ignore[index]
            if not isinstance(tensor, torch.Tensor):
                raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor; pick another layer")
            layout = stated.get(name) or layout_of(model, name, module, tuple(tensor.shape), int(batch.shape[0]), size,
                                                   modules)
            if layout is None:
                raise not_feature_maps(name, tuple(tensor.shape), layouts=True)
            try:
                layout.grid_of(tuple(tensor.shape), size)
            except LayerError as exc:
                raise LayerError(f"layer {name!r}: {exc}") from None
            found[name] = layout
            if not with_gradients:
                captured[name] = tensor.detach().clone()
                return None
            captured[name], copy = graph_point(tensor)
            return (copy, *rest) if rest is not None else copy

        return hook

    handles = []
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        if head is not None:
            handles.append(head.register_forward_pre_hook(
                lambda module, args: head_inputs.append(args[0]) if threading.get_ident() == owner else None
            ))
        with torch.inference_mode(False), torch.no_grad():
            result = canonical(call_model(model, batch), output, size, batch.device)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in captured]
    if missing:
        raise LayerError(f"layer {missing[0]!r} did not run during the forward pass; pick another layer")
    return ForwardCapture(result, captured, found, size, head_inputs[-1] if head_inputs else None)


class TorchPass:
    """A :class:`~camlens.core.record.ForwardPass` over one PyTorch forward with gradients.

    The target columns are scored once on the captured output; gradients are taken with
    ``torch.autograd.grad`` from those scores down to the captured activations only. The graph
    is kept (``retain_graph``) until this object is dropped, so the core may ask for columns
    in several chunks. Several columns go through one batched vector-Jacobian product
    (``is_grads_batched``) when the model's operations allow it, else one backward each.
    """

    def __init__(self, capture: ForwardCapture, columns: Sequence[Column], head: ClassifierHead | None = None,
                 probe: TorchProbe | None = None) -> None:
        self._capture = capture
        self._columns = list(columns)
        self.probe = probe
        self._names: list[str] = list(capture.activations)
        self.output = capture.output
        with torch.inference_mode(False), torch.enable_grad():
            self._scores = tg.score(self._columns, capture.output)
        self.scores = _numpy(self._scores)
        self._layouts = capture.layouts
        self.activations = {name: self._nchw(name, _numpy(a), 1) for name, a in capture.activations.items()}
        self.head = head
        self.attention: AttentionMaps | None = None
        self.attention_record: AttentionRecord | None = None
        self._batched = True

    def gradients(self, columns: np.ndarray) -> dict[str, np.ndarray]:
        """``(N, k, C, h, w)`` gradients of each chosen score column, per layer."""
        inputs = [self._capture.activations[n] for n in self._names]
        grads = self._vjp(self._scores, inputs, columns, self._names)
        return {name: self._nchw(name, _numpy(g.transpose(0, 1)), 2) for name, g in zip(self._names, grads, strict=True)}

    def attention_gradients(self, columns: np.ndarray, layerwise: bool = False) -> Sequence[np.ndarray]:
        """Per block ``(N, k, heads, L, L)`` gradients of the chosen columns with respect to the
        attention probabilities: of the model's scores (one backward for every block), or
        (``layerwise``) of the scores of each block's mean token through the model's final norm
        and head (LeGrad: one short backward per block). Blocks are computed as they are read,
        so that only one block's gradients are held at a time."""
        record = self.attention_record
        if record is None:
            raise MethodError("the attention was not captured for gradients")
        names = [s.name for s in record.sites]
        if not layerwise:
            grads = self._vjp(self._scores, record.outputs, columns, names)
            return Blocks(len(grads), lambda i: _numpy(record.attention_gradient(i, grads[i]).transpose(0, 1)))
        if self.output.kind != SCORES:
            raise MethodError(f"LeGrad scores each block through the classifier; this model's output is {self.output.kind}")
        if any(self._columns[int(c)].kind == "score" for c in columns):
            raise MethodError("LeGrad scores each block's tokens through the model's head; a Score function of the model's "
                              "own output cannot score them (use Class, Probability, Sigmoid or Similarity targets)")
        head = token_head(record.model)

        def block(i: int) -> np.ndarray:
            with torch.inference_mode(False), torch.enable_grad():
                raw = head(record.tokens[i])
                scores = tg.score(self._columns, canonical(raw, None, self._capture.input_size, raw.device))
                (grad,) = self._vjp(scores, [record.outputs[i]], columns, [names[i]])
                return _numpy(record.attention_gradient(i, grad).transpose(0, 1))

        return Blocks(len(record.tokens), block)

    def _vjp(self, scores: torch.Tensor, inputs: list[torch.Tensor], columns: np.ndarray, names: list[str]) -> list[torch.Tensor]:
        """Per input, ``(k, N, ...)`` gradients of the ``k`` chosen columns of ``scores``: one
        batched vector-Jacobian product when the model's operations allow it, else one
        backward per column."""
        with torch.inference_mode(False), torch.enable_grad():
            if len(columns) > 1 and self._batched and scores.requires_grad:
                batched = self._batched_grads(scores, columns, inputs)
                if batched is not None:
                    return batched
            per_column = [self._grad(scores, int(c), inputs, names) for c in columns]
        return [torch.stack([c[i] for c in per_column]) for i in range(len(inputs))]

    def _nchw(self, name: str, a: np.ndarray, lead: int) -> np.ndarray:
        """A layer's array (activations, or per-column gradients) as channels-first maps."""
        return self._layouts[name].to_nchw(a, self._capture.input_size, lead)

    def _stack(self, columns: list[list[torch.Tensor]]) -> dict[str, np.ndarray]:
        """Per layer, the columns' tensors stacked on a new target axis 1, channels first."""
        return {name: self._nchw(name, np.stack([_numpy(c[i]) for c in columns], axis=1), 2)
                for i, name in enumerate(self._names)}

    def _grad(self, scores: torch.Tensor, column: int, inputs: list[torch.Tensor], names: list[str],
              create_graph: bool = False) -> list[torch.Tensor]:
        score = scores[:, column].sum()
        kind = self._columns[column].kind
        if not score.requires_grad and kind == "detection":
            return [torch.zeros_like(x) for x in inputs]  # no detection matched the box: zero maps
        if not score.requires_grad:
            raise LayerError(f"the {kind} target's score does not depend on layer {names[0]!r} through autograd (it is "
                             "constant, detached, or computed under torch.no_grad); methods without gradients work: "
                             "scorecam, ablationcam, reciprocam, rise, eigencam")
        grads = torch.autograd.grad(score, inputs, retain_graph=True, create_graph=create_graph, allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is None:
                raise LayerError(f"the {kind} target's score does not depend on layer {name!r}")
        return list(grads)  # type: ignore[arg-type]

    def _batched_grads(self, scores: torch.Tensor, columns: np.ndarray, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Per input ``(k, N, ...)`` gradients of the ``k`` columns in one batched
        vector-Jacobian product, or None where the model's operations do not allow it."""
        index = torch.as_tensor(np.ascontiguousarray(columns), dtype=torch.int64, device=scores.device)
        one_hot = torch.zeros((len(columns), *scores.shape), dtype=scores.dtype, device=scores.device)
        one_hot[torch.arange(len(columns)), :, index] = 1.0
        try:
            grads = torch.autograd.grad(scores, inputs, one_hot, retain_graph=True, is_grads_batched=True, allow_unused=True)
        except RuntimeError:  # an operation without a batching rule: one backward per column
            self._batched = False
            return None
        if any(g is None for g in grads):
            return None
        return list(grads)  # type: ignore[arg-type]

    def hessian_products(self, columns: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per layer, the ``(N, k, C, h, w)`` gradients and :math:`H A`, the Hessian of each
        column's scores with respect to the layer's output applied to that output (a backward
        pass that keeps its graph, then one more)."""
        inputs = [self._capture.activations[n] for n in self._names]
        columns_, firsts = [], []
        with torch.inference_mode(False), torch.enable_grad():
            for c in columns:
                grads = self._grad(self._scores, int(c), inputs, self._names, create_graph=True)
                firsts.append(grads)
                column = []
                for g, x in zip(grads, inputs, strict=True):  # H_jj A_j, one layer at a time
                    hx = None
                    if g.requires_grad:  # else the score is piecewise linear in x: H x = 0
                        hx = hessian_vector(g, x, x.detach())
                    column.append(hx if hx is not None else torch.zeros_like(x))
                columns_.append(column)
        return self._stack(firsts), self._stack(columns_)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class Blocks(Sequence[np.ndarray]):
    """A read-only sequence whose item ``i`` is computed by ``compute(i)`` when read (the last
    one read is kept, so that ``blocks[0]`` then a loop computes it once)."""

    def __init__(self, count: int, compute: Callable[[int], np.ndarray]) -> None:
        self._count, self._compute = count, compute
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        i = index + self._count if index < 0 else index
        if not 0 <= i < self._count:
            raise IndexError(index)
        if self._last is None or self._last[0] != i:
            self._last = (i, self._compute(i))
        return self._last[1]


def hessian_vector(grad: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """:math:`H v`: the gradient ``grad`` (taken with ``create_graph``) differentiated again
    with respect to ``x`` along ``v`` (None where ``grad`` does not depend on ``x``).

    Raises:
        MethodError: an operation of the model has no second derivative in PyTorch (fused
            attention kernels), in one line that says what to do.
    """
    try:
        (hx,) = torch.autograd.grad(grad, x, v, retain_graph=True, allow_unused=True)
    except RuntimeError as exc:
        if "not implemented" not in str(exc):
            raise
        op = str(exc).split("derivative for ")[-1].split(" is not")[0]
        raise MethodError(f"second-order gradients (Shapley-CAM) go through {op}, which PyTorch cannot differentiate "
                          "twice (fused attention); run the model under torch.nn.attention.sdpa_kernel("
                          "SDPBackend.MATH), or use a layer after the last attention or a first-order method") from None
    return hx


class TorchProbe:
    """The :class:`~camlens.core.record.Probe` of one PyTorch batch: the model run again, without
    gradients, at most ``max_batch`` inputs at a time, on the batch's device.

    Scores are the batch's target ``columns`` on each new output (every class when None).
    ``score_replaced`` swaps a target layer's output in a temporary forward hook (removed in
    ``finally``). Where the model allows it, the input is one row per forward and the hook
    returns every replacement of that sample, so the layers before the target layer run once
    per forward instead of once per replacement (residual connections from before the layer
    broadcast). Whether the model allows it is checked once per layer (the unchanged layer
    output, twice, must give the model's own scores); otherwise every replacement runs the
    whole model, which is exact for any graph. Channels-first replacements go back to the
    layer's layout (``capture``'s); a token layer keeps each sample's own prefix tokens.
    """

    def __init__(self, model: nn.Module, batch: torch.Tensor, layers: Mapping[str, nn.Module],
                 columns: Sequence[Column] | None = None, output: int | str | None = None, max_batch: int = MAX_BATCH,
                 capture: ForwardCapture | None = None) -> None:
        self._model, self._batch, self._layers = model, batch, dict(layers)
        self._columns, self._output = (list(columns) if columns is not None else None), output
        self._capture = capture
        self._shared: dict[str, bool] = {}
        self.max_batch = max_batch
        self.input_size = (int(batch.shape[2]), int(batch.shape[3]))
        self.layout = "NCHW"

    def inputs(self, samples: np.ndarray | None = None) -> np.ndarray:
        which = probe_samples(int(self._batch.shape[0]), samples)
        return _numpy(self._batch[torch.as_tensor(which)])

    def score_masked(self, masks: np.ndarray, baseline: float | np.ndarray = 0.0, columns: np.ndarray | None = None,
                     samples: np.ndarray | None = None, probability: bool = False) -> np.ndarray:
        which = probe_samples(int(self._batch.shape[0]), samples)
        m = per_sample_masks(masks, len(which), self.input_size)
        baselines = per_sample_baseline(baseline, len(which), tuple(self._batch.shape[1:]))
        base = torch.as_tensor(np.require(baselines, requirements=["C", "W"]), device=self._batch.device, dtype=self._batch.dtype)
        flat = torch.from_numpy(np.require(m.reshape(-1, *m.shape[2:]), requirements=["C", "W"]))
        count = m.shape[1]

        def inputs(rows: slice) -> torch.Tensor:
            mask = flat[rows].to(self._batch.device, self._batch.dtype)[:, None]
            position = torch.as_tensor(np.arange(rows.start, rows.stop) // count)
            x = self._batch[torch.as_tensor(which)[position]]
            return x * mask + base[position] * (1 - mask)

        return self._scores(count, inputs, columns, which, samples is not None, probability)

    def score_replaced(self, layer: str, activations: np.ndarray, columns: np.ndarray | None = None,
                       samples: np.ndarray | None = None, probability: bool = False) -> np.ndarray:
        if layer not in self._layers:
            raise LayerError(f"layer {layer!r} was not captured; replace one of {', '.join(self._layers)}")
        which = probe_samples(int(self._batch.shape[0]), samples)
        if activations.shape[0] != len(which):
            raise MethodError(f"replacements for {len(which)} samples expected, got {activations.shape[0]}")
        count = activations.shape[1]
        flat = np.ascontiguousarray(activations.reshape(len(which) * count, *activations.shape[2:]))
        current: list[torch.Tensor] = []
        with self._replacing(layer, current):
            shared = self._prefix_shared(layer, current, columns, int(which[0]))

            def inputs(rows: slice) -> torch.Tensor:
                rows_of = which[np.arange(rows.start, rows.stop) // count]
                current[:] = [torch.from_numpy(self._layout_of(layer, flat[rows], rows_of)).to(
                    self._batch.device, self._batch.dtype)]
                return self._batch[torch.as_tensor(rows_of[:1] if shared else rows_of)]

            per_row = self._batch[0].element_size() * self._batch[0].nelement()
            rows = replacement_rows(self.max_batch, per_row, flat[0].nbytes) if shared else self.max_batch
            return self._scores(count, inputs, columns, which, True, probability, batch=rows)

    @contextmanager
    def _replacing(self, layer: str, current: list[torch.Tensor]) -> Iterator[None]:
        """A temporary hook making ``layer`` output ``current[0]`` (in this thread only)."""
        owner = threading.get_ident()

        def replace(mod: nn.Module, args: object, out: object) -> object:
            if threading.get_ident() != owner:
                return None
            return (current[0], *out[1:]) if isinstance(out, tuple) else current[0]

        handle = self._layers[layer].register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    def _prefix_shared(self, layer: str, current: list[torch.Tensor], columns: np.ndarray | None, sample: int) -> bool:
        """Whether ``layer``'s replacements may share one run of the layers before it: the
        unchanged output twice, from one input row, must score as the model scores the row."""
        if layer not in self._shared:
            if self._capture is None or layer not in self._capture.activations:
                self._shared[layer] = False
                return False
            own = self._capture.activations[layer].detach()[sample : sample + 1]
            which = np.array([sample])

            def check(rows: int) -> Callable[[slice], torch.Tensor]:
                def inputs(_: slice) -> torch.Tensor:
                    current[:] = [own.expand(rows, *own.shape[1:]).contiguous()]
                    return self._batch[sample : sample + 1]
                return inputs

            self._shared[layer] = prefix_shared(lambda: self._scores(2, check(2), columns, which, True, batch=2),
                                                lambda: self._scores(1, check(1), columns, which, True))
        return self._shared[layer]

    def _layout_of(self, layer: str, maps: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Channels-first rows back in the layer's own layout."""
        if self._capture is None or layer not in self._capture.layouts:
            return maps
        original = _numpy(self._capture.activations[layer])[samples]
        return self._capture.layouts[layer].from_nchw(maps, original)

    def _scores(self, count: int, inputs: Callable[[slice], torch.Tensor], columns: np.ndarray | None,
                which: np.ndarray, per_sample: bool, probability: bool = False, batch: int | None = None) -> np.ndarray:
        """Score ``count`` variants of each sample in ``which`` (see :func:`~camlens.core.targets.score_rows`)."""
        size = self.input_size

        def forward(rows: slice) -> Output:
            return canonical(call_model(self._model, inputs(rows)), self._output, size, self._batch.device)

        with torch.inference_mode(False), torch.no_grad():
            return tg.score_rows(self._columns, columns, int(self._batch.shape[0]), count, batch or self.max_batch, forward,
                                 which if per_sample else None, probability)
