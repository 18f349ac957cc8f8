"""The batched low-level API for Keras 3 models, same results as the PyTorch one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from camlens.adapters.keras import routes
from camlens.adapters.keras.graph import LayerPath, auto_layer, layout_of, name_of, output_shape, resolve
from camlens.adapters.keras.head import Head, find_head
from camlens.arguments import count, layer_specs
from camlens.core.compute import needs_of, run
from camlens.core.fusion import check_fusion
from camlens.core.head import check_cam_layers, no_head, pooled_features
from camlens.core.layouts import Layout
from camlens.core.methods import Method, methods_from
from camlens.core.record import MAX_BATCH, ClassifierHead, Need, Progress
from camlens.core.result import CamResult
from camlens.core.targets import Targets
from camlens.core.targets import resolve as resolve_columns
from camlens.errors import CamlensError, LayerError, MethodError

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
        layout: how a layer's output holds its map when the graph does not show it (see
            :class:`camlens.core.layouts.Layout`), for every layer or as a dict by layer name:
            ``(N, h, w, C)`` outputs are NHWC, ``(N, L, C)`` tokens after a patch embedding are
            on that embedding's grid (:func:`camlens.adapters.keras.graph.layout_of`); other
            token layers need e.g. ``layout="tokens:1"``.
        max_batch: inputs per extra forward pass of the methods that run the model again.

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
        layout: str | Layout | Mapping[str, str | Layout] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.methods: list[Method] = methods_from(method)
        self._max_batch = count(max_batch, "max_batch")
        self._needs = needs_of(self.methods)
        specs = layer_specs(layer, keras.layers.Layer)
        check_fusion(fuse, len(specs))
        self._fuse = fuse
        self.model: Any = model
        self.head: Head = find_head(model, output)
        dense = self.head.maps
        self.paths: list[LayerPath] = [auto_layer(model, dense, self.head.dense_path) if s is None else resolve(model, s)
                                       for s in specs]
        self.layouts = self._layouts(layout)
        if Need.CLASS_WEIGHTS in self._needs:
            self._check_cam_layers()
        if Need.HESSIAN in self._needs:
            self._check_second_order()

    def _check_second_order(self) -> None:
        """TensorFlow's LayerNormalization has wrong second derivatives (against finite
        differences): refuse Hessian products that would go through one."""
        import keras

        if keras.backend.backend() != "tensorflow":
            return
        from camlens.adapters.keras.graph import walk

        layers = list(walk(self.model))
        first = min(i for i, (p, _) in enumerate(layers) if p in self.paths)
        norms = [p for p, layer in layers[first + 1:] if isinstance(layer, keras.layers.LayerNormalization)]
        if norms:
            raise MethodError(f"second-order gradients (Shapley-CAM) through LayerNormalization ({name_of(norms[0])}) are "
                              "wrong on the TensorFlow backend; use KERAS_BACKEND=jax or torch, or a first-order method")

    def _layouts(self, stated: str | Layout | Mapping[str, str | Layout] | None) -> dict[LayerPath, Layout]:
        """Each target layer's layout: stated, else found from the graph (when it is)."""
        found = {p: layout_of(self.model, p) for p in self.paths}
        if stated is None:
            return {p: lay for p, lay in found.items() if lay is not None}
        if not isinstance(stated, Mapping):
            return dict.fromkeys(self.paths, Layout.parse(stated))
        by_name = {name_of(p): p for p in self.paths}
        out = {p: lay for p, lay in found.items() if lay is not None}
        for key, value in stated.items():
            if key not in by_name:
                raise LayerError(f"layout= names {key!r}, which is not a target layer ({', '.join(by_name)})")
            out[by_name[key]] = Layout.parse(value)
        return out

    def _check_cam_layers(self) -> None:
        feeding = name_of(auto_layer(self.model))
        if self.head.dense is None:
            raise no_head(feeding, "the model's output does not come from a Dense layer")
        check_cam_layers(feeding, self.layer_names)

    @property
    def layer_names(self) -> list[str]:
        return [name_of(p) for p in self.paths]

    def __call__(self, batch: Any, targets: Targets = None, *, top: int | None = None,
                 progress: Progress | None = None) -> CamResult:
        """Explain ``batch`` (``(N, H, W, C)``, already preprocessed); ``targets``, ``top`` and
        ``progress`` as for :class:`~camlens.adapters.pytorch.TorchExplainer`."""
        if self.model is None:
            raise CamlensError("this explainer is closed")
        if np.ndim(batch) != 4:
            raise CamlensError("expected a batch of shape (N, H, W, C)")
        second = Need.HESSIAN in self._needs
        grads = bool(self._needs & {Need.GRADIENTS, Need.HESSIAN})
        fwd = routes.forward_pass(self.model, batch, self.paths, self.head, grads, second, self.layouts)
        columns = resolve_columns(targets, fwd.output, top)
        fwd.bind(columns)
        if Need.CLASS_WEIGHTS in self._needs:
            name = name_of(self.paths[0])
            eps = _EPS.get(str(getattr(self.head.dense, "compute_dtype", "float32")), _EPS["float32"])
            features = pooled_features(fwd.activations[name], fwd.head_input, name, eps=eps)
            fwd.head = ClassifierHead(name, features, self.head.class_weights())
        if Need.FORWARDS in self._needs:
            fwd.probe = routes.KerasProbe(self.model, batch, self.paths, self.head, columns, self._max_batch,
                                          capture=fwd)
        return run(fwd, self.methods, columns, self._fuse, progress)

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
    found = layout_of(model, path)
    fwd = routes.forward_pass(model, batch, [path], head, with_gradients=False, layouts={path: found} if found else None)
    return name_of(path), fwd.activations[name_of(path)]


def layer_table(model: Any) -> list[tuple[str, str, tuple[int | None, ...] | None]]:
    """``(name, type, output shape)`` of every layer, nested ones included, in graph order."""
    from camlens.adapters.keras.graph import walk

    return [(name_of(p), type(layer).__name__, output_shape(layer)) for p, layer in walk(model)]


__all__ = ["KerasExplainer", "feature_maps", "layer_table"]
