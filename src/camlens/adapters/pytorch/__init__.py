"""PyTorch adapter: hooks that capture activations and gradients for the core methods."""

from camlens.adapters.pytorch.extractor import TorchExplainer, feature_maps
from camlens.adapters.pytorch.layers import LayerInfo, auto_layer, resolve, trace

__all__ = ["LayerInfo", "TorchExplainer", "auto_layer", "feature_maps", "resolve", "trace"]
