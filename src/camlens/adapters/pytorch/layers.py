"""Finding target layers in a PyTorch model: by name, by module, or automatically."""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camlens.adapters.pytorch.layouts import layout_of
from camlens.core.layouts import TOKENS, Layout
from camlens.errors import CamlensError, LayerError, ModelFailure

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
    """One module as seen during a forward pass (in the order modules finished), with the
    layout of its output (None when it holds no feature map) and that output's grid."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    layout: Layout | None = None
    grid: tuple[int, int] | None = None

    @property
    def spatial(self) -> bool:
        """True when the output is a feature map with more than one position."""
        return self.grid is not None and self.grid[0] * self.grid[1] > 1


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


def call_model(model: nn.Module, x: torch.Tensor) -> object:
    """``model(x)``, a failure of the model's own code (a wrong number of channels, a dtype it
    does not take) raised as one-line :class:`ModelFailure`."""
    try:
        return model(x)
    except CamlensError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or ["no details"])[0][:300]
        raise ModelFailure(f"the model failed on an input of shape {tuple(x.shape)} ({x.dtype}): "
                         f"{type(exc).__name__}: {first}") from exc


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
    modules = dict(model.named_modules())
    training = any(m.training for m in model.modules())
    batch = int(example.shape[0]) if training else 1
    size = (int(example.shape[-2]), int(example.shape[-1]))

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if threading.get_ident() != owner:
                return
            tensor = output[0] if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor) else output
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
            layout = layout_of(model, name, module, shape, batch, size, modules) if shape else None
            grid = None
            if layout is not None:
                try:
                    grid = layout.grid_of(shape, size)  # type: ignore[arg-type]
                except LayerError:
                    layout = None
            seen.append(LayerInfo(name, type(module).__name__, shape, layout, grid))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad(), torch.random.fork_rng(devices=[example.device] if example.is_cuda else []):
            if training:  # functional_call swaps the buffers on the module: no other thread may trace meanwhile
                state = {**dict(model.named_parameters()), **{k: b.clone() for k, b in model.named_buffers()}}
                with _TRACE_LOCK:
                    result = torch.func.functional_call(model, state, (example,))
            else:
                result = call_model(model, example[:1])
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
    """The last module to finish with a feature-map output (any layout) that is not a pooling,
    dropout or identity layer: the features that feed the classifier's global pooling.

    On a transformer with prefix tokens (ViT, DeiT, BEiT, EVA: a class token reads the patch
    tokens in the last attention), the first norm of the last block: the input of the last
    attention, where every patch token still matters (pytorch-grad-cam's choice, by hand).

    With ``backbone`` (a segmentation model or a detector, whose last spatial layers are its
    dense head), the search keeps to the model's ``backbone.body`` (torchvision's FPN
    detectors), ``backbone.features`` (SSD) or ``backbone`` (torchvision segmentation, most
    wrappers) when it has one: the last backbone stage, as pytorch-grad-cam's examples choose
    by hand."""
    modules = dict(model.named_modules())
    prefixes = ("backbone.body.", "backbone.features.", "backbone.")
    prefix = next((p for p in prefixes if backbone and p[:-1] in modules), "")
    order = list(layers)
    candidates = [i for i, info in enumerate(order) if info.name.startswith(prefix) and info.spatial
                  and not isinstance(modules[info.name], _NOT_TARGETS)]
    if not candidates:
        raise LayerError("found no layer with a spatial feature-map output; give layer= explicitly")
    last = order[candidates[-1]]
    if last.layout is not None and last.layout.kind == TOKENS and last.layout.prefix > 0:
        attention = [i for i, info in enumerate(order) if _ATTENTION_NAME.search(info.kind)]
        if attention:
            before = [i for i in candidates if i < attention[-1]]
            norms = [i for i in before if "norm" in order[i].kind.lower()]
            if norms or before:
                return order[(norms or before)[-1]].name
    return last.name


_ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)
