"""The loaded-model record every layer passes around: a leaf module (it imports no adapter and
no framework), so that model loading and the framework adapters both depend on it and not on
each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from camlens.models.labels import Labels
from camlens.models.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch


def framework_of(model: object) -> str | None:
    """``"keras"`` for a Keras 3 model, ``"torch"`` for an ``nn.Module``, else None; neither
    framework is imported for an object that is not one of its own."""
    mro = type(model).__mro__
    if any(c.__module__.startswith("keras") for c in mro) and hasattr(model, "layers"):
        return "keras"
    if any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in mro):
        return "torch"
    return None


@dataclass
class LoadedModel:
    """A model ready to explain, with labels and preprocessing.

    ``framework`` is ``"torch"`` (an ``nn.Module`` in eval mode on ``device``) or ``"keras"``
    (a Keras 3 model); ``output`` picks the output to explain. ``embedding`` marks a model
    that outputs features, not class scores (``headless``): it makes no class predictions.
    """

    name: str
    model: Any
    labels: Labels
    preprocessing: Preprocessing
    device: torch.device
    framework: str = "torch"
    output: int | str | None = None
    embedding: bool = False
