"""Framework adapters: capture activations, gradients and logits and hand them to the core.

:func:`explainer_for` is the one place that picks a framework for a model object; the
frameworks themselves are imported only when a model of theirs is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from camlens.core.augment import Augment, smoothed
from camlens.core.record import MAX_BATCH
from camlens.errors import CamlensError

if TYPE_CHECKING:
    from camlens.core.methods import Method
    from camlens.core.record import Progress
    from camlens.core.result import CamResult
    from camlens.core.targets import Targets


def explainer_for(model: Any, method: str | Method | Sequence[str | Method], layer: Any = None, *,
                  output: int | str | None = None, fuse: str | None = None, layout: Any = None,
                  max_batch: int = MAX_BATCH, augment: Augment | None = None) -> Any:
    """The explainer of ``model``'s framework: :class:`~camlens.adapters.pytorch.TorchExplainer`
    for an ``nn.Module``, :class:`~camlens.adapters.keras.KerasExplainer` for a Keras 3 model;
    with ``augment``, wrapped in :class:`Augmented`.

    Raises:
        CamlensError: ``model`` is neither.
    """
    from camlens.models.record import framework_of

    if augment is not None and not isinstance(augment, Augment):
        raise CamlensError(f"augment must be a camlens Augment (Augment.smoothgrad(), Augment.tta()...), not "
                           f"{type(augment).__name__}")
    impl: Any
    framework = framework_of(model)
    if framework == "keras":
        from camlens.adapters.keras import KerasExplainer

        impl = KerasExplainer(model, method, layer, output=output, fuse=fuse, layout=layout, max_batch=max_batch)
    elif framework == "torch":
        from camlens.adapters.pytorch import TorchExplainer

        impl = TorchExplainer(model, method, layer, fuse, output=output, layout=layout, max_batch=max_batch)
    else:
        raise CamlensError(f"expected a PyTorch nn.Module or a Keras 3 model, got {type(model).__name__}")
    return impl if augment is None else Augmented(impl, augment, "NHWC" if framework == "keras" else "NCHW")


class Augmented:
    """An adapter's explainer whose maps are each batch's mean over the copies of an
    :class:`~camlens.core.augment.Augment` (see :func:`camlens.core.augment.smoothed`): the
    batch is explained once as it is, for its targets, then every copy for the same columns."""

    def __init__(self, impl: Any, augment: Augment, layout: str) -> None:
        self._impl, self.augment, self._layout = impl, augment, layout

    @property
    def methods(self) -> list[Method]:
        return list(self._impl.methods)

    def __call__(self, batch: Any, targets: Targets = None, *, top: int | None = None,
                 progress: Progress | None = None) -> CamResult:
        first: CamResult = self._impl(batch, targets, top=top, progress=progress)
        tensor = hasattr(batch, "detach")  # a torch tensor (for PyTorch, or Keras on its torch backend)
        x = batch.detach().float().cpu().numpy() if tensor else np.asarray(batch, dtype=np.float32)

        def explain(copy: np.ndarray) -> CamResult:
            result: CamResult = self._impl(_tensor_like(copy, batch) if tensor else copy, list(first.columns),
                                           progress=progress)
            return result

        return smoothed(first, explain, x, self._layout, self.augment)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> Augmented:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensor_like(copy: np.ndarray, batch: Any) -> Any:
    import torch

    return torch.from_numpy(copy).to(batch.device, batch.dtype)


class Explainer:
    """CAMs for a batch with one forward pass, for several methods and layers at once, on a
    PyTorch module (``(N, C, H, W)`` tensors) or a Keras 3 model (``(N, H, W, C)`` arrays).

    Args:
        model: an ``nn.Module`` or a Keras 3 model: a classifier (any head), a regression or
            embedding model, a segmentation model, or (PyTorch) a torchvision detector.
        method: a method name (``camlens methods`` lists them), a :class:`~camlens.core.methods.Method`,
            or a sequence of them.
        layer: a layer name, a module/layer object, a sequence of those, or ``None`` for the
            last spatial layer before the classifier's pooling.
        output: the output to explain: of a multi-output Keras model (index or name), of a
            PyTorch model returning a tuple (index) or a dict/``ModelOutput`` (key).
        fuse: with several layers, also combine each method's maps into one, stored under the
            layer key ``"mean(layer3+layer4)"`` (``mean``, ``max`` or ``product``).
        layout: a layer's layout when the model does not tell it
            (``"tokens:1"``, ``"tokens:1:14x14"``, ``"nhwc"``; see :class:`camlens.core.layouts.Layout`).
        max_batch: inputs per extra forward pass of the methods that run the model again
            (Score-CAM, Ablation-CAM, RISE...): bounds their memory.
        augment: average every method's maps over noisy, flipped or rescaled copies of each
            batch (:class:`~camlens.core.augment.Augment`: ``Augment.smoothgrad()``, ``Augment.tta()``).

    Maps come back ``(N, K, h, w)`` for both frameworks. Hooks live only during each call.
    """

    def __init__(self, model: Any, method: str | Method | Sequence[str | Method] = "gradcam", layer: Any = None, *,
                 output: int | str | None = None, fuse: str | None = None, layout: Any = None,
                 max_batch: int = MAX_BATCH, augment: Augment | None = None) -> None:
        self._impl = explainer_for(model, method, layer, output=output, fuse=fuse, layout=layout, max_batch=max_batch,
                                   augment=augment)

    @property
    def methods(self) -> list[Method]:
        """The resolved methods, canonical names in ``.name``."""
        return list(self._impl.methods)

    def __call__(self, batch: Any, targets: Targets = None, *, top: int | None = None,
                 progress: Progress | None = None) -> CamResult:
        """Explain ``batch`` (already preprocessed). ``targets``: a :mod:`camlens.targets` kind
        or a list of them, or class indices as in :func:`camlens.core.targets.as_targets`;
        ``top`` the best classes when ``targets`` is None; ``progress(what, done, total)`` is
        told how far the methods that run the model again are."""
        result: CamResult = self._impl(batch, targets, top=top, progress=progress)
        return result

    def close(self) -> None:
        """Drop references to the model."""
        self._impl.close()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Explainer", "explainer_for"]
