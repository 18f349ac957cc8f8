"""What the high-level API needs from a framework, behind one small interface.

:class:`~camlens.lens.Lens` and the CLI talk to a :class:`Backend`; each framework adapter
provides one. Frameworks are imported only when a model of theirs is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from camlens.core.record import MAX_BATCH
from camlens.core.result import CamResult
from camlens.core.targets import Output

if TYPE_CHECKING:
    from camlens.core.augment import Augment
    from camlens.models.record import LoadedModel

LayerRow = tuple[str, str, tuple[int | None, ...] | None, str]
"""``(name, type, output shape, layout)``; the layout is empty for outputs that are not feature maps."""
ExplainerFn = Callable[..., CamResult]


class Backend(Protocol):
    """Framework operations on a :class:`~camlens.models.LoadedModel`."""

    def to_input(self, loaded: LoadedModel, batch: np.ndarray) -> Any:
        """The preprocessed NumPy batch as the model's input."""

    def output(self, loaded: LoadedModel, batch: Any) -> Output:
        """The model's output for a batch as NumPy-readable :class:`~camlens.core.targets.Output`
        (``.array``, ``.probabilities``), no gradients."""

    def explainer(self, loaded: LoadedModel, method: Any, layer: Any, fuse: str | None = None,
                  layout: Any = None, max_batch: int = MAX_BATCH, augment: Augment | None = None) -> ExplainerFn:
        """A callable ``(batch, targets, top=None, progress=None) -> CamResult``."""

    def feature_maps(self, loaded: LoadedModel, batch: Any, layer: Any) -> tuple[str, np.ndarray]:
        """``(layer name, (N, C, h, w) activations)``."""

    def layers(self, loaded: LoadedModel) -> tuple[list[LayerRow], str]:
        """``(name, type, output shape, layout)`` rows, and the layer chosen automatically."""


class _Explains:
    """The explainer of either framework: :func:`camlens.adapters.explainer_for` picks it."""

    def explainer(self, loaded: LoadedModel, method: Any, layer: Any, fuse: str | None = None,
                  layout: Any = None, max_batch: int = MAX_BATCH, augment: Augment | None = None) -> ExplainerFn:
        from camlens.adapters import explainer_for

        return explainer_for(loaded.model, method, layer, output=loaded.output, fuse=fuse, layout=layout,  # type: ignore[no-any-return]
                             max_batch=max_batch, augment=augment)


class TorchBackend(_Explains):
    """PyTorch models (``nn.Module``)."""

    def to_input(self, loaded: LoadedModel, batch: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(batch).to(loaded.device)

    def output(self, loaded: LoadedModel, batch: Any) -> Output:
        import torch

        from camlens.adapters.pytorch.outputs import canonical

        with torch.no_grad():
            raw = loaded.model(batch)
        return canonical(raw, loaded.output, (int(batch.shape[-2]), int(batch.shape[-1])), batch.device)

    def feature_maps(self, loaded: LoadedModel, batch: Any, layer: Any) -> tuple[str, np.ndarray]:
        from camlens.adapters.pytorch.extractor import feature_maps

        return feature_maps(loaded.model, batch, layer, output=loaded.output)

    def layers(self, loaded: LoadedModel) -> tuple[list[LayerRow], str]:
        from camlens.adapters.pytorch.extractor import TorchExplainer, uncompiled
        from camlens.adapters.pytorch.layers import trace

        example = self.to_input(loaded, loaded.preprocessing([_blank(loaded)]))
        infos = trace(uncompiled(loaded.model), example)
        rows: list[LayerRow] = [(i.name, i.kind, i.output_shape, i.layout.describe(i.grid) if i.layout and i.spatial else "")
                                for i in infos]
        with TorchExplainer(loaded.model, "eigencam", output=loaded.output) as ex:
            return rows, ex.layers(example)[0]


class KerasBackend(_Explains):
    """Keras 3 models, on whichever backend ``KERAS_BACKEND`` selects."""

    def to_input(self, loaded: LoadedModel, batch: np.ndarray) -> Any:
        return batch

    def output(self, loaded: LoadedModel, batch: Any) -> Output:
        from camlens.adapters.keras import routes
        from camlens.adapters.keras.head import find_head

        head = find_head(loaded.model, loaded.output)
        return routes.forward_pass(loaded.model, batch, [], head, with_gradients=False).output

    def feature_maps(self, loaded: LoadedModel, batch: Any, layer: Any) -> tuple[str, np.ndarray]:
        from camlens.adapters.keras.extractor import feature_maps

        return feature_maps(loaded.model, batch, layer, output=loaded.output)

    def layers(self, loaded: LoadedModel) -> tuple[list[LayerRow], str]:
        from camlens.adapters.keras.extractor import layer_table
        from camlens.adapters.keras.graph import auto_layer, layout_of, name_of, resolve, spatial
        from camlens.adapters.keras.head import find_head

        model = loaded.model
        head = find_head(model, loaded.output if loaded.output is not None or len(model.outputs) == 1 else 0)

        def layout(name: str, shape: tuple[int | None, ...] | None) -> str:
            found = layout_of(model, resolve(model, name)) if shape is not None and len(shape) == 3 else None
            if found is not None:
                return found.describe()
            return "NHWC" if spatial(shape) else ""

        rows = [(name, kind, shape, layout(name, shape)) for name, kind, shape in layer_table(model)]
        return rows, name_of(auto_layer(loaded.model, head.maps, head.dense_path))


def backend_for(loaded: LoadedModel) -> Backend:
    """The backend of a loaded model's framework."""
    return KerasBackend() if loaded.framework == "keras" else TorchBackend()


def _blank(loaded: LoadedModel) -> Any:
    from PIL import Image

    h, w = loaded.preprocessing.input_size
    return Image.new("RGB", (w, h))


__all__ = ["Backend", "KerasBackend", "TorchBackend", "backend_for"]
