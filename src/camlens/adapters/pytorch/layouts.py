"""Layouts of a PyTorch model's layers, found from the model's own metadata.

* 4-D outputs are channels first, except where the model says channels last: timm models
  with ``output_fmt == "NHWC"`` (Swin, SwinV2), torchvision's Swin, a plain ``LayerNorm``
  over the last axis of a 4-D output, and ``Linear`` layers applied to 4-D tensors (they map
  the last axis); 2-D convolutions, batch norms and poolings are channels first, always.
* 3-D outputs ``(N, L, C)`` are tokens. Their prefix (class, distillation, register tokens)
  comes from timm's ``num_prefix_tokens`` (or its ``cls_token``/``dist_token``/``reg_token``
  parameters), torchvision ``VisionTransformer``'s class token, or a
  HuggingFace config's ``patch_size`` (``L - (H/p)(W/p)``); models without such metadata have
  none. The grid follows from the token count and the input's aspect ratio.
* Attention modules and positional encodings, and the modules inside them (query/key/value
  projections, attention weights), are never offered as map layers (``camlens layers``, the
  automatic choice); named explicitly, their output is read like any other.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from camlens.core.layouts import MAX_PREFIX, NCHW, NHWC, TOKENS, Layout, token_grid

_ATTENTION = re.compile(r"attention|attn|relpos|posenc|posembed", re.IGNORECASE)
"""Attention modules and positional encodings: what they and their sub-modules output are not
feature maps."""


def _torchvision(model: nn.Module, module: str, name: str) -> bool:
    """``model`` is (a subclass of) torchvision's ``module.name``; torchvision is imported only
    for its own models (importing it beside TensorFlow can crash the process)."""
    if not any(c.__module__.startswith("torchvision.") for c in type(model).__mro__):
        return False
    import importlib

    return isinstance(model, getattr(importlib.import_module(module), name))


_CHANNELS_FIRST = (
    nn.Conv2d, nn.ConvTranspose2d, nn.modules.batchnorm._BatchNorm, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)


def model_prefix(model: nn.Module) -> int | None:
    """Leading non-patch tokens of a transformer, from its metadata (None when it has none)."""
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    tokens = [getattr(model, a, None) for a in ("cls_token", "dist_token", "reg_token")]
    if isinstance(tokens[0], torch.Tensor):  # timm's convention for models without num_prefix_tokens
        return sum(int(t.shape[1]) for t in tokens if isinstance(t, torch.Tensor) and t.ndim == 3)
    stages = [p for n, p in model.named_parameters(recurse=False) if re.fullmatch(r"cls_token\d+", n)]
    if stages:  # one class token per stage (timm CoaT)
        return 1
    if _torchvision(model, "torchvision.models.vision_transformer", "VisionTransformer"):
        return 1
    return None


def _hf_patch(model: nn.Module) -> int | None:
    patch = getattr(getattr(model, "config", None), "patch_size", None)
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return patch if isinstance(patch, int) and patch > 0 else None


def channels_last_model(model: nn.Module) -> bool:
    """The model keeps its feature maps channels last (timm Swin, torchvision Swin)."""
    if getattr(model, "output_fmt", None) == "NHWC":
        return True
    return _torchvision(model, "torchvision.models.swin_transformer", "SwinTransformer")


def inside_attention(name: str, modules: dict[str, nn.Module]) -> bool:
    """``name`` is an attention module or positional encoding, or a sub-module of one."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        parent = modules.get(".".join(parts[:i]))
        if parent is not None and _ATTENTION.search(type(parent).__name__):
            return True
    return False


def owner_of(model: nn.Module, name: str, modules: dict[str, nn.Module]) -> nn.Module:
    """The innermost module around ``name`` that carries a transformer's metadata (prefix
    tokens, a patch size, channels-last features), else ``model``: so that a timm, torchvision
    or HuggingFace model wrapped in the user's own module keeps its layouts."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        m = modules.get(".".join(parts[:end]))
        if m is not None and (model_prefix(m) is not None or _hf_patch(m) or channels_last_model(m)):
            return m
    return model


def layout_of(model: nn.Module, name: str, module: nn.Module, shape: tuple[int, ...], batch: int,
              input_size: tuple[int, int], modules: dict[str, nn.Module] | None = None) -> Layout | None:
    """The layout of ``module``'s output of ``shape`` for a batch of ``batch`` inputs of
    ``input_size``, or None when it holds no feature map. Metadata comes from the innermost
    module around it that has some (:func:`owner_of`)."""
    modules = dict(model.named_modules()) if modules is None else modules
    if not shape or shape[0] != batch or inside_attention(name, modules):
        return None
    model = owner_of(model, name, modules)
    if len(shape) == 4:
        if isinstance(module, _CHANNELS_FIRST):
            return Layout(NCHW)  # PyTorch's 2-D convolutions, batch norms and poolings are channels first, always
        dims = getattr(module, "dims", None)
        if type(module).__name__ == "Permute" and dims is not None:  # torchvision's Permute
            return Layout(NCHW) if list(dims) == [0, 3, 1, 2] else Layout(NHWC) if list(dims) == [0, 2, 3, 1] else None
        if isinstance(module, nn.Linear):
            return Layout(NHWC)  # a linear layer maps the last axis: channels last (ConvNeXt's MLPs)
        norm_last = type(module) is nn.LayerNorm and tuple(module.normalized_shape) == (shape[-1],)
        return Layout(NHWC) if channels_last_model(model) or norm_last else Layout(NCHW)
    if len(shape) != 3:
        return None
    prefix = model_prefix(model)
    if prefix is None:
        patch = _hf_patch(model)
        extra = shape[1] - (input_size[0] // patch) * (input_size[1] // patch) if patch else None
        prefix = extra if extra is not None and 0 <= extra <= MAX_PREFIX else 0
    if token_grid(int(shape[1]) - prefix, input_size) is None:
        return None
    return Layout(TOKENS, prefix)
