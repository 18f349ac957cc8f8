"""What to explain: target kinds that turn a model's output into the scores whose maps are computed.

A target is a *score*: a differentiable number per sample computed from the model's output.
A class index is only the most common kind. Every kind is a small frozen dataclass that, given
the model's :class:`Output` of a batch, *freezes* its decisions (which class won, which pixels,
which detection matches a box) into :class:`Column` s, one per explained score. A column can
then score any output of the same model (the batch itself for gradients, masked or perturbed
copies for the many-forward methods) with the framework's own tensors, through the small
:class:`Ops` interface an adapter lends it. Nothing here imports a framework.

Kinds (``camlens targets`` lists them): :class:`Class`, :class:`Top`, :class:`AllClasses`,
:class:`Probability`, :class:`Sigmoid`, :class:`Finer`, :class:`Score`, :class:`Segmentation`,
:class:`Similarity` and :class:`Detection`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Protocol

import numpy as np

from camlens.errors import CamlensError, TargetError

ALL = "all"
"""The target spec for every class of the model, in class order."""

SCORES, MAPS, DETECTIONS = "scores", "maps", "detections"
"""The kinds of model output targets read (see :class:`Output`)."""


class Ops(Protocol):
    """Tensor operations of one framework, lent by an adapter to the targets.

    Tensors also support ``+ - * /``, comparison-free indexing such as ``x[:, k]`` and
    ``x[:, None]``, in every framework camlens adapts.
    """

    def numpy(self, x: Any) -> np.ndarray:
        """A float32 NumPy copy (detached)."""
        ...

    def constant(self, a: np.ndarray) -> Any:
        """A float32 tensor of ``a`` on the output's device."""
        ...

    def take(self, x: Any, index: np.ndarray) -> Any:
        """``out[r, k, ...] = x[r, index[r, k], ...]``: entries along axis 1, per row."""
        ...

    def softmax(self, x: Any) -> Any:
        """Softmax along axis 1."""
        ...

    def sigmoid(self, x: Any) -> Any: ...

    def sum(self, x: Any, axes: tuple[int, ...]) -> Any: ...

    def sqrt(self, x: Any) -> Any: ...

    def clip(self, x: Any, low: float | None = None, high: float | None = None) -> Any: ...

    def stack(self, xs: Sequence[Any]) -> Any:
        """Tensors of one shape stacked on a new axis 0."""
        ...

    def concat(self, xs: Sequence[Any]) -> Any:
        """``(rows, k)`` tensors joined along axis 1."""
        ...


@dataclass(frozen=True, eq=False)
class Output:
    """A model's output for a batch of ``N``, as targets read it.

    Attributes:
        kind: :data:`SCORES` (a ``(N, U)`` vector per sample: class logits, a regression, an
            embedding), :data:`MAPS` (``(N, classes, h, w)`` dense class logits, channels
            first: segmentation) or :data:`DETECTIONS` (per sample a dict of ``boxes``
            ``(D, 4)`` x0, y0, x1, y1 in input pixels, ``scores`` ``(D,)``, ``labels`` ``(D,)``).
        value: the framework tensor (or, for detections, the list of dicts of tensors).
        raw: what the model returned, untouched (what :class:`Score` functions receive).
        ops: the framework's :class:`Ops`.
        input_size: ``(H, W)`` of the input batch.
        binary: a one-unit head shown as the two scores ``[-z/2, z/2]`` (negative, positive),
            whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``.
    """

    kind: str
    value: Any
    raw: Any
    ops: Ops
    input_size: tuple[int, int]
    binary: bool = False

    @cached_property
    def array(self) -> np.ndarray:
        """The value as NumPy (scores and maps only)."""
        if self.kind == DETECTIONS:
            raise TargetError("a detector's output has no single array")
        return self.ops.numpy(self.value)

    @cached_property
    def detections(self) -> list[dict[str, np.ndarray]]:
        """Per sample, ``boxes``, ``scores`` and ``labels`` as NumPy."""
        if self.kind != DETECTIONS:
            raise TargetError("the model is not a detector: its output has no detections")
        return [{k: self.ops.numpy(d[k]) for k in ("boxes", "scores", "labels")} for d in self.value]

    @property
    def size(self) -> int:
        """The batch size ``N``."""
        return len(self.value) if self.kind == DETECTIONS else int(self.value.shape[0])

    @property
    def classes(self) -> int:
        """How many classes (or units) the output has."""
        if self.kind == DETECTIONS:
            return max([int(d["labels"].max()) + 1 for d in self.detections if d["labels"].size] + [1])
        return int(self.array.shape[1])

    @cached_property
    def probabilities(self) -> np.ndarray:
        """``(N, classes)``: softmax of scores; for maps, the share of pixels each class wins;
        for detections, each label's best detection score."""
        if self.kind == SCORES:
            from camlens.core.scores import softmax

            return softmax(self.array)
        if self.kind == MAPS:
            wins = self.array.argmax(axis=1).reshape(self.size, -1)
            counts = np.stack([np.bincount(w, minlength=self.classes) for w in wins])
            return (counts / wins.shape[1]).astype(np.float32)
        best = np.zeros((self.size, self.classes), np.float32)
        for i, d in enumerate(self.detections):
            np.maximum.at(best[i], d["labels"].astype(np.int64), d["scores"])
        return best


Scorer = Callable[[Output, np.ndarray], Any]
"""``(output, samples) -> (rows,)`` scores; ``samples[r]`` is the batch sample row ``r`` comes from."""


@dataclass(frozen=True, eq=False)
class Column:
    """One explained score, with the decisions its target froze for the batch.

    Attributes:
        kind: the target kind (``"class"``, ``"segmentation"``...).
        label: what is explained when it is not simply a class (``"similarity"``,
            ``"box 10,20,60,80"``); ``None`` for class columns.
        classes: ``(N,)`` the class each sample's score belongs to, ``-1`` where none.
        linear: the score is a pre-softmax class logit (what CAM's class weights explain).
        regions: ``(N, H, W)`` bool at the input size: the pixels a segmentation score sums.
        boxes: ``(N, 4)`` the box each sample's score is about: the given box of a
            :class:`Detection`, else the detection's own box (NaN where none matched).
        score: scores any output of the model for rows of given samples.
        index: a plain class logit (``take(value, classes)``): columns so marked are scored
            together in one gather.
    """

    kind: str
    label: str | None
    classes: np.ndarray
    score: Scorer = field(repr=False)
    linear: bool = False
    regions: np.ndarray | None = field(default=None, repr=False)
    boxes: np.ndarray | None = None
    index: bool = False


class Target(ABC):
    """A kind of target. Subclasses set the class attributes and implement :meth:`freeze`.

    Class attributes: ``kind`` (registry key), ``summary`` (one line for listings), ``outputs``
    (the :class:`Output` kinds it reads), ``cli`` (how to ask for it on the command line).
    """

    kind: ClassVar[str]
    summary: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]] = (SCORES,)
    cli: ClassVar[str] = ""

    @abstractmethod
    def freeze(self, out: Output) -> list[Column]:
        """The columns this target explains for the batch whose output is ``out``."""

    def check(self, out: Output) -> None:
        """Refuse an output this target cannot read, in one line."""
        if out.kind not in self.outputs:
            what = {SCORES: "a (N, units) score vector", MAPS: "segmentation maps (N, classes, h, w)",
                    DETECTIONS: "a detector's boxes"}
            raise TargetError(
                f"target {self!r} needs {' or '.join(what[k] for k in self.outputs)}; the model outputs {what[out.kind]}"
            )


_KINDS: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Add a target kind to the registry (a duplicate name fails at import)."""
    if cls.kind in _KINDS:
        raise TargetError(f"target kind {cls.kind!r} is already registered")
    _KINDS[cls.kind] = cls
    return cls


def target_kinds() -> list[type[Target]]:
    """Every registered target kind, in registration order."""
    return list(_KINDS.values())


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties by lower index)."""
    return np.argsort(-logits, axis=1, kind="stable")[:, : min(k, logits.shape[1])]


def _per_sample(value: int | Sequence[int] | np.ndarray, n: int, what: str) -> np.ndarray:
    """An int for every sample, or one per sample, as ``(N,)`` int64."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()  # type: ignore[union-attr]
    if isinstance(value, bool):
        raise TargetError(f"{what} must be an integer, not {value!r}")
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise TargetError(f"{what} must be an integer or one per sample: {e}") from None
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and a.size and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TargetError(f"{what} must be an integer or one integer per sample, got {value!r}"[:200])
    if a.ndim == 0:
        return np.full(n, int(a), dtype=np.int64)
    if a.ndim != 1 or a.shape[0] != n:
        raise TargetError(f"{what}: {a.shape[0] if a.ndim == 1 else a.shape} values for a batch of {n}; give one per sample")
    return a.astype(np.int64)


def _check_classes(classes: np.ndarray, out: Output, target: Target) -> None:
    bad = classes[(classes < 0) | (classes >= out.classes)]
    if bad.size:
        raise TargetError(f"target {target!r}: class index {int(bad[0])} is out of range: the model has {out.classes} classes")


def _checked_classes(target: Target, index: int | Sequence[int] | np.ndarray, out: Output) -> np.ndarray:
    """``(N,)`` class indices of a target that reads a score vector, checked against it."""
    target.check(out)
    classes = _per_sample(index, out.size, f"target {target!r}")
    _check_classes(classes, out, target)
    return classes


def _logit(classes: np.ndarray) -> Scorer:
    return lambda out, samples: out.ops.take(out.value, classes[samples][:, None])[:, 0]


def _class_columns(target: Target, out: Output, table: np.ndarray) -> list[Column]:
    """Plain class-logit columns from ``(N, K)`` class indices (segmentation and detections
    delegate to their own kinds)."""
    if out.kind == MAPS:
        return [c for k in range(table.shape[1]) for c in Segmentation(table[:, k]).freeze(out)]
    if out.kind == DETECTIONS:
        return [c for k in range(table.shape[1]) for c in _best_of_label(out, table[:, k])]
    _check_classes(table, out, target)
    return [Column("class", None, table[:, k].copy(), _logit(table[:, k].copy()), linear=True, index=True)
            for k in range(table.shape[1])]


@register
@dataclass(frozen=True)
class Class(Target):
    """The pre-softmax score (logit) of class ``index``: one index for every sample, or one per
    sample. On a segmentation model it is :class:`Segmentation` of that class; on a detector,
    the best-scoring detection of that label. For a one-unit head (binary or regression), class
    1 (``"positive"``) is ``z/2`` and class 0 (``"negative"``) is ``-z/2``: what raises the
    output, and what lowers it."""

    index: int | Sequence[int] | np.ndarray

    kind: ClassVar[str] = "class"
    summary: ClassVar[str] = "pre-softmax score of a class (any head; a one-unit head: positive/negative)"
    outputs: ClassVar[tuple[str, ...]] = (SCORES, MAPS, DETECTIONS)
    cli: ClassVar[str] = "INDEX, NAME (positive, negative for a one-unit head)"

    def freeze(self, out: Output) -> list[Column]:
        self.check(out)
        return _class_columns(self, out, _per_sample(self.index, out.size, f"target {self!r}")[:, None])

    def __repr__(self) -> str:
        return f"Class({_short(self.index)})"


@register
@dataclass(frozen=True)
class Top(Target):
    """The ``k`` best classes of each sample, best first (on a segmentation model, the classes
    winning most pixels; on a detector, the ``k`` highest-scoring detections)."""

    k: int = 1

    kind: ClassVar[str] = "top"
    summary: ClassVar[str] = "the k best classes of each sample (the default is top-1)"
    outputs: ClassVar[tuple[str, ...]] = (SCORES, MAPS, DETECTIONS)
    cli: ClassVar[str] = "top-K"

    def freeze(self, out: Output) -> list[Column]:
        self.check(out)
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise TargetError(f"target {self!r}: k must be a positive integer")
        if out.kind == DETECTIONS:
            return _top_detections(out, int(self.k))
        return _class_columns(self, out, top_k(out.probabilities if out.kind == MAPS else out.array, int(self.k)))

    def __repr__(self) -> str:
        return f"Top({self.k})"


@register
@dataclass(frozen=True)
class AllClasses(Target):
    """Every class of the model, in class order (a class-grid figure on the command line)."""

    kind: ClassVar[str] = "all"
    summary: ClassVar[str] = "every class, in class order"
    outputs: ClassVar[tuple[str, ...]] = (SCORES, MAPS)
    cli: ClassVar[str] = "all"

    def freeze(self, out: Output) -> list[Column]:
        self.check(out)
        return _class_columns(self, out, np.tile(np.arange(out.classes, dtype=np.int64), (out.size, 1)))

    def __repr__(self) -> str:
        return "AllClasses()"


@register
@dataclass(frozen=True)
class Probability(Target):
    """The softmax probability of class ``index`` (pytorch-grad-cam's
    ``ClassifierOutputSoftmaxTarget``): raising it also means lowering the other classes. For
    a one-unit head it is ``sigmoid(z)`` (class 1) or ``1 - sigmoid(z)`` (class 0)."""

    index: int | Sequence[int] | np.ndarray

    kind: ClassVar[str] = "probability"
    summary: ClassVar[str] = "softmax probability of a class"
    cli: ClassVar[str] = "prob:CLASS"

    def freeze(self, out: Output) -> list[Column]:
        classes = _checked_classes(self, self.index, out)
        return [Column(self.kind, None, classes,
                       lambda o, s: o.ops.take(o.ops.softmax(o.value), classes[s][:, None])[:, 0])]

    def __repr__(self) -> str:
        return f"Probability({_short(self.index)})"


@register
@dataclass(frozen=True)
class Sigmoid(Target):
    """``sigmoid`` of class ``index``'s logit, for multi-label heads (each class its own yes/no).
    For a one-unit head, class 1 is ``sigmoid(z)`` and class 0 ``sigmoid(-z)``."""

    index: int | Sequence[int] | np.ndarray

    kind: ClassVar[str] = "sigmoid"
    summary: ClassVar[str] = "sigmoid of a class logit (multi-label heads)"
    cli: ClassVar[str] = "sigmoid:CLASS"

    def freeze(self, out: Output) -> list[Column]:
        classes = _checked_classes(self, self.index, out)
        scale = 2.0 if out.binary else 1.0  # the binary scores are +-z/2

        def score(o: Output, s: np.ndarray) -> Any:
            return o.ops.sigmoid(o.ops.take(o.value, classes[s][:, None])[:, 0] * scale)

        return [Column(self.kind, None, classes, score)]

    def __repr__(self) -> str:
        return f"Sigmoid({_short(self.index)})"


@register
@dataclass(frozen=True)
class Finer(Target):
    r"""Finer-CAM's score (Zhang et al., CVPR 2025, "Finer-CAM: Spotting the Difference Reveals
    Finer Details for Visual Explanation", arXiv:2501.11309), as the authors' code defines it:
    class ``index``'s logit against the ``references`` classes whose logits are nearest to it,

    .. math:: J = \frac{\sum_r p_r (z_c - \alpha z_r)}{\sum_r p_r + 10^{-9}}, \qquad p = \mathrm{softmax}(z)

    (:math:`p` is differentiated through, as in their code). Any method explains it; with
    Grad-CAM it is the paper's Finer-CAM. ``alpha=0`` is the plain logit's explanation.
    ``index=None`` takes each sample's top class. The reference classes are frozen on the
    batch: masked copies are scored against the same classes.
    """

    index: int | Sequence[int] | np.ndarray | None = None
    references: int = 3
    alpha: float = 1.0

    kind: ClassVar[str] = "finer"
    summary: ClassVar[str] = "Finer-CAM: a class's logit against its nearest classes' (any method)"
    cli: ClassVar[str] = "finer, finer:CLASS"

    def freeze(self, out: Output) -> list[Column]:
        self.check(out)
        z = out.array
        n = out.size
        classes = z.argmax(axis=1) if self.index is None else _checked_classes(self, self.index, out)
        if isinstance(self.references, bool) or not isinstance(self.references, (int, np.integer)) or self.references < 1:
            raise TargetError(f"target {self!r}: references must be a positive integer")
        if out.classes < 2 or out.binary:
            raise TargetError(f"target {self!r} compares a class with other classes; the model has {out.classes}")
        distance = np.abs(z - z[np.arange(n), classes][:, None])
        distance[np.arange(n), classes] = np.inf
        refs = np.argsort(distance, axis=1, kind="stable")[:, : min(int(self.references), out.classes - 1)]
        alpha = float(self.alpha)

        def score(o: Output, s: np.ndarray) -> Any:
            p = o.ops.take(o.ops.softmax(o.value), refs[s])
            gap = o.ops.take(o.value, classes[s][:, None]) - o.ops.take(o.value, refs[s]) * alpha
            return o.ops.sum(p * gap, (1,)) / (o.ops.sum(p, (1,)) + 1e-9)

        return [Column(self.kind, None, classes.astype(np.int64), score)]

    def __repr__(self) -> str:
        index = "top class" if self.index is None else _short(self.index)
        return f"Finer({index}, references={self.references}, alpha={self.alpha:g})"


@register
@dataclass(frozen=True, eq=False)
class Score(Target):
    """Any score: ``fn(output)`` returns ``(N,)`` (or ``(N, K)``) scores in the framework's own
    tensors, from the model's raw output (a tensor, a tuple, a dict, a ``ModelOutput``; for a
    Keras model, the chosen output before its final softmax/sigmoid). It must work row by row:
    camlens may call it on other batches of the same model (masked copies of the inputs)."""

    fn: Callable[[Any], Any]
    name: str = "score"

    kind: ClassVar[str] = "score"
    summary: ClassVar[str] = "fn(output) -> (N,) scores: any function of the output (the escape hatch)"
    outputs: ClassVar[tuple[str, ...]] = (SCORES, MAPS, DETECTIONS)
    cli: ClassVar[str] = "(Python API only)"

    def freeze(self, out: Output) -> list[Column]:
        if not callable(self.fn):
            raise TargetError(f"target {self!r}: fn must be callable")
        shape = np.shape(out.ops.numpy(self._call(out)))
        n = out.size
        if len(shape) not in (1, 2) or shape[0] != n:
            raise TargetError(f"target {self!r} returned shape {tuple(shape)}; expected ({n},) scores, one per sample")
        none = np.full(n, -1, dtype=np.int64)
        if len(shape) == 1:
            return [Column(self.kind, self.name, none, lambda o, s: self._call(o))]
        return [Column(self.kind, f"{self.name}[{j}]", none, self._part(j)) for j in range(shape[1])]

    def _part(self, j: int) -> Scorer:
        return lambda o, s: self._call(o)[:, j]

    def _call(self, out: Output) -> Any:
        try:
            return self.fn(out.raw)
        except TargetError:
            raise
        except Exception as e:  # the user's function: name it and its error, in one line
            raise TargetError(f"target {self!r} failed: {type(e).__name__}: {e}"[:300]) from None

    def __repr__(self) -> str:
        return f"Score({getattr(self.fn, '__name__', type(self.fn).__name__)})"


@register
@dataclass(frozen=True, eq=False)
class Segmentation(Target):
    """The logits of class ``index`` summed over a region (pytorch-grad-cam's
    ``SemanticSegmentationTarget``): ``sum_(h,w) mask[h, w] * y[index, h, w]``. ``mask`` is at
    the input's size, shared ``(H, W)`` or per sample ``(N, H, W)`` (bool or weights), and is
    resized to the output's resolution (nearest); by default, the pixels where the class wins.
    A class that wins no pixel gives an all-zero map. ``index=None`` takes, per sample, the
    class that wins most pixels (inside the mask, when one is given)."""

    index: int | Sequence[int] | np.ndarray | None = None
    mask: np.ndarray | None = None

    kind: ClassVar[str] = "segmentation"
    summary: ClassVar[str] = "a class's logits summed over its predicted region (or a mask)"
    outputs: ClassVar[tuple[str, ...]] = (MAPS,)
    cli: ClassVar[str] = "CLASS (+ --mask FILE) on a segmentation model"

    def freeze(self, out: Output) -> list[Column]:
        self.check(out)
        n = out.size
        h, w = out.array.shape[2:]
        mask = self._mask(out)
        if self.index is None:
            wins = out.array.argmax(axis=1)
            inside = np.ones((n, h, w), bool) if mask is None else _resize_nearest(mask, (h, w)) > 0
            classes = np.array([np.bincount(wins[i][inside[i]], minlength=out.classes).argmax() for i in range(n)])
        else:
            classes = _per_sample(self.index, n, f"target {self!r}")
        _check_classes(classes, out, self)
        if mask is None:
            small = out.array.argmax(axis=1) == classes[:, None, None]
            weights = small.astype(np.float32)
            regions = _resize_nearest(small, out.input_size)
        else:
            weights = _resize_nearest(mask, (h, w))
            regions = mask > 0
        weights_ = np.ascontiguousarray(weights)

        def score(o: Output, s: np.ndarray) -> Any:
            chosen = o.ops.take(o.value, classes[s][:, None])[:, 0]  # (rows, h, w)
            if tuple(int(d) for d in chosen.shape[1:]) != weights_.shape[1:]:
                raise TargetError(f"target {self!r}: the output's resolution changed between passes")
            return o.ops.sum(chosen * o.ops.constant(weights_[s]), (1, 2))

        return [Column(self.kind, None, classes, score, regions=regions)]

    def _mask(self, out: Output) -> np.ndarray | None:
        """The mask as ``(N, H, W)`` float32 at the input size, checked."""
        if self.mask is None:
            return None
        m = np.asarray(self.mask.detach().cpu().numpy() if hasattr(self.mask, "detach") else self.mask)
        n = out.size
        if m.ndim == 2:
            m = np.broadcast_to(m, (n, *m.shape))
        if m.ndim != 3 or m.shape[0] != n or tuple(m.shape[1:]) != tuple(out.input_size):
            raise TargetError(
                f"target {self!r}: mask of shape {tuple(np.shape(self.mask))} does not fit; give (H, W) or "
                f"(N, H, W) at the input's size {tuple(out.input_size)}"
            )
        m = m.astype(np.float32)
        if not np.all(np.isfinite(m)) or not m.reshape(n, -1).any(axis=1).all():
            raise TargetError(f"target {self!r}: the mask is empty (or not finite)")
        return m

    def __repr__(self) -> str:
        index = "" if self.index is None else _short(self.index)
        return f"Segmentation({index}{', mask' if self.mask is not None else ''})"


def _resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, h, w)`` resized to ``(N, *size)`` by nearest neighbour (pixel centres)."""
    h, w = a.shape[1:]
    if (h, w) == tuple(size):
        return a
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return a[:, rows][:, :, cols]


@register
@dataclass(frozen=True, eq=False)
class Similarity(Target):
    """Cosine similarity of the model's output vector (an embedding: timm ``num_classes=0``, a
    headless ResNet, a CLIP-like image tower) to ``embedding``, ``(D,)`` shared or ``(N, D)``
    per sample: where this image looks like the one the embedding came from."""

    embedding: Any
    name: str = "similarity"

    kind: ClassVar[str] = "similarity"
    summary: ClassVar[str] = "cosine similarity of an embedding to a reference embedding"
    cli: ClassVar[str] = "similar-to:IMAGE"

    def freeze(self, out: Output) -> list[Column]:
        self.check(out)
        ref = np.asarray(self.embedding.detach().float().cpu().numpy() if hasattr(self.embedding, "detach") else self.embedding,
                         dtype=np.float32)
        n, d = out.array.shape
        if ref.ndim == 1:
            ref = np.broadcast_to(ref, (n, ref.shape[0]))
        if ref.ndim != 2 or ref.shape != (n, d):
            raise TargetError(f"target {self!r}: reference embedding of shape {tuple(np.shape(self.embedding))} does not fit "
                              f"the model's ({d},) output; give ({d},) or ({n}, {d})")
        norms = np.linalg.norm(ref, axis=1, keepdims=True)
        if not np.all(np.isfinite(ref)) or np.any(norms == 0):
            raise TargetError(f"target {self!r}: the reference embedding is zero or not finite")
        unit = np.ascontiguousarray(ref / norms)

        def score(o: Output, s: np.ndarray) -> Any:
            x = o.value
            length = o.ops.sqrt(o.ops.clip(o.ops.sum(x * x, (1,)), 1e-24))
            return o.ops.sum(x * o.ops.constant(unit[s]), (1,)) / length

        return [Column(self.kind, self.name, np.full(n, -1, dtype=np.int64), score)]

    def __repr__(self) -> str:
        return f"Similarity({self.name})"


@register
@dataclass(frozen=True, eq=False)
class Detection(Target):
    """For a detector: per given box, ``IoU + score`` of the detection that best matches it
    (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` terms, one column per box instead of
    their sum). The match is the detection of the box's label (any label when ``labels`` is
    None) with the highest IoU, at least ``iou``; pytorch-grad-cam instead takes the highest
    IoU over every label and drops the box when that one has another label. A box nothing
    matches gives an all-zero map. ``boxes`` are ``(B, 4)`` x0, y0, x1, y1 in input pixels,
    shared by the batch, or a sequence of N such arrays."""

    boxes: Any
    labels: Sequence[int] | np.ndarray | None = None
    iou: float = 0.5

    kind: ClassVar[str] = "detection"
    summary: ClassVar[str] = "IoU + score of the detection best matching a box (detectors)"
    outputs: ClassVar[tuple[str, ...]] = (DETECTIONS,)
    cli: ClassVar[str] = "box:x0,y0,x1,y1[:LABEL]"

    def freeze(self, out: Output) -> list[Column]:
        self.check(out)
        n = out.size
        try:
            raw = [np.asarray(b, dtype=np.float64) for b in self.boxes] if _is_ragged(self.boxes) else None
            boxes = np.stack(raw) if raw is not None else np.asarray(self.boxes, dtype=np.float64)
        except (TypeError, ValueError):
            raise TargetError(f"target {self!r}: boxes must be (B, 4) numbers, or N arrays of (B, 4) with the same B") from None
        if boxes.ndim == 1:
            boxes = boxes[None]
        if boxes.ndim == 2:
            boxes = np.broadcast_to(boxes, (n, *boxes.shape))
        if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
            raise TargetError(f"target {self!r}: boxes must be (B, 4) or N arrays of (B, 4), got {np.shape(self.boxes)}")
        if not np.all(np.isfinite(boxes)) or np.any(boxes[..., 2:] <= boxes[..., :2]):
            raise TargetError(f"target {self!r}: each box is x0, y0, x1, y1 with x1 > x0 and y1 > y0")
        count = boxes.shape[1]
        labels = None if self.labels is None else np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if labels is not None and labels.shape[0] not in (1, count):
            raise TargetError(f"target {self!r}: {labels.shape[0]} labels for {count} boxes; give one per box")
        labels = None if labels is None else np.broadcast_to(labels, (count,))
        columns = []
        for j in range(count):
            label = None if labels is None else int(labels[j])
            wanted = np.full(n, -1 if label is None else label, dtype=np.int64)
            match = np.array([_match(boxes[i, j], det, int(wanted[i]), self.iou) for i, det in enumerate(out.detections)])
            columns.append(_detection_column(out, boxes[:, j], match, wanted, self.iou, f"box {_box_text(boxes[0, j])}"))
        return columns

    def __repr__(self) -> str:
        return f"Detection({len(self.boxes) if hasattr(self.boxes, '__len__') else '?'} boxes)"


def _is_ragged(boxes: Any) -> bool:
    return isinstance(boxes, (list, tuple)) and bool(boxes) and all(np.ndim(b) == 2 for b in boxes)


def _box_text(box: np.ndarray) -> str:
    return ",".join(f"{v:g}" for v in np.round(box, 1))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with ``(D, 4)`` boxes."""
    if boxes.size == 0:
        return np.zeros(0)
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return np.asarray(inter / np.maximum(union, 1e-12))


def _match(reference: np.ndarray, det: dict[str, np.ndarray], label: int, iou: float) -> int:
    """The detection of ``label`` (any when -1) with the highest IoU >= ``iou`` with
    ``reference``, or -1."""
    ious = _iou(reference, det["boxes"])
    ok = ious >= iou
    if label >= 0:
        ok &= det["labels"].astype(np.int64) == label
    return int(np.argmax(np.where(ok, ious, -1.0))) if ok.any() else -1


def _detection_column(out: Output, given: np.ndarray | None, match: np.ndarray, labels: np.ndarray, iou: float,
                      name: str) -> Column:
    """A column scoring, per sample, detection ``match[i]``: ``IoU(given, box) + score`` (just
    the score when no box was given); 0 where nothing matched. On another output of the model
    (a perturbed copy of the batch) the detection is found again by the same rule: the best
    IoU, at least ``iou``, with the given (or first matched) box, among the wanted label."""
    dets = out.detections
    classes = np.array([int(dets[i]["labels"][m]) if m >= 0 else -1 for i, m in enumerate(match)], dtype=np.int64)
    found = np.array([dets[i]["boxes"][m] if m >= 0 else np.full(4, np.nan) for i, m in enumerate(match)], np.float64)
    reference = np.asarray(given if given is not None else found, dtype=np.float64)
    wanted = np.where(labels >= 0, labels, classes) if given is None else labels

    def score(o: Output, samples: np.ndarray) -> Any:
        values = []
        for r, i in enumerate(samples):
            if o is out:
                m = int(match[i])
            else:
                m = _match(reference[i], o.detections[r], int(wanted[i]), iou) if not np.isnan(reference[i]).any() else -1
            if m < 0:
                values.append(o.ops.constant(np.zeros((), np.float32)))
                continue
            det = o.value[r]
            value = det["scores"][m]
            if given is not None:
                value = value + _iou_tensor(o.ops, given[i], det["boxes"][m])
            values.append(value)
        return o.ops.stack(values)

    return Column("detection", name, classes, score, boxes=reference.astype(np.float32))


def _iou_tensor(ops: Ops, box: np.ndarray, other: Any) -> Any:
    """Differentiable IoU of a fixed box with a detection's box tensor ``(4,)``."""
    x0 = ops.clip(other[0], low=float(box[0]))
    y0 = ops.clip(other[1], low=float(box[1]))
    x1 = ops.clip(other[2], high=float(box[2]))
    y1 = ops.clip(other[3], high=float(box[3]))
    inter = ops.clip(x1 - x0, low=0.0) * ops.clip(y1 - y0, low=0.0)
    area = (other[2] - other[0]) * (other[3] - other[1])
    return inter / (area + float((box[2] - box[0]) * (box[3] - box[1])) - inter)


def _best_of_label(out: Output, labels: np.ndarray) -> list[Column]:
    """Per sample, the best-scoring detection of ``labels[i]``."""
    match = np.full(out.size, -1, dtype=np.int64)
    for i, d in enumerate(out.detections):
        ok = d["labels"].astype(np.int64) == labels[i]
        if ok.any():
            match[i] = int(np.argmax(np.where(ok, d["scores"], -np.inf)))
    return [_detection_column(out, None, match, labels, 0.5, "detection")]


def _top_detections(out: Output, k: int) -> list[Column]:
    """The ``k`` highest-scoring detections of each sample (a column of 0 where fewer)."""
    columns = []
    for j in range(k):
        match = np.array([int(np.argsort(-d["scores"], kind="stable")[j]) if d["scores"].size > j else -1
                          for d in out.detections], dtype=np.int64)
        columns.append(_detection_column(out, None, match, np.full(out.size, -1, np.int64), 0.5, f"detection {j + 1}"))
    return columns


def _short(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."


Targets = Target | Sequence[Target] | int | str | Sequence[int] | Sequence[Sequence[int]] | np.ndarray | \
    Callable[[np.ndarray], object] | None


def as_targets(spec: Targets, out: Output, top: int | None = None) -> list[Target]:
    """A target spec as target kinds.

    ``None`` -> :class:`Top` (``top`` or 1); ``"all"`` -> :class:`AllClasses`; ``"top-k"``;
    an int -> :class:`Class`; a sequence of N ints -> one class per sample; an ``(N, K)``
    array -> K classes per sample; a :class:`Target` or a sequence of them; a callable
    (not a :class:`Target`) -> called with the output's ``(N, units)`` NumPy scores, returning
    any of the above. Framework tensors are accepted wherever arrays are.
    """
    if isinstance(spec, Target):
        return [spec]
    if callable(spec):
        if out.kind != SCORES:
            raise TargetError(f"a target function receives (N, classes) scores; this model outputs {out.kind} "
                              "(use a camlens.targets kind)")
        try:
            spec = spec(out.array)  # type: ignore[assignment]
        except CamlensError:
            raise
        except Exception as exc:
            raise TargetError(f"the target function failed: {type(exc).__name__}: {exc}"[:300]) from exc
        if callable(spec) and not isinstance(spec, Target):
            raise TargetError("a target function must return targets, not another function")
        return as_targets(spec, out, top)
    if spec is None:
        return [Top(top or 1)]
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == ALL:
            return [AllClasses()]
        count = text.removeprefix("top").lstrip("-")
        if text.startswith("top") and (not count or count.isdigit()) and int(count or 1) > 0:
            return [Top(int(count or 1))]
        raise TargetError(f"unknown target {spec!r}; a class index, 'top-K', {ALL!r}, or a camlens.targets kind")
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, Target) for s in spec):
        return list(spec)
    if hasattr(spec, "detach"):
        spec = spec.detach().cpu().numpy()  # type: ignore[union-attr]
    try:
        t = np.asarray(spec)
    except (TypeError, ValueError):
        raise TargetError(f"cannot read targets from {type(spec).__name__}; mix no target kinds with indices") from None
    if t.dtype == object or (t.size and t.dtype.kind not in "iuf"):
        raise TargetError(f"cannot read targets from {_short(spec)}; give indices, or camlens.targets kinds only")
    n = out.size
    if t.ndim == 0:
        return [Class(t)]
    if t.ndim == 1:
        if t.shape[0] != n:
            raise TargetError(f"{t.shape[0]} targets for a batch of {n}; give one per sample")
        return [Class(t)]
    if t.ndim != 2 or t.shape[0] != n:
        raise TargetError(f"targets of shape {tuple(t.shape)} do not fit a batch of {n}")
    return [Class(t[:, k]) for k in range(t.shape[1])]


def resolve(spec: Targets, out: Output, top: int | None = None) -> list[Column]:
    """The columns a target spec explains for the batch whose output is ``out`` (see
    :func:`as_targets`); columns frozen before, on a batch of the same size, are kept as they
    are (copies of a batch explain the batch's own decisions).

    Raises:
        TargetError: the spec explains nothing (no boxes, a score of width 0).
    """
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(c, Column) for c in spec):
        if any(len(c.classes) != out.size for c in spec):
            raise TargetError(f"frozen target columns are for a batch of {len(spec[0].classes)}, not {out.size}")
        return list(spec)
    columns = [c for target in as_targets(spec, out, top) for c in target.freeze(out)]
    if not columns:
        raise TargetError("the targets explain nothing (no class, box or score given)")
    return columns


def score(columns: Sequence[Column], out: Output, samples: np.ndarray | None = None, probability: bool = False) -> Any:
    """``(rows, K)`` scores of ``columns`` on ``out`` (rows of ``samples``; the batch itself
    by default). Adjacent plain class columns are gathered in one operation; with
    ``probability`` they are read as softmax probabilities instead of logits (other kinds of
    score are unchanged)."""
    s = np.arange(out.size) if samples is None else np.asarray(samples, dtype=np.int64)
    parts: list[Any] = []
    run: list[Column] = []
    plain = out.ops.softmax(out.value) if probability and out.kind == SCORES else out.value

    def flush() -> None:
        if run:
            parts.append(out.ops.take(plain, np.stack([c.classes for c in run], axis=1)[s]))
            run.clear()

    for column in columns:
        if column.index and out.kind == SCORES:
            run.append(column)
            continue
        flush()
        parts.append(column.score(out, s)[:, None])
    flush()
    if not parts:
        return out.ops.constant(np.zeros((len(s), 0), np.float32))
    return parts[0] if len(parts) == 1 else out.ops.concat(parts)


def score_rows(columns: Sequence[Column] | None, chosen: np.ndarray | None, n: int, count: int, max_batch: int,
               forward: Callable[[slice], Output], samples: np.ndarray | None = None,
               probability: bool = False) -> np.ndarray:
    """``(S, M, K)`` scores of ``count`` variants of each of ``S`` samples, run ``max_batch``
    rows at a time: ``forward(rows)`` returns the model's output for a slice of the ``S * M``
    rows (row ``r`` is a variant of sample ``samples[r // count]``; ``samples`` defaults to the
    ``n`` of the batch). With ``samples`` given, a slice never spans two samples. ``chosen``
    picks columns (all by default); without ``columns``, every class of each output is scored;
    ``probability`` reads class columns as probabilities (see :func:`score`). The probe loop
    both adapters share."""
    picked = columns if chosen is None or columns is None else [columns[int(c)] for c in chosen]
    which = np.arange(n) if samples is None else np.asarray(samples, dtype=np.int64)
    total = len(which) * count
    span = total if samples is None else count  # no slice crosses a span: with samples, one sample's rows
    step = min(max_batch, span)
    out: list[np.ndarray] = []
    for rows in (slice(start, min(start + step, first + span))
                 for first in range(0, total, span) for start in range(first, first + span, step)):
        output = forward(rows)
        if picked is None:  # every class of each output
            scores = score(resolve(ALL, output), output, probability=probability)
        else:
            scores = score(picked, output, which[np.arange(rows.start, rows.stop) // count], probability)
        out.append(output.ops.numpy(scores))
    values = np.concatenate(out)
    return values.reshape(len(which), count, values.shape[1])


def classes_of(columns: Sequence[Column]) -> np.ndarray:
    """``(N, K)`` class index per sample and column (``-1`` where a column has none)."""
    return np.stack([c.classes for c in columns], axis=1) if columns else np.zeros((0, 0), np.int64)


__all__ = [
    "ALL",
    "AllClasses",
    "Class",
    "Column",
    "Detection",
    "Finer",
    "Ops",
    "Output",
    "Probability",
    "Score",
    "Segmentation",
    "Sigmoid",
    "Similarity",
    "Target",
    "Targets",
    "Top",
    "as_targets",
    "classes_of",
    "resolve",
    "score",
    "score_rows",
    "target_kinds",
    "top_k",
]
