"""Target kinds: what score a map explains (see :mod:`camlens.core.targets`).

``Class(k)`` (an int or a class name means this), ``Top(k)``, ``AllClasses()``,
``Probability(k)``, ``Sigmoid(k)``, ``Finer(k, references=3, alpha=1)``, ``Score(fn)``, ``Segmentation(k, mask=None)``,
``Similarity(embedding)`` and ``Detection(boxes, labels=None, iou=0.5)``; pass one, or a list
of them, as ``targets=`` (low level) or ``target=`` (:class:`camlens.Lens`). ``camlens
targets`` lists them with what each needs.
"""

from camlens.core.targets import (
    AllClasses,
    Class,
    Detection,
    Finer,
    Probability,
    Score,
    Segmentation,
    Sigmoid,
    Similarity,
    Target,
    Top,
    target_kinds,
)

__all__ = [
    "AllClasses",
    "Class",
    "Detection",
    "Finer",
    "Probability",
    "Score",
    "Segmentation",
    "Sigmoid",
    "Similarity",
    "Target",
    "Top",
    "target_kinds",
]
