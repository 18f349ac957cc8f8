"""Smoothing any method: maps of noisy (SmoothGrad) or flipped and rescaled (test-time
augmentation) copies of a batch, each mapped back onto the batch's own grid, then averaged.

The batch is explained once as it is, which freezes its targets (the class each sample
explains, the reference classes of a Finer target...); every copy is then explained for those
same columns, so a copy whose top class differs still explains the batch's class. Nothing here
imports a framework: an adapter runs each copy (see :class:`camlens.Explainer`'s ``augment=``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from camlens.core.maps import upsample
from camlens.core.result import CamResult
from camlens.errors import CamlensError, TargetError

Undo = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
"""Maps ``(N, K, h', w')`` of a copy back onto the batch's ``(h, w)`` grid."""


@dataclass(frozen=True)
class Augment:
    r"""Copies of a batch whose maps are averaged, for any method.

    .. math:: \bar M = \frac{1}{|T|} \sum_{t \in T} t^{-1}\big(M(t(x))\big)

    where :math:`t` runs over every flip (with ``flips``: none and left-right) and scale in
    ``scales`` (the input resized by that factor, bilinearly; :math:`t^{-1}` flips the map back
    and resizes it to the unaugmented map's grid), each once, or ``samples`` times with noise.

    Attributes:
        samples: noisy copies per transform (SmoothGrad, Smilkov et al. 2017,
            arXiv:1706.03825, whose maps average over 50); 0 for none.
        noise: the noise's standard deviation as a fraction of each input's value range
            (``max - min``; the paper's 10-20%).
        flips: also explain the left-right mirror image.
        scales: input scales (``(0.75, 1.0, 1.25)``...); a model must accept the other sizes
            (a CNN with global pooling does; a ViT with fixed position embeddings does not).
        seed: the noise's seed (each sample's noise is the same whatever the batch).
    """

    samples: int = 0
    noise: float = 0.15
    flips: bool = False
    scales: tuple[float, ...] = (1.0,)
    seed: int = 0

    def __post_init__(self) -> None:
        from camlens.arguments import count, number

        count(self.samples, "samples", minimum=0)
        number(self.noise, "noise", 0.0, 10.0)
        count(self.seed, "seed", minimum=0)
        if not isinstance(self.flips, bool):
            raise CamlensError(f"flips must be True or False, not {self.flips!r}")
        scales = tuple(self.scales) if isinstance(self.scales, (list, tuple)) else None
        if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.1 <= s <= 10 for s in scales):
            raise CamlensError(f"scales must be a non-empty list of factors between 0.1 and 10, not {self.scales!r}")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))
        if not self.samples and not self.flips and self.scales == (1.0,):
            raise CamlensError("this augmentation changes nothing: give samples (noise), flips or scales")

    @classmethod
    def smoothgrad(cls, samples: int = 25, noise: float = 0.15) -> Augment:
        """SmoothGrad's noise: ``samples`` noisy copies, noise ``noise`` of the value range."""
        return cls(samples=samples, noise=noise)

    @classmethod
    def tta(cls, scales: Sequence[float] = (0.75, 1.0, 1.25)) -> Augment:
        """Test-time augmentation: each scale, as it is and mirrored."""
        return cls(flips=True, scales=tuple(scales))

    def transforms(self) -> list[tuple[bool, float]]:
        """``(flip, scale)`` of every transform, the identity (if any) first."""
        return [(flip, scale) for flip in ((False, True) if self.flips else (False,)) for scale in self.scales]

    def copies(self, x: np.ndarray, layout: str) -> Iterator[tuple[np.ndarray, Undo]]:
        """Each copy of the ``(N, ...)`` batch ``x`` (``layout`` ``"NCHW"`` or ``"NHWC"``) with
        the function that maps its ``(N, K, h, w)`` maps back onto a grid."""
        spatial = (2, 3) if layout == "NCHW" else (1, 2)
        height, width = x.shape[spatial[0]], x.shape[spatial[1]]
        spread = (x.reshape(len(x), -1).max(axis=1) - x.reshape(len(x), -1).min(axis=1)).astype(np.float32)
        for flip, scale in self.transforms():
            t = np.flip(x, axis=spatial[1]) if flip else x
            if scale != 1.0:
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                t = _resize(t, size, layout)

            def back(maps: np.ndarray, grid: tuple[int, int], flip: bool = flip) -> np.ndarray:
                out = maps[..., ::-1] if flip else maps
                return upsample(out, grid) if tuple(out.shape[-2:]) != tuple(grid) else np.ascontiguousarray(out)

            if not self.samples:
                yield np.ascontiguousarray(t, dtype=np.float32), back
                continue
            sigma = (self.noise * spread).reshape(-1, *([1] * (t.ndim - 1)))
            channels_first = t.shape[1:] if layout == "NCHW" else (t.shape[3], t.shape[1], t.shape[2])
            for i in range(self.samples):  # draw i is the same for every sample: a map does not depend on the batch
                noise = np.random.default_rng([self.seed, i]).normal(0.0, 1.0, channels_first)  # drawn (C, H, W) in either layout
                yield (t + sigma * (noise if layout == "NCHW" else noise.transpose(1, 2, 0))).astype(np.float32), back

    def __repr__(self) -> str:
        parts = [f"samples={self.samples}, noise={self.noise:g}"] if self.samples else []
        parts += ["flips=True"] if self.flips else []
        parts += [f"scales={self.scales}"] if self.scales != (1.0,) else []
        return f"Augment({', '.join(parts)})"


def _resize(x: np.ndarray, size: tuple[int, int], layout: str) -> np.ndarray:
    """The batch resized bilinearly (half-pixel centres) to ``size`` = (H, W)."""
    if layout == "NCHW":
        return upsample(x, size)
    return upsample(np.moveaxis(x, -1, 1), size).transpose(0, 2, 3, 1)


def smoothed(first: CamResult, explain: Callable[[np.ndarray], CamResult], x: np.ndarray, layout: str,
             augment: Augment) -> CamResult:
    """``first`` (the batch explained as it is) with each map replaced by its mean over
    ``augment``'s copies of the NumPy batch ``x``, each explained by ``explain(copy)`` for
    ``first``'s columns.

    Raises:
        TargetError: flips or scales with a target tied to the input's pixels (a segmentation
            region, a detection box), which a copy would no longer match.
    """
    spatial = [c.kind for c in first.columns if c.regions is not None or c.boxes is not None]
    if spatial and (augment.flips or augment.scales != (1.0,)):
        raise TargetError(f"flips and scales move the input's pixels, which a {spatial[0]} target is tied to; "
                          "use noise (samples=) alone")
    total = {m: {layer: np.zeros_like(a, dtype=np.float64) for layer, a in by.items()} for m, by in first.maps.items()}
    count = 0
    reuse = not augment.samples and augment.transforms()[0] == (False, 1.0)  # the first copy is the batch as it is
    for index, (copy, back) in enumerate(augment.copies(x, layout)):
        result = first if reuse and index == 0 else explain(copy)
        for m, by_layer in result.maps.items():
            for layer, maps in by_layer.items():
                grid = first.maps[m][layer].shape[-2:]
                total[m][layer] += back(maps, (int(grid[0]), int(grid[1])))
        count += 1
    return replace(first, maps={m: {layer: (t / count).astype(np.float32) for layer, t in by.items()} for m, by in total.items()})
