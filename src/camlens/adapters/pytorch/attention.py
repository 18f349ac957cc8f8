"""Attention probabilities of a PyTorch transformer, captured without changing the model.

Fused attention kernels (``scaled_dot_product_attention``) never materialise the attention
matrix, so it is recomputed, without gradients, from what the attention module itself uses:

* timm's ``Attention`` (ViT, DeiT, registers): the outputs of its ``q_norm`` and ``k_norm``
  (the normalised queries and keys, ``(N, heads, L, d)``), times its ``scale``;
* torchvision's ``nn.MultiheadAttention`` (``vit_*``): the query and key inputs projected with
  its ``in_proj_weight`` and ``in_proj_bias``, scaled by ``1/sqrt(d)``;

then :math:`\\mathrm{softmax}(q k^T \\cdot \\mathrm{scale})` per head. Other attention modules
(relative position biases, windows, rotary embeddings) are refused in one line.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camlens.errors import MethodError


def _timm_attention(module: nn.Module) -> bool:
    return (type(module).__name__ == "Attention" and type(module).__module__.startswith("timm.")
            and all(hasattr(module, a) for a in ("q_norm", "k_norm", "scale", "qkv")))


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer's attention modules, in definition order (timm ``Attention``, torchvision
    ``MultiheadAttention``).

    Raises:
        MethodError: the model has none camlens can read.
    """
    found = [(n, m) for n, m in model.named_modules() if _timm_attention(m) or isinstance(m, nn.MultiheadAttention)]
    if not found:
        kinds = sorted({type(m).__name__ for _, m in model.named_modules() if "attention" in type(m).__name__.lower()})
        what = f" (it has {', '.join(kinds[:3])})" if kinds else ""
        raise MethodError("attention rollout reads timm ViT/DeiT attention or torchvision's MultiheadAttention; this "
                          f"model has none{what}")
    return found


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[np.ndarray]]:
    """Within the block, forwards of ``model`` in this thread append each attention module's
    ``(N, heads, L, L)`` probabilities to the yielded list, in the order they run; the hooks
    are removed on exit."""
    probabilities: list[np.ndarray] = []
    owner = threading.get_ident()
    handles = []

    def timm_hooks(module: nn.Module) -> None:
        queries: list[torch.Tensor] = []
        scale = float(module.scale)  # type: ignore[arg-type]
        q_norm, k_norm = module.q_norm, module.k_norm
        assert isinstance(q_norm, nn.Module) and isinstance(k_norm, nn.Module)

        def on_q(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            if threading.get_ident() == owner:
                queries[:] = [out.detach()]

        def on_k(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            if threading.get_ident() == owner and queries:
                with torch.no_grad():
                    logits = (queries[0] * scale) @ out.detach().transpose(-2, -1)
                    probabilities.append(logits.softmax(dim=-1).float().cpu().numpy())

        handles.append(q_norm.register_forward_hook(on_q))
        handles.append(k_norm.register_forward_hook(on_k))

    def mha_hook(module: nn.MultiheadAttention, args: tuple[torch.Tensor, ...]) -> None:
        if threading.get_ident() != owner or len(args) < 2:
            return
        query, key = args[0], args[1]
        if not module.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        w, b = module.in_proj_weight, module.in_proj_bias
        e, heads = module.embed_dim, module.num_heads
        d = e // heads
        with torch.no_grad():
            q = F.linear(query, w[:e], None if b is None else b[:e])
            k = F.linear(key, w[e : 2 * e], None if b is None else b[e : 2 * e])
            q = q.reshape(q.shape[0], q.shape[1], heads, d).transpose(1, 2)
            k = k.reshape(k.shape[0], k.shape[1], heads, d).transpose(1, 2)
            probabilities.append(((q @ k.transpose(-2, -1)) / math.sqrt(d)).softmax(dim=-1).float().cpu().numpy())

    try:
        for _, module in attention_modules(model):
            if isinstance(module, nn.MultiheadAttention):
                if module.in_proj_weight is None:
                    raise MethodError("attention rollout needs MultiheadAttention with a shared in_proj_weight")
                handles.append(module.register_forward_pre_hook(mha_hook))
            else:
                timm_hooks(module)
        yield probabilities
    finally:
        for handle in handles:
            handle.remove()
