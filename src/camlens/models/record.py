"""The loaded-model record every layer passes around: a leaf module (it imports no adapter and
no framework), so that model loading and the framework adapters both depend on it and not on
each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlens.models.labels import Labels
from camlens.models.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch


def model_spec(model: str, weights: str | Path | None = None, labels: str | Path | None = None) -> dict[str, str | None]:
    """How a model was asked for, comparable across runs and folders: the name as given (a
    model file, the weights and the labels as absolute paths)."""

    def where(path: str | Path | None) -> str | None:
        return None if path is None else str(Path(path).resolve())

    return {"model": where(model) if Path(model).is_file() else model, "weights": where(weights), "labels": where(labels)}


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
