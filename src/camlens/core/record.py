"""The one contract between framework adapters and methods.

An adapter runs the model once per batch and hands the core a :class:`ForwardPass`: the model's
:class:`~camlens.core.targets.Output`, the explained scores (one column per target, see
:mod:`camlens.core.targets`), every target layer's activations (channels first), the CAM head
when one was asked for, functions that take gradients (and second-order products) of a chunk of
score columns, and a :class:`Probe` for methods that need more forward passes.
The core walks the targets in chunks, builds a :class:`LayerRecord` per layer and chunk, and
each method maps a record to raw maps. Nothing here imports a framework.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from camlens.core.targets import Output
from camlens.errors import LayerError, MethodError, ModelFailure


class Need(enum.Enum):
    """What a method needs from the adapter beyond the layer's activations."""

    GRADIENTS = "gradients"
    """``d score / d A`` for every target."""
    HESSIAN = "second-order gradients"
    """``H A``, the Hessian of the score with respect to ``A`` applied to ``A`` itself."""
    CLASS_WEIGHTS = "class weights"
    """The weights of a global-average-pooling -> linear classifier right after the layer."""
    FORWARDS = "extra forward passes"
    """A :class:`Probe`: the model run again on masked inputs or with a layer's output replaced."""
    ATTENTION = "attention maps"
    """Every transformer block's attention probabilities (:class:`AttentionMaps`)."""
    ATTENTION_GRADIENTS = "attention gradients"
    """``d score / d A_l``: every target's gradient with respect to every block's attention."""
    LAYERWISE_GRADIENTS = "layerwise attention gradients"
    """``d s_l / d A_l``: per block, the gradient of the targets scored on that block's own tokens
    (their mean through the model's final norm and head) with respect to its attention."""


MAX_BATCH = 8
"""Inputs per extra forward pass of a :class:`Probe`, by default (``max_batch=`` of the explainers).
On 2 CPU cores, ResNet-50 and EfficientNet-Lite0 ran 25% faster per input in batches of 8 than
of 32 (and take a quarter of the memory); on a GPU a larger ``max_batch`` pays."""

Progress = Callable[[str, int, int], None]
"""``progress(what, done, total)``: how far a method that runs the model again is through one
layer of a batch (``what`` names both, e.g. ``"Score-CAM at layer4"``); ``done`` and ``total``
count the units it reports (channels, masks), ``done == total`` at the end."""

ATTENTION_NEEDS = frozenset({Need.ATTENTION, Need.ATTENTION_GRADIENTS, Need.LAYERWISE_GRADIENTS})
"""What only a transformer's attention modules can give."""


@dataclass(frozen=True)
class AttentionMaps:
    """The attention probabilities of a transformer's blocks for a batch, in forward order.

    Attributes:
        probabilities: per block, ``(N, heads, L, L)`` (rows: queries, columns: keys; each row
            sums to 1); empty when no method asked for them (:attr:`Need.ATTENTION`).
        prefix: the number of leading non-patch tokens (class, distillation, registers).
        grid: ``(h, w)`` of the patch tokens that follow them.
        blocks: how many attention blocks ran.
        heads: attention heads per block.
        width: the attention's output width (heads times head size).
    """

    probabilities: tuple[np.ndarray, ...]
    prefix: int
    grid: tuple[int, int]
    blocks: int = 0
    heads: int = 0
    width: int = 0

    @property
    def tokens(self) -> int:
        """``L``: prefix plus patch tokens."""
        return self.prefix + self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ClassifierHead:
    """A linear classifier fed by the spatial mean of ``layer``, found and checked by the adapter.

    Attributes:
        layer: the layer whose maps the classifier pools.
        features: ``(N, C, h, w)`` what is pooled: the layer's output, or its ReLU when one sits
            in between (DenseNet).
        weights: ``(classes, C)`` the linear map (a linear layer's or a 1x1 conv's weight).
    """

    layer: str
    features: np.ndarray
    weights: np.ndarray


class Probe(Protocol):
    """Extra forward passes of one batch, as an adapter runs them: chunked (at most
    ``max_batch`` inputs per forward), without gradients, on the model's device. Both return
    ``(S, M, K)`` scores of the batch's target columns (the decisions each target froze on the
    batch, applied to every new output), one row of ``M`` per sample scored: every sample of
    the batch, or those listed in ``samples``.

    Attributes:
        max_batch: inputs per forward pass.
        input_size: ``(H, W)`` of the model's input, the size of :meth:`score_masked`'s masks.
        layout: ``"NCHW"`` (PyTorch) or ``"NHWC"`` (Keras): how :meth:`inputs` and baselines
            hold an input.
    """

    max_batch: int
    input_size: tuple[int, int]
    layout: str

    def inputs(self, samples: np.ndarray | None = None) -> np.ndarray:
        """The batch's preprocessed inputs as float32 NumPy in :attr:`layout` (those listed in
        ``samples``, or all), e.g. to build a baseline from them."""
        ...

    def score_masked(self, masks: np.ndarray, baseline: float | np.ndarray = 0.0, columns: np.ndarray | None = None,
                     samples: np.ndarray | None = None, probability: bool = False) -> np.ndarray:
        """Scores of ``x * m + baseline * (1 - m)`` for each mask ``m``.

        Args:
            masks: ``(M, H, W)`` shared by every sample scored, or ``(S, M, H, W)``, at the
                input's resolution, broadcast over channels.
            baseline: a value, an array broadcastable to one preprocessed input in
                :attr:`layout` (``(C, H, W)`` for PyTorch, ``(H, W, C)`` for Keras), or one
                such input per sample scored (``(S, C, H, W)`` or ``(S, H, W, C)``).
            columns: which target columns to score (indices; a record's ``columns``), all by default.
            samples: which samples of the batch to score (indices), all by default.
            probability: score class columns as softmax probabilities, not logits.
        """
        ...

    def score_replaced(self, layer: str, activations: np.ndarray, columns: np.ndarray | None = None,
                       samples: np.ndarray | None = None, probability: bool = False) -> np.ndarray:
        """Scores with ``layer``'s output replaced by each of ``activations``,
        ``(S, M, C, h, w)`` channels first (the adapter converts them to the layer's layout);
        ``columns``, ``samples`` and ``probability`` as for :meth:`score_masked`.
        Where the model allows, the layers before ``layer`` run once per forward, not once per
        replacement (an adapter checks that this gives the model's own scores, else runs every
        replacement whole), and a forward then carries :func:`replacement_rows` replacements."""
        ...


def not_feature_maps(layer: str, shape: tuple[int | None, ...], layouts: bool = False) -> LayerError:
    """The error for a target layer whose output holds no feature map (``layouts``: the adapter
    takes a stated layout, so the message says how to give one)."""
    known = "NCHW, NHWC, or tokens on a grid" if layouts else "(N, H, W, C)"
    hint = " or state its layout, e.g. layout='tokens:1'" if layouts else ""
    return LayerError(
        f"layer {layer!r} outputs shape {tuple(shape)}, not a feature map ({known}); pick another layer "
        f"(`camlens layers MODEL` lists them){hint}"
    )


def probe_samples(n: int, samples: np.ndarray | None) -> np.ndarray:
    """The sample indices a :class:`Probe` call scores: ``samples``, or all ``n`` of the batch."""
    return np.arange(n) if samples is None else np.asarray(samples, dtype=np.int64)


def per_sample_baseline(baseline: float | np.ndarray, n: int, input_shape: tuple[int, ...]) -> np.ndarray:
    """A :meth:`Probe.score_masked` baseline as float32 with one row per sample scored (``n``),
    each broadcastable to one input of ``input_shape`` (in the probe's layout): a shared
    baseline is repeated along a new leading axis, so that ``base[rows]`` picks the rows'.

    Raises:
        MethodError: not broadcastable to one input, nor one per sample.
    """
    base = np.asarray(baseline, dtype=np.float32)
    if base.ndim <= len(input_shape):
        base = base[None]
    try:
        np.broadcast_shapes(base.shape, (n, *input_shape))
    except ValueError:
        raise MethodError(f"a baseline of shape {np.shape(baseline)} is neither broadcastable to one input "
                          f"{tuple(input_shape)} nor one per sample ({n}, ...)") from None
    rest = base.shape[1:]  # right-aligned to one input: singleton axes fill the gap to its rank
    base = base.reshape(base.shape[0], *([1] * (len(input_shape) - len(rest))), *rest)
    return np.ascontiguousarray(np.broadcast_to(base, (n, *base.shape[1:])))


def replacement_rows(max_batch: int, input_bytes: int, row_bytes: int) -> int:
    """Replacements per forward of :meth:`Probe.score_replaced` when the layers before the layer
    run once per forward (one input row): as many as fit in the bytes of ``max_batch`` inputs,
    and at least ``max_batch``. After a deep layer (small maps, a short rest of the network)
    that is many more rows than inputs, for the memory of a forward of ``max_batch`` inputs."""
    return max(max_batch, max_batch * input_bytes // max(row_bytes, 1))


def prefix_shared(twice: Callable[[], np.ndarray], once: Callable[[], np.ndarray]) -> bool:
    """Whether a probe may run the layers before a replaced layer once for all replacements:
    ``twice()`` scores the layer's unchanged output twice from one input row (``(1, 2, K)``),
    ``once()`` the row as the model runs it (``(1, 1, K)``); they must agree, and the model must
    accept the broadcast batch at all."""
    try:
        doubled = twice()
    except (ModelFailure, ValueError):  # the model refused rows it did not get as input
        return False
    return bool(np.allclose(doubled, once()[:, [0, 0]], rtol=1e-4, atol=1e-5))


def per_sample_masks(masks: np.ndarray, n: int, size: tuple[int, int]) -> np.ndarray:
    """Masks for :meth:`Probe.score_masked` as ``(N, M, H, W)`` float32 (shared masks broadcast)
    for ``n`` samples scored.

    Raises:
        MethodError: not ``(M, H, W)`` or ``(N, M, H, W)`` at the input's ``size``.
    """
    m = np.asarray(masks, dtype=np.float32)
    if m.ndim == 3:
        m = np.broadcast_to(m, (n, *m.shape))
    if m.ndim != 4 or m.shape[0] != n or tuple(m.shape[2:]) != tuple(size):
        raise MethodError(f"masks must be (M, H, W) or (N, M, H, W) at the input's size {tuple(size)}, got {np.shape(masks)}")
    return m


class ForwardPass(Protocol):
    """One forward pass of a batch, as an adapter holds it (see :func:`camlens.core.compute.run`).

    ``scores`` are the ``(N, K)`` explained scores, one column per
    :class:`~camlens.core.targets.Column`. ``activations`` are ``(N, C, h, w)`` NumPy arrays
    keyed by layer name. ``gradients`` takes ``(k,)`` column indices and returns, per layer,
    ``(N, k, C, h, w)`` gradients of those scores;
    ``hessian_products`` returns the gradients it took on the way and the ``H A`` products, both
    so shaped, so that a method needing both costs no extra backward pass. The core calls them
    once per chunk of target columns, so memory stays bounded whatever the number of targets.
    """

    @property
    def output(self) -> Output: ...

    @property
    def scores(self) -> np.ndarray: ...

    @property
    def activations(self) -> Mapping[str, np.ndarray]: ...

    @property
    def head(self) -> ClassifierHead | None: ...

    def gradients(self, columns: np.ndarray) -> Mapping[str, np.ndarray]: ...

    def hessian_products(self, columns: np.ndarray) -> tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]: ...

    def attention_gradients(self, columns: np.ndarray, layerwise: bool = False) -> Sequence[np.ndarray]:
        """Per block, ``(N, k, heads, L, L)`` gradients of the chosen score columns with respect
        to the block's attention probabilities: of the model's scores, or (``layerwise``) of the
        scores of the block's own tokens (see :attr:`Need.LAYERWISE_GRADIENTS`)."""
        ...

    @property
    def probe(self) -> Probe | None: ...

    @property
    def attention(self) -> AttentionMaps | None: ...


@dataclass(frozen=True)
class LayerRecord:
    """What a method sees of one layer for ``K`` target columns of a batch of ``N``.

    Attributes:
        layer: the layer's name.
        activations: ``(N, C, h, w)``.
        targets: ``(N, K)`` class index of each explained score (``-1`` where it has none).
        gradients: ``(N, K, C, h, w)`` gradient of each explained score with respect to
            ``activations``, when a method needs it.
        hessian_products: ``(N, K, C, h, w)`` ``H A`` for each target, when a method needs it.
        class_weights: ``(N, K, C)`` the classifier's weight row of each target (CAM), or
            ``(1, K, C)`` when every sample has the same targets (broadcast over the batch).
        features: ``(N, C, h, w)`` the maps the classifier pools (CAM), when known.
        scores: ``(N, K)`` the explained scores' values.
        columns: ``(K,)`` which of the batch's target columns these are (for the probe).
        attention: the blocks' attention probabilities (and the token prefix and grid), for
            methods that need any attention.
        attention_gradients: per block, ``(N, K, heads, L, L)`` ``d score / d A_l``
            (:attr:`Need.ATTENTION_GRADIENTS`).
        layerwise_gradients: per block, ``(N, K, heads, L, L)`` ``d s_l / d A_l``
            (:attr:`Need.LAYERWISE_GRADIENTS`).
        probe: extra forward passes of the batch, for methods that need :attr:`Need.FORWARDS`.
        progress: where such a method reports how far it is (see :data:`Progress`).
    """

    layer: str
    activations: np.ndarray
    targets: np.ndarray
    gradients: np.ndarray | None = None
    hessian_products: np.ndarray | None = None
    class_weights: np.ndarray | None = None
    features: np.ndarray | None = None
    scores: np.ndarray | None = None
    probe: Probe | None = None
    columns: np.ndarray | None = None
    attention: AttentionMaps | None = None
    attention_gradients: Sequence[np.ndarray] | None = None
    layerwise_gradients: Sequence[np.ndarray] | None = None
    progress: Progress | None = None

    def report(self, title: str, done: int, total: int) -> None:
        """Tell :attr:`progress`, if any, that ``done`` of ``total`` units of ``title`` at this
        layer are finished."""
        if self.progress is not None:
            self.progress(f"{title} at {self.layer}", done, total)
