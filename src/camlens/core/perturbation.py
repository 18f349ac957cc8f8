"""Methods that run the model again, through the adapter's :class:`~camlens.core.record.Probe`:
masked inputs (Score-CAM and its smoothed and integrated variants, RISE, Group-CAM), ablated
channels (Ablation-CAM) or feature maps kept at one position (Recipro-CAM).

Each is exact to its definition and makes no forward it does not need. A channel whose map is
constant, or all zero for Ablation-CAM, contributes nothing whatever it would score, so it is
never run. Channels whose masks are byte-identical share one run. Work goes sample by sample
in chunks, so memory is bounded by the chunk, not by the number of channels.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np

from camlens.core.maps import normalize, upsample
from camlens.core.methods import ChannelWeighted, Method, _require, register
from camlens.core.record import LayerRecord, Need, Probe
from camlens.errors import MethodError

MASKS_PER_CALL = 128
"""Masks handed to the probe at once (the probe runs them ``max_batch`` at a time): bounds the
upsampled masks held in memory to about ``128 * H * W * 4`` bytes."""

REPLACED_BYTES = 64 * 2**20
"""Replaced layer outputs handed to the probe at once: about this many bytes (at least the
probe's ``max_batch`` of them), which the probe runs as :func:`~camlens.core.record.replacement_rows` allows."""


def _per_call(probe: Probe, row_bytes: int) -> int:
    """Replacements of ``row_bytes`` each to hand to ``probe.score_replaced`` at once."""
    return max(probe.max_batch, REPLACED_BYTES // max(row_bytes, 1))


def _probe(record: LayerRecord, title: str) -> Probe:
    if record.probe is None or record.columns is None:
        raise MethodError(f"{title} needs extra forward passes, which the adapter did not provide")
    return record.probe


class ScoreWeighted(ChannelWeighted):
    """Score-CAM's family: ``w_k = mean_v s(x * variant_v(M_k))``, where ``M_k`` is channel k
    upsampled to the input and min-max scaled to [0, 1], and ``s`` is the target's score. For a
    class target that score is its softmax probability, as in the papers. Constant channels get
    weight 0.

    Subclasses set ``variants`` and implement :meth:`variants_of`.
    """

    needs = frozenset({Need.FORWARDS})
    variants: ClassVar[int] = 1
    cost = "1 forward + 1 per distinct live channel"

    def variants_of(self, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(m, variants, H, W)`` inputs' masks for ``(m, H, W)`` channel masks."""
        return masks[:, None]

    def channels(self, activations: np.ndarray) -> np.ndarray:
        """The channels to score for one sample's ``(C, h, w)`` activations: every
        non-constant one (the rest get weight 0)."""
        flat = activations.reshape(activations.shape[0], -1)
        return np.flatnonzero(flat.max(axis=1) > flat.min(axis=1))

    def weights(self, record: LayerRecord) -> np.ndarray:
        probe = _probe(record, self.title)
        a = record.activations
        n, c = a.shape[:2]
        w = np.zeros((n, len(record.columns), c), np.float32)  # type: ignore[arg-type]
        per_call = max(1, MASKS_PER_CALL // self.variants)
        every = [self.channels(a[i]) for i in range(n)]
        total, done = sum(len(c) for c in every), 0
        for i, chosen in enumerate(every):
            rng = np.random.default_rng(0)  # each sample's noise is the same whatever the batch
            found: dict[bytes, int] = {}
            scores: list[np.ndarray] = []
            owner = np.empty(len(chosen), np.int64)
            for start in range(0, len(chosen), per_call):
                part = chosen[start : start + per_call]
                masks = normalize(upsample(a[i, part], probe.input_size))
                fresh: list[int] = []
                for j, mask in enumerate(masks):
                    key = hashlib.blake2b(mask.tobytes(), digest_size=16).digest()
                    if key not in found:
                        found[key] = len(found)
                        fresh.append(j)
                    owner[start + j] = found[key]
                if fresh:
                    inputs = self.variants_of(masks[fresh], rng)
                    m, v = inputs.shape[:2]
                    got = probe.score_masked(inputs.reshape(m * v, *inputs.shape[2:]), 0.0, record.columns,
                                             samples=np.array([i]), probability=True)
                    scores.append(got[0].reshape(m, v, -1).mean(axis=1))
                done += len(part)
                record.report(self.title, done, total)
            if len(chosen):
                w[i][:, chosen] = np.concatenate(scores)[owner].T
        return w


@register
class ScoreCAM(ScoreWeighted):
    r"""Score-CAM (Wang et al., CVPR Workshops 2020, "Score-CAM: Score-Weighted Visual
    Explanations for Convolutional Neural Networks", arXiv:1910.01279).

    .. math::
        M_k = \frac{U(A_k) - \min U(A_k)}{\max U(A_k) - \min U(A_k)}, \qquad
        w^c_k = p^c(x \odot M_k), \qquad L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A_k\Big)

    with :math:`U` bilinear upsampling to the input (half-pixel centres) and :math:`p^c` the
    softmax probability of class :math:`c`, as in the authors' code, which also skips constant
    channels. torchcam and pytorch-grad-cam instead take :math:`\mathrm{softmax}_k` of the
    channels' logits, and forward the dead channels too.
    """

    name = "scorecam"
    formula = "ReLU(sum_k p(x * norm(up(A_k))) A_k), constant channels 0"
    title = "Score-CAM"
    paper = "Wang et al., CVPRW 2020"


@register
class SSCAM(ScoreWeighted):
    r"""SS-CAM (Wang, Naidu et al. 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization", arXiv:2006.14255): Score-CAM's weight averaged over noisy masks.

    .. math:: w^c_k = \frac{1}{N} \sum_{i=1}^{N} p^c\big(x \odot (M_k + \delta_i)\big), \quad
              \delta_i \sim \mathcal{N}(0, \sigma^2)

    with torchcam's defaults :math:`N = 35`, :math:`\sigma = 2`. The noise is seeded per
    sample, so a map does not depend on the rest of the batch.
    """

    name = "sscam"
    formula = "ReLU(sum_k mean_i p(x * (M_k + noise_i)) A_k), 35 draws, sigma 2"
    title = "SS-CAM"
    paper = "Wang et al., 2020 (arXiv:2006.14255)"
    variants = 35
    sigma: ClassVar[float] = 2.0
    cost = "1 forward + 35 per distinct live channel"

    def variants_of(self, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, self.sigma, (len(masks), self.variants, *masks.shape[1:])).astype(np.float32)
        return masks[:, None] + noise


@register
class ISCAM(ScoreWeighted):
    r"""IS-CAM (Naidu et al. 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based
    explanations", arXiv:2010.03023): Score-CAM's weight integrated along the mask's scale.

    .. math:: w^c_k = \frac{1}{N} \sum_{i=1}^{N} p^c\Big(x \odot \frac{i}{N} M_k\Big), \quad N = 10

    torchcam's ISCAM instead scales the mask by the running sum :math:`\sum_{j \le i} j/N`
    (up to 5.5 for N = 10).
    """

    name = "iscam"
    formula = "ReLU(sum_k mean_i p(x * (i/N) M_k) A_k), N = 10"
    title = "IS-CAM"
    paper = "Naidu et al., 2020 (arXiv:2010.03023)"
    variants = 10
    cost = "1 forward + 10 per distinct live channel"

    def variants_of(self, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        scale = np.arange(1, self.variants + 1, dtype=np.float32) / self.variants
        return masks[:, None] * scale[None, :, None, None]


@register
class FasterScoreCAM(ScoreCAM):
    r"""Faster Score-CAM (an approximation, from the Score-CAM authors' repository): Score-CAM on
    the ``channels`` channels of largest variance only (64 by default), the rest weighted 0.
    It costs a fixed number of forwards. ``FasterScoreCAM(channels=k)`` sets another count.
    """

    name = "fasterscorecam"
    formula = "Score-CAM on the 64 highest-variance channels (approximation)"
    title = "Faster Score-CAM"
    paper = "Wang et al. (Score-CAM repository)"
    cost = "1 forward + 64"
    top: ClassVar[int] = 64

    def __init__(self, model: Any = None, layer: Any = None, *, channels: int | None = None, **kwargs: Any) -> None:
        from camlens.arguments import count

        self._channels = self.top if channels is None else count(channels, "channels")
        super().__init__(model, layer, **kwargs)

    def channels(self, activations: np.ndarray) -> np.ndarray:
        live = super().channels(activations)
        spread = activations.reshape(activations.shape[0], -1)[live].var(axis=1)
        return np.sort(live[np.argsort(-spread, kind="stable")[: self._channels]])

    def __repr__(self) -> str:
        return f"FasterScoreCAM(channels={self._channels})"


@register
class AblationCAM(ChannelWeighted):
    r"""Ablation-CAM (Desai & Ramaswamy, WACV 2020, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization").

    .. math:: w^c_k = \frac{y^c - y^c_{-k}}{|y^c|}, \qquad L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A_k\Big)

    where :math:`y^c_{-k}` is the score with channel :math:`k` of the layer set to zero. Only the
    network after the layer runs again, where the model allows it (see the adapter's probe).
    An all-zero channel is not run, since its weight is 0. The paper, and pytorch-grad-cam,
    divide by :math:`y^c` rather than :math:`|y^c|`, which flips every weight of a negative
    score. pytorch-grad-cam also sets an ablated channel to a large negative value, not to
    zero, on layers whose minimum is not 0.
    """

    name = "ablationcam"
    formula = "ReLU(sum_k (y - y without A_k) / |y| A_k)"
    title = "Ablation-CAM"
    paper = "Desai & Ramaswamy, WACV 2020"
    needs = frozenset({Need.FORWARDS})
    cost = "1 forward + 1 per nonzero channel (the layers after the target layer only)"

    def weights(self, record: LayerRecord) -> np.ndarray:
        probe = _probe(record, self.title)
        if record.scores is None:
            raise MethodError("Ablation-CAM needs the explained scores, which the adapter did not give")
        a = record.activations.astype(np.float32)
        n, c = a.shape[:2]
        w = np.zeros((n, len(record.columns), c), np.float32)  # type: ignore[arg-type]
        every = [np.flatnonzero(np.abs(a[i].reshape(c, -1)).max(axis=1) > 0) for i in range(n)]
        total, done = sum(len(live) for live in every), 0
        for i, live in enumerate(every):
            y = record.scores[i].astype(np.float32)
            scale = np.where(np.abs(y) > 0, np.abs(y), 1.0)
            step = _per_call(probe, a[i].nbytes)
            for start in range(0, len(live), step):
                part = live[start : start + step]
                ablated = np.repeat(a[i : i + 1], len(part), axis=0)
                ablated[np.arange(len(part)), part] = 0.0
                got = probe.score_replaced(record.layer, ablated[None], record.columns, samples=np.array([i]))
                w[i][:, part] = ((y[None] - got[0]) / scale).T
                done += len(part)
                record.report(self.title, done, total)
        return w


@register
class RISE(Method):
    r"""RISE (Petsiuk, Das & Saenko, BMVC 2018, "RISE: Randomized Input Sampling for Explanation
    of Black-box Models", arXiv:1806.07421): the model-agnostic baseline, which reads no layer.

    .. math:: S^c = \frac{1}{N p} \sum_{i=1}^{N} p^c(x \odot M_i)\, M_i

    Each mask :math:`M_i` is a random ``cells`` x ``cells`` grid of cells kept with probability
    :math:`p`, bilinearly upsampled to ``cells + 1`` cells of the input's size, shifted by a
    random fraction of a cell and cropped to the input, as in the authors' code (scikit-image
    ``resize``, ``order=1``, ``mode="reflect"``); :math:`p^c` is the softmax probability of class
    :math:`c`. Defaults are the paper's for ImageNet: ``masks=4000``, ``cells=7``, ``keep=0.5``.
    The masks come from ``seed`` and are the same for every image, so maps are reproducible.
    The map is at the input's resolution, stored under the target layer's name.
    """

    name = "rise"
    formula = "sum_i p(x * M_i) M_i / (N p), N = 4000 random 7x7 masks, p = 0.5"
    title = "RISE"
    paper = "Petsiuk et al., BMVC 2018"
    needs = frozenset({Need.FORWARDS})
    cost = "1 forward + 4000 (masks=)"
    input_resolution = True

    def __init__(self, model: Any = None, layer: Any = None, *, masks: int = 4000, cells: int = 7, keep: float = 0.5,
                 seed: int = 0, **kwargs: Any) -> None:
        from camlens.arguments import count, number

        self.masks, self.cells = count(masks, "masks"), count(cells, "cells")
        self.keep = number(keep, "keep", 0.0, 1.0)
        if self.keep == 0.0:
            raise MethodError("keep must be above 0: RISE divides by the share of the image each mask keeps")
        self.seed = count(seed, "seed", minimum=0)
        super().__init__(model, layer, **kwargs)

    def random_masks(self, rng: np.random.Generator, count: int, size: tuple[int, int]) -> np.ndarray:
        """``(count, H, W)`` float32 masks in [0, 1], drawn from ``rng``."""
        from skimage.transform import resize

        s = self.cells
        cell = np.ceil(np.asarray(size) / s).astype(np.int64)
        grid = (rng.random((count, s, s)) < self.keep).astype(np.float32)
        smooth = resize(grid, (count, *((s + 1) * cell)), order=1, mode="reflect", anti_aliasing=False)
        shifts = rng.integers(0, cell, size=(count, 2))
        h, w = size
        return np.stack([smooth[i, y : y + h, x : x + w] for i, (y, x) in enumerate(shifts)]).astype(np.float32)

    def maps(self, record: LayerRecord) -> np.ndarray:
        probe = _probe(record, self.title)
        n, k = record.targets.shape
        size = probe.input_size
        rng = np.random.default_rng(self.seed)
        total = np.zeros((n, k, size[0] * size[1]), np.float64)
        for start in range(0, self.masks, MASKS_PER_CALL):
            masks = self.random_masks(rng, min(MASKS_PER_CALL, self.masks - start), size)
            flat = masks.reshape(len(masks), -1)
            for i in range(n):  # one sample at a time: the probe holds one copy of the masks, not N
                scores = probe.score_masked(masks, 0.0, record.columns, samples=np.array([i]), probability=True)
                total[i] += scores[0].T @ flat
            record.report(self.title, start + len(masks), self.masks)
        return (total / (self.masks * self.keep)).astype(np.float32).reshape(n, k, *size)

    def __repr__(self) -> str:
        return f"RISE(masks={self.masks}, cells={self.cells}, keep={self.keep:g}, seed={self.seed})"


@register
class GroupCAM(Method):
    r"""Group-CAM (Zhang, Rao & Yang 2021, "Group-CAM: Group Score-Weighted Visual Explanations
    for Deep Convolutional Networks", arXiv:2103.13859), as the authors' code computes it.

    The Grad-CAM-weighted channels :math:`\alpha_k A_k` are summed in ``groups`` contiguous
    blocks (``torch.chunk``'s split: blocks of :math:`\lceil C/G \rceil` channels) into maps
    :math:`S_g = U(\mathrm{ReLU}(\sum_{k \in g} \alpha_k A_k))`, upsampled to the input; then

    .. math::
        s_g = \mathrm{ReLU}\big(p^c(x \odot N_g + \tilde x \odot (1 - N_g)) - p^c(\tilde x)\big),
        \qquad L^c = \sum_g s_g S_g

    with :math:`N_g` the min-max scaled :math:`S_g`, :math:`\tilde x` the input blurred by a
    51 x 51 Gaussian of sigma 50 (mirrored borders, as kornia's ``gaussian_blur2d``) and
    :math:`p^c` the softmax probability. A constant group map, whose masked input is the blurred
    one, scores 0 (the authors' code divides by zero there). The map is at the input's resolution.
    """

    name = "groupcam"
    formula = "sum_g ReLU(p(x*N_g + blur*(1-N_g)) - p(blur)) S_g, 32 groups of Grad-CAM channels"
    title = "Group-CAM"
    paper = "Zhang et al., 2021 (arXiv:2103.13859)"
    needs = frozenset({Need.GRADIENTS, Need.FORWARDS})
    backwards = 1
    cost = "1 forward + 1 backward + 33 forwards per target"
    input_resolution = True
    blur_size: ClassVar[int] = 51
    blur_sigma: ClassVar[float] = 50.0

    def __init__(self, model: Any = None, layer: Any = None, *, groups: int = 32, **kwargs: Any) -> None:
        from camlens.arguments import count

        self.groups = count(groups, "groups")
        super().__init__(model, layer, **kwargs)

    def blurred(self, probe: Probe) -> np.ndarray:
        """The batch's inputs blurred over their spatial axes (kornia's kernel and borders)."""
        from scipy import ndimage

        x = probe.inputs().astype(np.float64)
        sigma = [0.0] * x.ndim
        for axis in (2, 3) if probe.layout == "NCHW" else (1, 2):
            sigma[axis] = self.blur_sigma
        radius = self.blur_size // 2
        return ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=radius / self.blur_sigma).astype(np.float32)

    def maps(self, record: LayerRecord) -> np.ndarray:
        probe = _probe(record, self.title)
        a = record.activations.astype(np.float32)
        alpha = _require(record.gradients, "gradients", self.title).astype(np.float32).mean(axis=(3, 4))  # (N, K, C)
        n, k, c = alpha.shape
        size = -(-c // self.groups)  # torch.chunk: blocks of ceil(C / G) channels
        blurred = self.blurred(probe)
        base = probe.score_masked(np.zeros((1, *probe.input_size), np.float32), blurred, record.columns,
                                  probability=True)[:, 0]  # (N, K)
        out = np.zeros((n, k, *probe.input_size), np.float32)
        for i in range(n):
            for j in range(k):
                weighted = alpha[i, j, :, None, None] * a[i]
                groups = np.maximum(np.stack([weighted[g : g + size].sum(axis=0) for g in range(0, c, size)]), 0.0)
                smooth = upsample(groups, probe.input_size)
                got = probe.score_masked(normalize(smooth)[None], blurred[i : i + 1], record.columns[j : j + 1],  # type: ignore[index]
                                         samples=np.array([i]), probability=True)[0, :, 0]
                out[i, j] = np.tensordot(np.maximum(got - base[i, j], 0.0), smooth, axes=1)
                record.report(self.title, i * k + j + 1, n * k)
        return out

    def __repr__(self) -> str:
        return f"GroupCAM(groups={self.groups})"


@register
class ReciproCAM(Method):
    r"""Recipro-CAM (Byun & Lee 2022, "Recipro-CAM: Fast gradient-free visual explanations for
    convolutional neural networks", arXiv:2209.14074), as the authors' code computes it.

    Each position :math:`(u, v)` of the layer gets a copy of the feature map that keeps only
    that position's feature vector (zero elsewhere); the network after the layer scores it:

    .. math:: L^c(u, v) = p^c\big(f_{\text{rest}}(A \odot \mathbb{1}_{u,v})\big)

    with :math:`p^c` the softmax probability (the authors min-max scale the map for display,
    as camlens' rendering does). ``gaussian=True`` spreads the vector over its 3 x 3
    neighbourhood with the weights ``[1, 2, 1] x [1, 2, 1] / 16`` (the authors' option). On a
    token layer the prefix tokens (class token) are kept, as in the paper's ViT variant.
    """

    name = "reciprocam"
    formula = "p(rest of the network on A kept at one position), each position"
    title = "Recipro-CAM"
    paper = "Byun & Lee, 2022 (arXiv:2209.14074)"
    needs = frozenset({Need.FORWARDS})
    cost = "1 forward + 1 per layer position (the layers after the target layer only)"

    def __init__(self, model: Any = None, layer: Any = None, *, gaussian: bool = False, **kwargs: Any) -> None:
        if not isinstance(gaussian, bool):
            raise MethodError(f"gaussian must be True or False, not {gaussian!r}")
        self.gaussian = gaussian
        super().__init__(model, layer, **kwargs)

    def position_masks(self, h: int, w: int, positions: np.ndarray) -> np.ndarray:
        """``(len(positions), h, w)``: for each position (flat index), the weight it keeps at
        every position of the map."""
        flat = np.zeros((len(positions), h * w), np.float32)
        flat[np.arange(len(positions)), positions] = 1.0
        masks = flat.reshape(-1, h, w)
        if self.gaussian:
            from scipy import ndimage

            kernel = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / 16
            masks = np.stack([ndimage.convolve(m, kernel, mode="constant") for m in masks])
        return masks

    def maps(self, record: LayerRecord) -> np.ndarray:
        probe = _probe(record, self.title)
        a = record.activations.astype(np.float32)
        n, c, h, w = a.shape
        k = len(record.columns)  # type: ignore[arg-type]
        out = np.zeros((n, k, h * w), np.float32)
        for i in range(n):
            vectors = a[i].reshape(c, h * w)
            step = _per_call(probe, a[i].nbytes)
            for start in range(0, h * w, step):
                part = np.arange(start, min(start + step, h * w))
                kept = vectors[:, part].T[:, :, None, None] * self.position_masks(h, w, part)[:, None]  # (m, C, h, w)
                got = probe.score_replaced(record.layer, kept[None], record.columns, samples=np.array([i]), probability=True)
                out[i][:, part] = got[0].T
                record.report(self.title, i * h * w + int(part[-1]) + 1, n * h * w)
        return out.reshape(n, k, h, w)

    def __repr__(self) -> str:
        return f"ReciproCAM(gaussian={self.gaussian})"
