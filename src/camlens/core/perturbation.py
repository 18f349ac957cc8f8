"""Gradient-free methods that run the model again: masked inputs (Score-CAM and its smoothed
and integrated variants) or ablated channels (Ablation-CAM), through the adapter's
:class:`~camlens.core.record.Probe`.

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
from camlens.core.methods import ChannelWeighted, register
from camlens.core.record import LayerRecord, Need, Probe
from camlens.errors import MethodError

MASKS_PER_CALL = 128
"""Masks handed to the probe at once (the probe runs them ``max_batch`` at a time): bounds the
upsampled masks held in memory to about ``128 * H * W * 4`` bytes."""


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
        for i in range(n):
            rng = np.random.default_rng(0)  # each sample's noise is the same whatever the batch
            found: dict[bytes, int] = {}
            scores: list[np.ndarray] = []
            chosen = self.channels(a[i])
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
        for i in range(n):
            y = record.scores[i].astype(np.float32)
            scale = np.where(np.abs(y) > 0, np.abs(y), 1.0)
            live = np.flatnonzero(np.abs(a[i].reshape(c, -1)).max(axis=1) > 0)
            for start in range(0, len(live), probe.max_batch):
                part = live[start : start + probe.max_batch]
                ablated = np.repeat(a[i : i + 1], len(part), axis=0)
                ablated[np.arange(len(part)), part] = 0.0
                got = probe.score_replaced(record.layer, ablated[None], record.columns, samples=np.array([i]))
                w[i][:, part] = ((y[None] - got[0]) / scale).T
        return w
