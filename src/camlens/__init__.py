"""camlens: see where an image classifier looks.

High level: :func:`explain` (one image, one call) and :class:`Lens` (a loaded model, batches).
Low level: :class:`Explainer` (any methods and layers) or a method bound to a model
(``GradCAM(model, layer="layer4")``) on preprocessed batches, PyTorch or Keras 3 alike. Every
method is a class of :mod:`camlens.core.methods`; ``camlens methods`` lists them.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from camlens.adapters import Explainer
    from camlens.adapters.keras import KerasExplainer
    from camlens.core.augment import Augment
    from camlens.core.methods import (
        CAM,
        KPCACAM,
        AttentionRollout,
        EigenCAM,
        EigenGradCAM,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        GradCAMPlusPlusAuthors,
        GradCAMPlusPlusPGC,
        HiResCAM,
        LayerCAM,
        Method,
        ShapleyCAM,
        XGradCAM,
    )
    from camlens.core.perturbation import (
        ISCAM,
        RISE,
        SSCAM,
        AblationCAM,
        FasterScoreCAM,
        GroupCAM,
        ReciproCAM,
        ScoreCAM,
    )
    from camlens.core.result import CamResult
    from camlens.errors import CamlensError
    from camlens.lens import Explanation, Lens, Prediction, explain
    from camlens.models import load_model

__all__ = [
    "CAM",
    "ISCAM",
    "KPCACAM",
    "RISE",
    "SSCAM",
    "AblationCAM",
    "Augment",
    "FasterScoreCAM",
    "GroupCAM",
    "ReciproCAM",
    "ScoreCAM",
    "AttentionRollout",
    "CamResult",
    "CamlensError",
    "EigenCAM",
    "EigenGradCAM",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradCAMPlusPlusAuthors",
    "GradCAMPlusPlusPGC",
    "HiResCAM",
    "KerasExplainer",
    "LayerCAM",
    "Lens",
    "Method",
    "Prediction",
    "ShapleyCAM",
    "XGradCAM",
    "explain",
    "load_model",
]
__version__ = "0.1.0"


_WHERE = {
    "Explainer": "camlens.adapters",
    "Augment": "camlens.core.augment",
    "CAM": "camlens.core.methods",
    "KPCACAM": "camlens.core.methods",
    "AttentionRollout": "camlens.core.methods",
    "EigenCAM": "camlens.core.methods",
    "EigenGradCAM": "camlens.core.methods",
    "GradCAM": "camlens.core.methods",
    "GradCAMElementWise": "camlens.core.methods",
    "GradCAMPlusPlus": "camlens.core.methods",
    "GradCAMPlusPlusAuthors": "camlens.core.methods",
    "GradCAMPlusPlusPGC": "camlens.core.methods",
    "HiResCAM": "camlens.core.methods",
    "LayerCAM": "camlens.core.methods",
    "Method": "camlens.core.methods",
    "ShapleyCAM": "camlens.core.methods",
    "XGradCAM": "camlens.core.methods",
    "ISCAM": "camlens.core.perturbation",
    "RISE": "camlens.core.perturbation",
    "SSCAM": "camlens.core.perturbation",
    "AblationCAM": "camlens.core.perturbation",
    "FasterScoreCAM": "camlens.core.perturbation",
    "GroupCAM": "camlens.core.perturbation",
    "ReciproCAM": "camlens.core.perturbation",
    "ScoreCAM": "camlens.core.perturbation",
    "CamResult": "camlens.core.result",
    "CamlensError": "camlens.errors",
    "Explanation": "camlens.lens",
    "Lens": "camlens.lens",
    "Prediction": "camlens.lens",
    "explain": "camlens.lens",
    "load_model": "camlens.models",
    "KerasExplainer": "camlens.adapters.keras",
}
"""Where each public name lives: imported on first use, so that ``import camlens`` (and the
CLI's ``--help``) does not import torch, Keras or timm."""


def __getattr__(name: str) -> object:
    """A public name, imported from its module when first asked for."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'camlens' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
