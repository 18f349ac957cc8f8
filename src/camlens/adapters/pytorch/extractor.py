"""The batched low-level API for PyTorch models: ``with GradCAM(model, layer="layer4") as cam``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from camlens.adapters.pytorch import capture as cap
from camlens.adapters.pytorch.head import LinearHead, find_linear_head, verify_head
from camlens.adapters.pytorch.layers import LayerSpec, auto_layer, resolve, trace
from camlens.core.capture import Capture
from camlens.core.methods import Method, get_method
from camlens.core.scores import softmax
from camlens.errors import CamlensError, MethodError, TargetError

Targets = (
    int
    | Sequence[int]
    | Sequence[Sequence[int]]
    | np.ndarray
    | torch.Tensor
    | Callable[[torch.Tensor], torch.Tensor]
    | None
)


@dataclass(frozen=True)
class CamResult:
    """Raw maps for a batch.

    Attributes:
        logits: ``(N, classes)`` pre-softmax scores.
        targets: ``(N, K)`` class indices explained for each sample.
        maps: ``maps[method][layer]`` is ``(N, K, h, w)``, at the layer's resolution, not
            normalised (see :func:`camlens.core.normalize` and :func:`camlens.core.upsample`).
        activations: layer -> ``(N, C, h, w)`` captured feature maps.
    """

    logits: np.ndarray
    targets: np.ndarray
    maps: dict[str, dict[str, np.ndarray]]
    activations: dict[str, np.ndarray] = field(repr=False)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, ``(N, classes)``."""
        return softmax(self.logits)

    def map(self, method: str | None = None, layer: str | None = None) -> np.ndarray:
        """The ``(N, K, h, w)`` maps of one method and layer (either may be omitted when unique)."""
        by_method = self.maps[method] if method else _only(self.maps, "method")
        return by_method[layer] if layer else _only(by_method, "layer")


def _only(d: dict[str, np.ndarray] | dict[str, dict[str, np.ndarray]], what: str):  # type: ignore[no-untyped-def]
    if len(d) != 1:
        raise KeyError(f"several {what}s computed ({', '.join(d)}); name one")
    return next(iter(d.values()))


def resolve_targets(targets: Targets, logits: torch.Tensor, top: int | None = None) -> torch.Tensor:
    """Turn a target spec into ``(N, K)`` class indices.

    ``None`` -> top-1 (or the ``top`` best); an int -> that class for every sample; a sequence
    of N ints -> one class per sample; an ``(N, K)`` array -> K classes per sample; a callable
    -> called with the detached ``(N, classes)`` logits, returning any of the above.
    """
    n, classes = logits.shape
    if callable(targets):
        targets = targets(logits.detach())
    if targets is None:
        return logits.detach().topk(min(top or 1, classes), dim=1).indices
    t = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
    if t.ndim == 0:
        t = t.expand(n, 1)
    elif t.ndim == 1:
        if t.shape[0] != n:
            raise TargetError(f"{t.shape[0]} targets for a batch of {n}; give one per sample")
        t = t[:, None]
    elif t.ndim != 2 or t.shape[0] != n:
        raise TargetError(f"targets of shape {tuple(t.shape)} do not fit a batch of {n}")
    bad = t[(t < 0) | (t >= classes)]
    if bad.numel():
        raise TargetError(f"class index {int(bad[0])} is out of range: the model has {classes} classes")
    return t.contiguous()


class Explainer:
    """Compute CAMs for a batch with one forward pass, for several methods and layers at once.

    Args:
        model: any ``nn.Module`` returning ``(N, classes)`` scores. Its mode and flags are not
            changed; put it in ``eval()`` yourself (a warning reminds you otherwise).
        method: a method name (``"cam"``, ``"gradcam"``, ``"gradcam++"``), a
            :class:`~camlens.core.Method`, or a sequence of them.
        layer: a dotted module name, a module, a sequence of those, or ``None`` for the last
            spatial layer before the classifier's global pooling.

    Hooks live only during each call. Use as a context manager (or call :meth:`close`) to drop
    the references to the model and its layers.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | Method | Sequence[str | Method] = "gradcam",
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
    ) -> None:
        methods = [method] if isinstance(method, (str, Method)) else list(method)
        self.methods: list[Method] = [get_method(m) if isinstance(m, str) else m for m in methods]
        if not self.methods:
            raise MethodError("no method given")
        specs: list[LayerSpec | None] = [layer] if layer is None or isinstance(layer, (str, nn.Module)) else [*layer]
        self._model: nn.Module | None = model
        self._specs: list[LayerSpec | None] = specs
        self._layers: dict[str, nn.Module] | None = None
        self._head: LinearHead | None = None
        if all(s is not None for s in specs) and not self._needs_head:
            self._layers = dict(resolve(model, s) for s in specs)  # type: ignore[arg-type]

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            raise CamlensError("this explainer is closed")
        return self._model

    @property
    def _needs_head(self) -> bool:
        return any(m.needs_class_weights for m in self.methods)

    @property
    def _needs_gradients(self) -> bool:
        return any(m.needs_gradients for m in self.methods)

    def layers(self, example: torch.Tensor) -> list[str]:
        """Names of the target layers, resolving automatic ones with ``example`` if needed."""
        return list(self._resolve(example))

    def _resolve(self, example: torch.Tensor) -> dict[str, nn.Module]:
        if self._layers is not None:
            return self._layers
        model = self.model
        traced = trace(model, example[:1])
        layers: dict[str, nn.Module] = {}
        for spec in self._specs:
            name, module = resolve(model, spec if spec is not None else auto_layer(model, traced))
            layers[name] = module
        if self._needs_head:
            classes = next(i.output_shape for i in reversed(traced) if i.output_shape)[-1]
            head_layer = auto_layer(model, traced)
            self._head = find_linear_head(model, head_layer, traced, classes)
            others = [n for n in layers if n != head_layer]
            if others:
                raise MethodError(
                    f"CAM applies only to the layer that feeds the classifier ({head_layer!r}), "
                    f"not {others[0]!r}; use gradcam for other layers"
                )
        self._layers = layers
        return layers

    def __call__(self, batch: torch.Tensor, targets: Targets = None, *, top: int | None = None) -> CamResult:
        """Explain ``batch`` (``(N, 3, H, W)``, already preprocessed, on the model's device).

        Args:
            targets: see :func:`resolve_targets`; ``None`` explains the top-1 class.
            top: with ``targets=None``, explain the ``top`` best classes of each sample.
        """
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
            raise CamlensError("expected a batch tensor of shape (N, C, H, W)")
        model = self.model
        if model.training:
            warnings.warn("model is in training mode; call model.eval() for stable maps", stacklevel=2)
        with torch.inference_mode(False):  # tensors made below must be usable by autograd
            return self._explain(model, batch, targets, top)

    def _explain(self, model: nn.Module, batch: torch.Tensor, targets: Targets, top: int | None) -> CamResult:
        layers = self._resolve(batch)
        fwd = cap.forward(
            model,
            batch,
            layers,
            with_gradients=self._needs_gradients,
            head=self._head.linear if self._head else None,
        )
        t = resolve_targets(targets, fwd.logits, top)
        grads = cap.gradients(fwd, t) if self._needs_gradients else None
        acts = {name: a.detach().float().cpu().numpy() for name, a in fwd.activations.items()}
        head_features = class_weights = None
        if self._head is not None:
            self._head = verify_head(self._head, fwd.activations[self._head.layer].detach(), fwd.head_input)  # type: ignore[arg-type]
            head_features = self._head.features(fwd.activations[self._head.layer].detach()).float().cpu().numpy()
            class_weights = self._head.linear.weight.detach().float().cpu().numpy()
        targets_np = t.cpu().numpy()
        maps: dict[str, dict[str, np.ndarray]] = {m.name: {} for m in self.methods}
        for name, a in acts.items():
            per_k: dict[str, list[np.ndarray]] = {m.name: [] for m in self.methods}
            for k in range(t.shape[1]):
                column = targets_np[:, k]
                captured = Capture(a, column, gradients=grads[k][name].float().cpu().numpy() if grads else None)
                for m in self.methods:
                    if m.needs_class_weights:  # CAM weighs what the linear head pools (ReLU'd for DenseNet)
                        assert head_features is not None and class_weights is not None
                        per_k[m.name].append(m(Capture(head_features, column, class_weights=class_weights[column])))
                    else:
                        per_k[m.name].append(m(captured))
            for m in self.methods:
                maps[m.name][name] = np.stack(per_k[m.name], axis=1)
        return CamResult(logits=fwd.logits.detach().float().cpu().numpy(), targets=targets_np, maps=maps, activations=acts)

    def close(self) -> None:
        """Drop references to the model and its layers."""
        self._model = self._layers = self._head = None

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CAM(Explainer):
    """:class:`Explainer` fixed to CAM (Zhou et al. 2016); see :class:`camlens.core.CAM`."""

    def __init__(self, model: nn.Module, layer: LayerSpec | Sequence[LayerSpec] | None = None) -> None:
        super().__init__(model, "cam", layer)


class GradCAM(Explainer):
    """:class:`Explainer` fixed to Grad-CAM (Selvaraju et al. 2017); see :class:`camlens.core.GradCAM`."""

    def __init__(self, model: nn.Module, layer: LayerSpec | Sequence[LayerSpec] | None = None) -> None:
        super().__init__(model, "gradcam", layer)


class GradCAMPlusPlus(Explainer):
    """:class:`Explainer` fixed to Grad-CAM++ (Chattopadhay et al. 2018); see
    :class:`camlens.core.GradCAMPlusPlus`."""

    def __init__(self, model: nn.Module, layer: LayerSpec | Sequence[LayerSpec] | None = None) -> None:
        super().__init__(model, "gradcam++", layer)


def feature_maps(model: nn.Module, batch: torch.Tensor, layer: LayerSpec | None = None) -> tuple[str, np.ndarray]:
    """Activations of one layer (automatic when ``None``) for a batch: ``(name, (N, C, h, w))``.

    One forward pass without gradients; hooks are removed before returning.
    """
    name, module = resolve(model, layer if layer is not None else auto_layer(model, trace(model, batch[:1])))
    fwd = cap.forward(model, batch, {name: module}, with_gradients=False)
    return name, fwd.activations[name].float().cpu().numpy()
