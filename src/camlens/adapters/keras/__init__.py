"""Keras 3 adapter (TensorFlow, JAX and PyTorch backends): same methods, same results."""

from camlens.adapters.keras.extractor import KerasExplainer, feature_maps, layer_table

__all__ = ["KerasExplainer", "feature_maps", "layer_table"]
