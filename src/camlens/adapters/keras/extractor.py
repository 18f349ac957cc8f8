"""The batched low-level API for Keras 3 models, same results as the PyTorch one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from camlens.adapters.keras import routes
from camlens.adapters.keras.graph import LayerPath, auto_layer, name_of, output_shape, resolve
from camlens.adapters.keras.head import Head, find_head
from camlens.core.compute import needs_of, run
from camlens.core.fusion import check_fusion
from camlens.core.head import check_cam_layers, no_head, pooled_features
from camlens.core.methods import Method, methods_from
from camlens.core.record import ClassifierHead, Need
from camlens.core.result import CamResult
from camlens.core.targets import Targets
from camlens.core.targets import resolve as resolve_columns
from camlens.errors import CamlensError

KerasLayerSpec = str | Any
_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}  # machine epsilons


class KerasExplainer:
    """CAMs for a Keras model (functional, Sequential, nested), one forward pass per batch.

    Args:
        model: a built Keras 3 model whose (chosen) output is ``(N, classes)`` scores or
            ``(N, h, w, classes)`` segmentation maps, with or without a final softmax/sigmoid
            (pre-activation scores are explained either way).
        method: a method name, a :class:`~camlens.core.Method`, or a sequence of them.
        layer: ``"name"``, ``"nested_model/name"``, a layer object, a sequence of those, or
            ``None`` for the last spatial layer before global pooling.
        output: which output of a multi-output model to explain (index or layer name).
        fuse: with several layers, also combine each method's maps into one (see
            :func:`camlens.core.fusion.fuse`).

    Inputs are channels-last batches as the model takes them; maps and activations come back
    channels-first ``(N, C, h, w)``, like the PyTorch adapter's. The model is never modified.
    """

    def __init__(
        self,
        model: Any,
        method: str | Method | Sequence[str | Method] = "gradcam",
        layer: KerasLayerSpec | Sequence[KerasLayerSpec] | None = None,
        output: int | str | None = None,
        fuse: str | None = None,
    ) -> None:
        self.methods: list[Method] = methods_from(method)
        self._needs = needs_of(self.methods)
        specs = [layer] if layer is None or isinstance(layer, str) or not isinstance(layer, Sequence) else list(layer)
        check_fusion(fuse, len(specs))
        self._fuse = fuse
        self.model: Any = model
        self.head: Head = find_head(model, output)
        dense = self.head.maps
        self.paths: list[LayerPath] = [auto_layer(model, dense, self.head.dense_path) if s is None else resolve(model, s)
                                       for s in specs]
        if Need.CLASS_WEIGHTS in self._needs:
            self._check_cam_layers()

    def _check_cam_layers(self) -> None:
        feeding = name_of(auto_layer(self.model))
        if self.head.dense is None:
            raise no_head(feeding, "the model's output does not come from a Dense layer")
        check_cam_layers(feeding, self.layer_names)

    @property
    def layer_names(self) -> list[str]:
        return [name_of(p) for p in self.paths]

    def __call__(self, batch: Any, targets: Targets = None, *, top: int | None = None) -> CamResult:
        """Explain ``batch`` (``(N, H, W, C)``, already preprocessed); ``targets`` as for
        :class:`~camlens.adapters.pytorch.TorchExplainer` (:mod:`camlens.targets` kinds, indices...)."""
        if self.model is None:
            raise CamlensError("this explainer is closed")
        if np.ndim(batch) != 4:
            raise CamlensError("expected a batch of shape (N, H, W, C)")
        second = Need.HESSIAN in self._needs
        grads = bool(self._needs & {Need.GRADIENTS, Need.HESSIAN})
        fwd = routes.forward_pass(self.model, batch, self.paths, self.head, grads, second)
        columns = resolve_columns(targets, fwd.output, top)
        fwd.bind(columns)
        if Need.CLASS_WEIGHTS in self._needs:
            name = name_of(self.paths[0])
            eps = _EPS.get(str(getattr(self.head.dense, "compute_dtype", "float32")), _EPS["float32"])
            features = pooled_features(fwd.activations[name], fwd.head_input, name, eps=eps)
            fwd.head = ClassifierHead(name, features, self.head.class_weights())
        if Need.FORWARDS in self._needs:
            fwd.probe = routes.KerasProbe(self.model, batch, self.paths, self.head, columns)
        return run(fwd, self.methods, columns, self._fuse)

    def close(self) -> None:
        """Drop the reference to the model."""
        self.model = None

    def __enter__(self) -> KerasExplainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def feature_maps(
    model: Any, batch: Any, layer: KerasLayerSpec | None = None, output: int | str | None = None
) -> tuple[str, np.ndarray]:
    """Activations ``(N, C, h, w)`` of one layer (automatic when None), no gradients."""
    head = find_head(model, output if output is not None or len(model.outputs) == 1 else 0)
    path = auto_layer(model, head.maps, head.dense_path) if layer is None else resolve(model, layer)
    fwd = routes.forward_pass(model, batch, [path], head, with_gradients=False)
    return name_of(path), fwd.activations[name_of(path)]


def layer_table(model: Any) -> list[tuple[str, str, tuple[int | None, ...] | None]]:
    """``(name, type, output shape)`` of every layer, nested ones included, in graph order."""
    from camlens.adapters.keras.graph import walk

    return [(name_of(p), type(layer).__name__, output_shape(layer)) for p, layer in walk(model)]


__all__ = ["KerasExplainer", "feature_maps", "layer_table"]
