"""Finding target layers in a PyTorch model: by name, by module, or automatically."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camlens.errors import LayerError

LayerSpec = str | nn.Module
_TRACE_LOCK = threading.Lock()

_NOT_TARGETS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
)


@dataclass(frozen=True)
class LayerInfo:
    """One module as seen during a forward pass (in the order modules finished)."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None

    @property
    def spatial(self) -> bool:
        """True when the output is ``(N, C, H, W)`` with more than one spatial position."""
        s = self.output_shape
        return s is not None and len(s) == 4 and s[2] * s[3] > 1


def resolve(model: nn.Module, spec: LayerSpec) -> tuple[str, nn.Module]:
    """Return ``(dotted name, module)`` for a layer given by dotted name or by module.

    Raises:
        LayerError: the name or module is not in the model; the message lists close names.
    """
    modules = dict(model.named_modules())
    if isinstance(spec, nn.Module):
        for name, module in modules.items():
            if module is spec and name:
                return name, module
        raise LayerError(f"module {type(spec).__name__} is not a sub-module of the model")
    name = spec.strip()
    if name in modules and name:
        return name, modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `camlens layers MODEL` lists them"
    raise LayerError(f"model has no layer {spec!r}{hint}")


def trace(model: nn.Module, example: torch.Tensor, output: list[object] | None = None) -> list[LayerInfo]:
    """Run ``example`` through the model once (no gradients) and record every named module's
    output shape, in the order modules finished (and the model's output in ``output``, when
    given). Hooks are removed before returning.

    The model is left as it was: the random number generators are restored afterwards
    (dropout draws nothing from the caller's stream), and a model in training mode runs on
    copies of its buffers, so BatchNorm statistics are not updated, with the whole batch
    (a batch of one would fail in BatchNorm after a 1x1 pooling, as in Inception-v3's
    auxiliary head); in eval mode one sample is enough."""
    seen: list[LayerInfo] = []
    handles = []
    owner = threading.get_ident()

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if threading.get_ident() != owner:
                return
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            seen.append(LayerInfo(name, type(module).__name__, shape))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        training = any(m.training for m in model.modules())
        with torch.no_grad(), torch.random.fork_rng(devices=[example.device] if example.is_cuda else []):
            if training:  # functional_call swaps the buffers on the module: no other thread may trace meanwhile
                state = {**dict(model.named_parameters()), **{k: b.clone() for k, b in model.named_buffers()}}
                with _TRACE_LOCK:
                    result = torch.func.functional_call(model, state, (example,))
            else:
                result = model(example[:1])
        if output is not None:
            output.append(result)
    finally:
        for handle in handles:
            handle.remove()
    last: dict[str, LayerInfo] = {}
    for info in seen:  # a module called several times keeps its last call, at that position
        last.pop(info.name, None)
        last[info.name] = info
    return list(last.values())


def auto_layer(model: nn.Module, layers: Sequence[LayerInfo], backbone: bool = False) -> str:
    """The last module to finish with a spatial ``(N, C, H, W)`` output that is not a pooling,
    dropout or identity layer: the features that feed the classifier's global pooling.

    With ``backbone`` (a segmentation model or a detector, whose last spatial layers are its
    dense head), the search keeps to the model's ``backbone.body`` (torchvision's FPN
    detectors), ``backbone.features`` (SSD) or ``backbone`` (torchvision segmentation, most
    wrappers) when it has one: the last backbone stage, as pytorch-grad-cam's examples choose
    by hand."""
    modules = dict(model.named_modules())
    prefixes = ("backbone.body.", "backbone.features.", "backbone.")
    prefix = next((p for p in prefixes if backbone and p[:-1] in modules), "")
    for info in reversed(layers):
        if info.name.startswith(prefix) and info.spatial and not isinstance(modules[info.name], _NOT_TARGETS):
            return info.name
    raise LayerError("found no layer with a spatial (N, C, H, W) output; give --layer explicitly")
