"""Model loading, labels and preprocessing."""

from camlens.models.checkpoint import save_checkpoint
from camlens.models.labels import Labels
from camlens.models.preprocess import Preprocessing
from camlens.models.registry import DEFAULT_MODEL, LoadedModel, load_model, model_names, resolve_device, wrap_model

__all__ = [
    "DEFAULT_MODEL",
    "Labels",
    "LoadedModel",
    "Preprocessing",
    "load_model",
    "model_names",
    "resolve_device",
    "save_checkpoint",
    "wrap_model",
]
