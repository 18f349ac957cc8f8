"""Faithfulness of saliency maps to a classifier: confidence change under masking, deletion and insertion.

Everything here is framework-free (NumPy and SciPy only). The classifier is a black box::

    predict(batch: float32 array of preprocessed inputs) -> (n, classes) probabilities

so softmax (or sigmoid) must already be applied; the inputs are in the model's preprocessed space
(normalised, as fed to the network), with ``layout`` ``"NCHW"`` or ``"NHWC"``. Maps are given at
the input's spatial resolution, ``(N, H, W)`` (one per sample) or ``(H, W)`` (shared by the batch),
and for :func:`confidence_change` min-max normalised to [0, 1] by the caller.

The functions never write into their inputs, and hand ``predict`` only arrays of their own, so a
``predict`` that modifies its argument cannot corrupt the caller's data either.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from camlens.errors import CamlensError

Predict: TypeAlias = Callable[[np.ndarray], np.ndarray]
"""The classifier: a float32 batch of preprocessed inputs -> ``(n, classes)`` probabilities."""

Baseline: TypeAlias = str | float | np.ndarray | Callable[[np.ndarray], np.ndarray]
"""``"zero"``, ``"blur"``, a value or array broadcastable to the input, or a callable of the input batch returning one."""

Targets: TypeAlias = int | Sequence[int] | np.ndarray
"""One class index for the whole batch, or one per sample."""

LAYOUTS = ("NCHW", "NHWC")

RISE_BLUR_SIZE = 11
"""Side of RISE's blur kernel (``klen`` in Petsiuk et al.'s ``Evaluation.ipynb``)."""

RISE_BLUR_SIGMA = 5.0
"""Gaussian sigma RISE's blur kernel is built with (``ksig``)."""


def _channel_axis(layout: str) -> int:
    """Axis of the channels in a 4-D batch of ``layout``."""
    if layout == "NCHW":
        return 1
    if layout == "NHWC":
        return 3
    raise CamlensError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def _spatial_axes(layout: str) -> tuple[int, int]:
    """Axes ``(H, W)`` of a 4-D batch of ``layout``."""
    return (2, 3) if _channel_axis(layout) == 1 else (1, 2)


def _as_batch(x: np.ndarray, layout: str) -> np.ndarray:
    """``x`` as a non-empty 4-D float32 batch (a view when it already is one)."""
    _channel_axis(layout)
    batch = np.asarray(x, dtype=np.float32)
    if batch.ndim != 4 or 0 in batch.shape:
        raise CamlensError(f"x must be a non-empty 4-D {layout} batch, got shape {batch.shape}")
    return batch


def _as_maps(maps: np.ndarray, x: np.ndarray, layout: str) -> np.ndarray:
    """``maps`` as a read-only, finite float64 ``(N, H, W)`` view matching the batch ``x`` (an ``(H, W)`` map is repeated)."""
    h_axis, w_axis = _spatial_axes(layout)
    size = (x.shape[h_axis], x.shape[w_axis])
    values = np.asarray(maps, dtype=np.float64)
    if values.shape not in (size, (x.shape[0], *size)):
        expected = f"{size} or {(x.shape[0], *size)}"
        raise CamlensError(f"maps must have shape {expected} for x of shape {x.shape} ({layout}), got {values.shape}")
    if not np.isfinite(values).all():
        raise CamlensError("maps must be finite (no NaN or infinity)")
    return np.broadcast_to(values, (x.shape[0], *size))


def _as_targets(targets: Targets, n: int) -> np.ndarray:
    """``targets`` as ``n`` non-negative class indices."""
    values = np.asarray(targets)
    if not np.issubdtype(values.dtype, np.integer):
        raise CamlensError(f"targets must be an integer or integers, got dtype {values.dtype}")
    if values.ndim == 0:
        values = np.full(n, values)
    if values.shape != (n,):
        raise CamlensError(f"targets must be one integer or {n} of them (one per sample), got shape {values.shape}")
    if (values < 0).any():
        raise CamlensError(f"targets must be non-negative class indices, got {values.min()}")
    return values.astype(np.intp)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise CamlensError(f"{name} must be a positive integer, got {value!r}")


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _target_scores(predict: Predict, batch: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``predict(batch)[i, targets[i]]`` for every row, as float64, after checking the output's shape."""
    probabilities = np.asarray(predict(batch))
    if probabilities.ndim != 2 or probabilities.shape[0] != batch.shape[0]:
        n = batch.shape[0]
        raise CamlensError(f"predict must return (n, classes) probabilities for n = {n} inputs, got shape {probabilities.shape}")
    if targets.max() >= probabilities.shape[1]:
        raise CamlensError(f"target class {targets.max()} is out of range for {probabilities.shape[1]} classes")
    return probabilities[np.arange(batch.shape[0]), targets].astype(np.float64)


def apply_mask(x: np.ndarray, mask: np.ndarray, layout: str) -> np.ndarray:
    """Return ``x * mask``, the mask broadcast over the channels.

    Args:
        x: ``(N, C, H, W)`` (``layout="NCHW"``) or ``(N, H, W, C)`` (``layout="NHWC"``) batch,
            converted to float32.
        mask: ``(N, H, W)`` (one mask per sample) or ``(H, W)`` (one for the whole batch); cast to
            float32 before the product, as torchcam and pytorch-grad-cam multiply float32 tensors.
        layout: ``"NCHW"`` or ``"NHWC"``.

    Returns:
        A new float32 array shaped like ``x``; the inputs are left untouched.
    """
    batch = _as_batch(x, layout)
    masks = _as_maps(mask, batch, layout).astype(np.float32)
    return batch * np.expand_dims(masks, _channel_axis(layout))


def confidence_change(
    predict: Predict,
    x: np.ndarray,
    maps: np.ndarray,
    targets: Targets,
    layout: str,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-sample terms of Average Drop and Increase in Confidence.

    From Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep
    Convolutional Networks", WACV 2018, Sec. 6.1. For sample :math:`i` with target class :math:`c`,
    :math:`Y_i = p_c(x_i)` is the probability on the input and :math:`O_i = p_c(x_i \odot M_i)` the
    probability on the input multiplied element-wise by its map (in the preprocessed input space,
    the map shared by all channels, as torchcam's ``ClassificationMetric`` and pytorch-grad-cam's
    ``CamMultImageConfidenceChange`` do). Then

    .. math::

        \mathrm{drop}_i = \frac{\max(0,\ Y_i - O_i)}{Y_i}, \qquad
        \mathrm{increase}_i = [\,O_i > Y_i\,],

    and the paper's Average Drop is :math:`100 \cdot \operatorname{mean}_i \mathrm{drop}_i` (%),
    its Increase in Confidence :math:`100 \cdot \operatorname{mean}_i \mathrm{increase}_i` (%); lower
    and higher are better, respectively. When :math:`Y_i = 0` there is no confidence to lose:
    probabilities are non-negative, so the numerator :math:`\max(0, 0 - O_i)` is 0 as well, and
    :math:`\mathrm{drop}_i` is defined as 0 (torchcam instead divides by :math:`Y_i + 10^{-7}`,
    which differs from the exact ratio by a relative :math:`10^{-7}/Y_i`).

    Args:
        predict: the classifier, ``(n, ...)`` float32 preprocessed batch -> ``(n, classes)`` probabilities.
        x: ``(N, C, H, W)`` or ``(N, H, W, C)`` preprocessed inputs (converted to float32).
        maps: ``(N, H, W)`` or ``(H, W)`` maps in [0, 1] at the input resolution.
        targets: the class :math:`c`: one index for all samples, or ``N`` of them.
        layout: ``"NCHW"`` or ``"NHWC"``.
        batch_size: most inputs handed to ``predict`` at once; the N originals and the N masked
            inputs are both scored in batches of this size.

    Returns:
        ``(drop, increase)``: float64 drop fractions in [0, 1] and boolean increase indicators, both ``(N,)``.
    """
    batch = _as_batch(x, layout)
    masks = _as_maps(maps, batch, layout)
    if masks.min() < 0 or masks.max() > 1:
        raise CamlensError(f"maps must be min-max normalised to [0, 1], got values in [{masks.min():g}, {masks.max():g}]")
    classes = _as_targets(targets, batch.shape[0])
    _check_positive("batch_size", batch_size)
    original = np.empty(batch.shape[0])
    masked = np.empty(batch.shape[0])
    for rows in _chunks(batch.shape[0], batch_size):
        original[rows] = _target_scores(predict, batch[rows].copy(), classes[rows])
        masked[rows] = _target_scores(predict, apply_mask(batch[rows], masks[rows], layout), classes[rows])
    drop = np.divide(np.maximum(original - masked, 0.0), original, out=np.zeros_like(original), where=original > 0)
    return drop, masked > original


def rise_blur(x: np.ndarray, layout: str) -> np.ndarray:
    """RISE's insertion substrate: each channel blurred by RISE's 11 x 11 kernel, zero-padded.

    Petsiuk et al.'s evaluation code (``gkern(klen=11, nsig=5)`` then ``conv2d(x, kern, padding=5)``)
    builds the kernel by Gaussian-filtering an 11 x 11 Dirac delta with sigma 5 using SciPy's
    defaults (``mode="reflect"``, ``truncate=4``, i.e. radius 20): the tails beyond the 11 x 11
    window are folded back in, so the kernel sums to 1 and is much flatter than a Gaussian truncated
    at radius 5 (its 1-D profile runs from 0.088 at the ends to 0.094 at the centre). It is separable,
    the outer product of that 1-D profile with itself, and is applied here the same way: as a
    correlation along H then W (``scipy.ndimage.correlate1d``, float64), with zero padding
    (``mode="constant"``, ``cval=0``) as ``conv2d(padding=5)`` does. Zero is the dataset mean colour
    in the preprocessed space, so borders fade towards it, exactly as in RISE.

    Args:
        x: ``(N, C, H, W)`` or ``(N, H, W, C)`` preprocessed inputs.
        layout: ``"NCHW"`` or ``"NHWC"``.

    Returns:
        The blurred batch, float32, shaped like ``x``.
    """
    blurred = _as_batch(x, layout).astype(np.float64)
    delta = np.zeros(RISE_BLUR_SIZE)
    delta[RISE_BLUR_SIZE // 2] = 1.0
    kernel = ndimage.gaussian_filter1d(delta, RISE_BLUR_SIGMA)
    for axis in _spatial_axes(layout):
        blurred = ndimage.correlate1d(blurred, kernel, axis=axis, mode="constant", cval=0.0)
    return blurred.astype(np.float32)


def _baseline(spec: Baseline, x: np.ndarray, layout: str) -> np.ndarray:
    """The substrate ``spec`` stands for, as a float32 array (or broadcast view) shaped like ``x``."""
    if isinstance(spec, str):
        if spec == "zero":
            return np.broadcast_to(np.float32(0.0), x.shape)
        if spec == "blur":
            return rise_blur(x, layout)
        raise CamlensError(f"unknown baseline {spec!r}: expected 'zero', 'blur', an array or a callable")
    if callable(spec):
        view = x.view()
        view.flags.writeable = False
        spec = spec(view)
    try:
        return np.broadcast_to(np.asarray(spec, dtype=np.float32), x.shape)
    except ValueError as exc:
        raise CamlensError(f"baseline of shape {np.shape(spec)} is not broadcastable to the input shape {x.shape}") from exc


def auc(fractions: npt.ArrayLike, curve: npt.ArrayLike) -> np.ndarray:
    r"""Trapezoidal area under ``curve`` over ``fractions``, along the last axis.

    :math:`\sum_j (f_{j+1} - f_j)\,(v_j + v_{j+1}) / 2`, the same value as
    ``np.trapezoid(curve, fractions, axis=-1)`` (written out so NumPy < 2.0 works too).

    Args:
        fractions: ``(J,)`` abscissae, J >= 2.
        curve: ``(..., J)`` ordinates.

    Returns:
        ``(...)`` float64 areas (a 0-d array for a single curve).
    """
    f = np.asarray(fractions, dtype=np.float64)
    v = np.asarray(curve, dtype=np.float64)
    if f.ndim != 1 or f.shape[0] < 2 or v.ndim < 1 or v.shape[-1] != f.shape[0]:
        raise CamlensError(f"need (J,) fractions with J >= 2 and (..., J) curves, got {f.shape} and {v.shape}")
    return np.asarray(np.sum(np.diff(f) * (v[..., 1:] + v[..., :-1]) / 2.0, axis=-1))


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of a batch, sampled at the same perturbed fractions.

    Attributes:
        fractions: ``(J,)`` fraction of the pixels perturbed at each point, from 0 to 1.
        deletion: ``(N, J)`` target-class probability after deleting the top-ranked fraction.
        insertion: ``(N, J)`` target-class probability after inserting the top-ranked fraction.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        """``(N,)`` areas under the deletion curves (lower is better)."""
        return auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        """``(N,)`` areas under the insertion curves (higher is better)."""
        return auc(self.fractions, self.insertion)


def deletion_insertion(
    predict: Predict,
    x: np.ndarray,
    maps: np.ndarray,
    targets: Targets,
    layout: str,
    *,
    steps: int | None = None,
    deletion_baseline: Baseline = "zero",
    insertion_baseline: Baseline = "blur",
    batch_size: int = 64,
) -> Curves:
    r"""Deletion and insertion curves of a batch.

    From Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018: its "causal metrics".

    The :math:`P = HW` pixels of each sample are ranked by its map, highest first, ties broken by
    raster order (``np.argsort(-map.ravel(), kind="stable")``, like torchcam's stable descending
    sort). With :math:`s = \lceil P / \mathrm{steps} \rceil` pixels per step, the curves are sampled
    at the counts :math:`k = 0, s, 2s, \ldots` (all below :math:`P`) and then :math:`P`, i.e. at the
    fractions :math:`f_j = k_j / P` (torchcam's ``DeletionInsertionMetric`` convention). With
    :math:`T_j` the :math:`k_j` top-ranked pixels, all channels, and :math:`c` the target class:

    .. math::

        D_j = p_c\big(x \text{ with } T_j \text{ replaced by the deletion baseline}\big), \qquad
        I_j = p_c\big(\text{insertion baseline with } T_j \text{ taken from } x\big),

    so :math:`D_0 = I_{J-1} = p_c(x)`. The scores are :math:`\mathrm{AUC}(D)` (lower is better: a
    faithful map removes the evidence first) and :math:`\mathrm{AUC}(I)` (higher is better), the
    trapezoidal areas over the fractions (:func:`auc`, :attr:`Curves.deletion_auc`,
    :attr:`Curves.insertion_auc`).

    Cost and memory: each sample takes :math:`2J - 1` forward passes (the unperturbed input is
    scored once for both curves), evaluated in batches of ``batch_size`` across samples; at most
    ``batch_size`` perturbed inputs exist at a time, besides ``x`` and the baselines (``"zero"``
    is a broadcast view that takes no memory; ``"blur"`` takes one array the size of ``x``).

    Args:
        predict: the classifier, ``(n, ...)`` float32 preprocessed batch -> ``(n, classes)`` probabilities.
        x: ``(N, C, H, W)`` or ``(N, H, W, C)`` preprocessed inputs (converted to float32).
        maps: ``(N, H, W)`` or ``(H, W)`` finite maps at the input resolution; only their order matters.
        targets: the class :math:`c`: one index for all samples, or ``N`` of them.
        layout: ``"NCHW"`` or ``"NHWC"``.
        steps: the maximum number of perturbation intervals; the curves have :math:`J = \lceil P/s \rceil + 1 \le
            \mathrm{steps} + 1` points. The default ``None`` means ``H`` steps, one image row's worth
            of pixels (:math:`s = W`) per step, which is RISE's own protocol (224 pixels per step on
            224 x 224 inputs): its fractions are then evenly spaced, so the AUC equals the one RISE's
            ``auc`` computes. It costs about :math:`2H` forward passes per sample; pass e.g.
            ``steps=20`` (torchcam's default) for a cheaper, coarser curve.
        deletion_baseline: what deleted pixels become. ``"zero"`` (default, RISE's deletion
            substrate): zeros in the preprocessed space, i.e. the dataset mean colour after
            normalisation. ``"blur"``: :func:`rise_blur` of the input. A number or an array
            broadcastable to ``x``, or a callable given a read-only view of the float32 ``x`` that
            returns one.
        insertion_baseline: what the insertion curve starts from, same choices; default ``"blur"``,
            RISE's insertion substrate.
        batch_size: most inputs handed to ``predict`` at once.

    Returns:
        The :class:`Curves` of the batch.
    """
    batch = _as_batch(x, layout)
    n = batch.shape[0]
    ranking = _as_maps(maps, batch, layout)
    classes = _as_targets(targets, n)
    _check_positive("batch_size", batch_size)
    height, width = ranking.shape[1:]
    pixels = height * width
    steps = height if steps is None else steps
    _check_positive("steps", steps)
    per_step = -(-pixels // steps)
    counts = [*range(0, pixels, per_step), pixels]
    order = np.argsort(-ranking.reshape(n, pixels), axis=1, kind="stable")
    ranks = np.argsort(order, axis=1).reshape(n, height, width)
    substrates = (_baseline(deletion_baseline, batch, layout), _baseline(insertion_baseline, batch, layout))
    channel_axis = _channel_axis(layout) - 1
    # (curve, sample, point): curve 0 is deletion, 1 insertion; deletion point 0 is the unperturbed input,
    # which is also insertion's last point, so insertion is scored for points 0 .. J-2 only.
    jobs = [(0, i, j) for i in range(n) for j in range(len(counts))]
    jobs += [(1, i, j) for i in range(n) for j in range(len(counts) - 1)]
    curves = np.empty((2, n, len(counts)))
    for chunk in _chunks(len(jobs), batch_size):
        perturbed = np.empty((chunk.stop - chunk.start, *batch.shape[1:]), dtype=np.float32)
        for row, (curve, i, j) in enumerate(jobs[chunk]):
            top = ranks[i] < counts[j]
            from_input = top if curve == 1 else ~top
            perturbed[row] = np.where(np.expand_dims(from_input, channel_axis), batch[i], substrates[curve][i])
        curve_ids, samples, points = (np.array(column) for column in zip(*jobs[chunk], strict=True))
        curves[curve_ids, samples, points] = _target_scores(predict, perturbed, classes[samples])
    curves[1, :, -1] = curves[0, :, 0]
    return Curves(fractions=np.array(counts, dtype=np.float64) / pixels, deletion=curves[0], insertion=curves[1])
