"""Framework-free core: methods over what adapters capture, maps, targets.

Everything here works on NumPy arrays laid out as ``(N, C, H, W)``; framework adapters
(:mod:`camlens.adapters`) run the model and hand over a :class:`~camlens.core.record.ForwardPass`.
"""

from camlens.core import perturbation  # noqa: F401  (registers the methods that run the model again)
from camlens.core.maps import normalize, upsample
from camlens.core.methods import Method, canonical_name, get_method, method_classes, method_names
from camlens.core.record import ATTENTION_NEEDS, ClassifierHead, ForwardPass, LayerRecord, Need

__all__ = [
    "ClassifierHead",
    "ForwardPass",
    "LayerRecord",
    "Method",
    "ATTENTION_NEEDS",
    "Need",
    "canonical_name",
    "get_method",
    "method_classes",
    "method_names",
    "normalize",
    "upsample",
]
