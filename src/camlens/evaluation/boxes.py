"""Boxes: their geometry, and boxes drawn around the strong parts of a map.

Coordinates are pixel edges, 0-based, with exclusive maxima: the box ``(0, 0, 2, 1)`` covers
the two pixels ``(x=0, y=0)`` and ``(x=1, y=0)``, and its area is ``(xmax - xmin) * (ymax - ymin)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from camlens.arguments import number
from camlens.core.maps import normalize
from camlens.errors import CamlensError

CAM_PAPER_THRESHOLD = 0.2
"""Zhou et al. (2016), Sec. 3: "segment the regions of which the value is above 20% of the max value of the CAM"."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel-edge coordinates, optionally labelled with a class name."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: str | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)

    def contains(self, x: float, y: float, tolerance: float = 0.0) -> bool:
        """Whether the centre of pixel ``(x, y)`` lies in the box or within ``tolerance`` pixels of it."""
        dx = max(self.xmin - (x + 0.5), 0.0, (x + 0.5) - self.xmax)
        dy = max(self.ymin - (y + 0.5), 0.0, (y + 0.5) - self.ymax)
        return bool(dx * dx + dy * dy <= tolerance * tolerance)

    def scaled(self, sx: float, sy: float) -> Box:
        """The box in an image resized by ``sx`` horizontally and ``sy`` vertically."""
        return Box(self.xmin * sx, self.ymin * sy, self.xmax * sx, self.ymax * sy, self.label)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"xmin": self.xmin, "ymin": self.ymin, "xmax": self.xmax, "ymax": self.ymax}
        if self.label is not None:
            out["label"] = self.label
        return out


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when both are empty)."""
    w = min(a.xmax, b.xmax) - max(a.xmin, b.xmin)
    h = min(a.ymax, b.ymax) - max(a.ymin, b.ymin)
    inter = max(0.0, w) * max(0.0, h)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def best_iou(predicted: list[Box], truth: list[Box]) -> float:
    """The highest IoU between any predicted and any true box (0 if either list is empty), as in
    Choe et al. (2020)'s evaluation of several boxes per image."""
    return max((iou(p, t) for p in predicted for t in truth), default=0.0)


def boxes_from_map(
    heatmap: np.ndarray, threshold: float = CAM_PAPER_THRESHOLD, *, largest: bool = True, min_area: float = 0.0
) -> list[Box]:
    """Boxes around the connected regions where a map is at least ``threshold`` of its range.

    The map is min-max normalised, so ``threshold`` is a fraction of its maximum above its
    minimum (for a map whose minimum is 0, exactly the CAM paper's "20% of the max value").
    Regions are 8-connected (as OpenCV's contours, used by Choe et al. 2020). With ``largest``
    only the region with the most pixels is boxed (the CAM paper); otherwise every region of at
    least ``min_area`` (a fraction of the map's area), largest first. A constant map has no box.

    Args:
        heatmap: ``(H, W)`` map at the image's resolution.
        threshold: in [0, 1].
    """
    return boxes_above(normalize(checked_map(heatmap)), threshold, largest=largest, min_area=min_area)


def checked_map(heatmap: object) -> np.ndarray:
    """``heatmap`` as a float64 ``(H, W)`` array.

    Raises:
        CamlensError: not a 2-D, non-empty, finite array of numbers.
    """
    try:
        values = np.asarray(heatmap, dtype=np.float64)
    except (TypeError, ValueError):
        raise CamlensError(f"expected an (H, W) map of numbers, got {type(heatmap).__name__}") from None
    if values.ndim != 2 or values.size == 0:
        raise CamlensError(f"expected a non-empty (H, W) map, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise CamlensError("the map has NaN or infinite values")
    return values


def boxes_above(
    scaled: np.ndarray, threshold: float, *, largest: bool = True, min_area: float = 0.0
) -> list[Box]:
    """:func:`boxes_from_map` for a map already min-max normalised (so that scoring many
    thresholds of one map normalises it once)."""
    number(threshold, "threshold", 0.0, 1.0)
    number(min_area, "min_area", 0.0, 1.0)
    if not scaled.any():
        return []
    labels, count = ndimage.label(scaled >= threshold, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    if largest:
        order = order[:1]
    else:
        order = order[sizes[order] >= min_area * scaled.size]
    slices = ndimage.find_objects(labels)
    boxes = []
    for k in order:
        ys, xs = slices[k]  # type: ignore[misc]
        boxes.append(Box(float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)))
    return boxes
