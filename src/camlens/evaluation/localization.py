"""Weakly supervised localization scores of maps: CAM-paper accuracy, MaxBoxAccV2, pointing game.

All scores use the map of the image's true class (``GT-known``), at the image's resolution,
min-max normalised, against the true boxes of that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from camlens.arguments import count as whole
from camlens.arguments import number
from camlens.core.maps import normalize
from camlens.errors import CamlensError
from camlens.evaluation.boxes import CAM_PAPER_THRESHOLD, Box, best_iou, boxes_above, checked_map

MAXBOXACC_IOUS = (0.3, 0.5, 0.7)
"""IoU thresholds of MaxBoxAccV2 (Choe et al., "Evaluating Weakly Supervised Object Localization
Methods Right", CVPR 2020, Sec. 4.1)."""

CAM_THRESHOLD_STEP = 0.01
"""Spacing of the map thresholds MaxBoxAccV2 searches (``cam_curve_interval`` of Choe et al.'s code)."""

POINTING_TOLERANCE = 15.0
"""Pixels of slack in the pointing game (Zhang et al., "Top-down Neural Attention by Excitation
Backprop", ECCV 2016, Sec. 5.1)."""


@dataclass(frozen=True)
class LocalizationProtocol:
    """Every knob of the localization scores.

    Attributes:
        threshold: map threshold (fraction of its range) for the single box of top-1 and
            GT-known localization; 0.2 is the CAM paper's (Zhou et al. 2016, Sec. 3).
        iou: IoU a box needs to count as correct for top-1 / GT-known localization (0.5, as in
            the CAM paper and ILSVRC).
        maxbox_ious: IoU thresholds averaged by MaxBoxAccV2.
        maxbox_step: spacing of the map thresholds MaxBoxAccV2 tries, from 0 to 1.
        pointing_tolerance: pixels allowed between a map's maximum and a true box.
    """

    threshold: float = CAM_PAPER_THRESHOLD
    iou: float = 0.5
    maxbox_ious: tuple[float, ...] = MAXBOXACC_IOUS
    maxbox_step: float = CAM_THRESHOLD_STEP
    pointing_tolerance: float = POINTING_TOLERANCE

    def __post_init__(self) -> None:
        number(self.threshold, "threshold", 0.0, 1.0)
        number(self.iou, "iou", 1e-9, 1.0)
        number(self.maxbox_step, "maxbox_step", 1e-6, 1.0 - 1e-9)
        number(self.pointing_tolerance, "pointing_tolerance", 0.0, float("inf"))
        if not self.maxbox_ious:
            raise CamlensError("maxbox_ious must hold at least one IoU threshold")
        for value in self.maxbox_ious:
            number(value, "maxbox_ious", 1e-9, 1.0)

    @property
    def map_thresholds(self) -> np.ndarray:
        return np.arange(0.0, 1.0, self.maxbox_step)


@dataclass(frozen=True)
class ImageLocalization:
    """One image's localization outcome for one method."""

    box: Box | None
    iou: float
    pointing_hit: bool
    maxbox_hits: np.ndarray  # (thresholds, ious) bool


def localize(heatmap: np.ndarray, truth: list[Box], protocol: LocalizationProtocol) -> ImageLocalization:
    """Score one min-max normalised ``(H, W)`` map against the true boxes of its class.

    - the CAM box: the largest region above ``protocol.threshold``, and its IoU with the best
      matching true box;
    - MaxBoxAccV2 hits: for every map threshold, boxes around *all* regions above it, and whether
      the best IoU with any true box reaches each IoU threshold (Choe et al. 2020's V2 protocol);
    - pointing game: whether the map's maximum (the first one in row-major order) lies within
      ``pointing_tolerance`` pixels of a true box.
    """
    if not isinstance(truth, (list, tuple)) or not all(isinstance(b, Box) for b in truth):
        raise CamlensError(f"truth must be a list of Box, not {type(truth).__name__}")
    scaled = normalize(checked_map(heatmap))  # once, not once per threshold
    boxes = boxes_above(scaled, protocol.threshold, largest=True)
    best = best_iou(boxes, truth)
    ious = np.asarray(protocol.maxbox_ious)
    thresholds = protocol.map_thresholds
    hits = np.zeros((len(thresholds), len(ious)), dtype=bool)
    for t, thr in enumerate(thresholds):
        hits[t] = best_iou(boxes_above(scaled, float(thr), largest=False), truth) >= ious
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    hit = any(b.contains(float(x), float(y), protocol.pointing_tolerance) for b in truth)
    return ImageLocalization(boxes[0] if boxes else None, best, hit, hits)


class LocalizationMeter:
    """Running localization scores of one method over a dataset (constant memory)."""

    def __init__(self, protocol: LocalizationProtocol) -> None:
        self.protocol = protocol
        self.count = 0
        self.top1 = 0
        self.gt_known = 0
        self.pointing = 0
        self.hits = np.zeros((len(protocol.map_thresholds), len(protocol.maxbox_ious)), dtype=np.int64)

    def update(self, outcome: ImageLocalization, correct: bool) -> None:
        """Add one image; ``correct`` is whether the model's top-1 class is the true one."""
        located = outcome.iou >= self.protocol.iou
        self.count += 1
        self.gt_known += located
        self.top1 += located and correct
        self.pointing += outcome.pointing_hit
        self.hits += outcome.maxbox_hits

    def merge(self, other: LocalizationMeter) -> None:
        """Add ``other``'s images (scored with the same protocol) to these: counts and hits are
        integers, so any split of a dataset merges to the scores of one pass."""
        if other.protocol != self.protocol:
            raise CamlensError("cannot merge localization scores of different protocols")
        self.count += other.count
        self.top1 += other.top1
        self.gt_known += other.gt_known
        self.pointing += other.pointing
        self.hits += other.hits

    def to_json(self) -> dict[str, Any]:
        """The counts and the hit matrix (nested lists) as JSON values; not the protocol."""
        return {"count": int(self.count), "top1": int(self.top1), "gt_known": int(self.gt_known),
                "pointing": int(self.pointing), "hits": self.hits.tolist()}

    @classmethod
    def from_json(cls, data: Any, protocol: LocalizationProtocol) -> LocalizationMeter:
        """The meter :meth:`to_json` wrote, scored with ``protocol``.

        Raises:
            CamlensError: ``data`` is not such a meter, or its hit matrix has another shape
                than ``protocol``'s.
        """
        out = cls(protocol)
        try:
            for name in ("count", "top1", "gt_known", "pointing"):
                setattr(out, name, whole(data[name], name, 0))
            rows = data["hits"]
            if len(rows) != out.hits.shape[0] or any(len(row) != out.hits.shape[1] for row in rows):
                raise CamlensError(f"a hit matrix of another shape than {out.hits.shape}")
            out.hits = np.array([[whole(v, "hits", 0) for v in row] for row in rows], dtype=np.int64).reshape(out.hits.shape)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CamlensError(f"not a stored localization meter ({type(exc).__name__}: {exc})") from None
        return out

    def summary(self) -> dict[str, float]:
        """Percentages: ``top1_loc`` (right class and IoU >= ``iou``), ``gt_known_loc``
        (IoU >= ``iou`` with the true class's map), ``maxboxacc_v2`` (mean over IoU thresholds of
        the best box accuracy over map thresholds), ``maxboxacc@IoU`` and the map threshold that
        reached it, and ``pointing_game`` (hits / images)."""
        n = max(self.count, 1)
        acc = self.hits / n * 100.0
        best = acc.max(axis=0)
        out = {
            "top1_loc": 100.0 * self.top1 / n,
            "gt_known_loc": 100.0 * self.gt_known / n,
            "maxboxacc_v2": float(best.mean()),
            "pointing_game": 100.0 * self.pointing / n,
        }
        for k, iou_thr in enumerate(self.protocol.maxbox_ious):
            out[f"maxboxacc@{iou_thr:g}"] = float(best[k])
            out[f"best_threshold@{iou_thr:g}"] = float(self.protocol.map_thresholds[int(np.argmax(acc[:, k]))])
        return out
