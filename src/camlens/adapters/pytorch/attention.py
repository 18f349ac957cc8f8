"""A PyTorch transformer's attention, read without changing the model.

Three kinds of attention module are read (:func:`attention_sites`): timm's ``Attention`` (ViT,
DeiT, registers), torchvision's ``nn.MultiheadAttention`` (``vit_*``) and HuggingFace's
``q_proj``/``k_proj``/``v_proj``/``o_proj`` attention (``ViT``, ``DeiT``). Per block, in one
forward pass, with temporary hooks that act only in the calling thread:

* **Probabilities** :math:`A = \\mathrm{softmax}(q k^T \\cdot \\mathrm{scale})` per head,
  recomputed without gradients from what the module itself uses: timm's ``q_norm``/``k_norm``
  outputs, the query/key inputs projected with torchvision's ``in_proj_weight``, HF's
  ``q_proj``/``k_proj`` outputs. Fused kernels (``scaled_dot_product_attention``) never
  materialise :math:`A`, so nothing else would do.
* **Gradients with respect to** :math:`A`, fused kernels included: the attention's output
  :math:`o = A v` (per head) is captured inside the autograd graph (timm: the input of the
  attention's ``norm``; torchvision: the module's output, mapped back through ``out_proj``;
  HF: the input of ``o_proj``) and the values :math:`v` beside it, so that for any score
  :math:`S`, :math:`\\partial S / \\partial A = (\\partial S / \\partial o)\\, v^T`, exactly.
* **Block outputs** (the tokens of each transformer block, in the graph) and the model's own
  final norm and head (:func:`token_head`), for LeGrad's per-block scores.

The graph starts at the first block's attention output (everything before it runs without
gradients) and no parameter gets a ``.grad``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camlens.errors import MethodError

SUPPORTED = "timm ViT/DeiT attention, torchvision's MultiheadAttention or HuggingFace ViT/DeiT attention"


def _timm_attention(module: nn.Module) -> bool:
    return (type(module).__name__ == "Attention" and type(module).__module__.startswith("timm.")
            and all(hasattr(module, a) for a in ("q_norm", "k_norm", "scale", "qkv", "norm", "num_heads")))


HF_ATTENTION = ("ViTAttention", "DeiTAttention")
"""HuggingFace attention classes read: plain softmax(q k^T) attention (no rotary embeddings,
no grouped keys), so that the probabilities can be recomputed from q_proj/k_proj."""


def _hf_attention(module: nn.Module) -> bool:
    return (type(module).__module__.startswith("transformers.") and type(module).__name__ in HF_ATTENTION
            and all(isinstance(getattr(module, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and isinstance(getattr(module, "head_dim", None), int) and hasattr(module, "scaling")
            and module.q_proj.out_features == module.k_proj.out_features == module.v_proj.out_features)  # type: ignore[union-attr]


@dataclass
class Site:
    """One attention module camlens reads, and the transformer block it sits in."""

    name: str
    module: nn.Module
    heads: int
    block: nn.Module | None


def attention_sites(model: nn.Module) -> list[Site]:
    """The transformer's attention modules, in definition order.

    Raises:
        MethodError: the model has none camlens can read.
    """
    modules = dict(model.named_modules())
    found = []
    for name, m in modules.items():
        if isinstance(m, nn.MultiheadAttention):
            heads = m.num_heads
        elif _timm_attention(m):
            heads = int(m.num_heads)  # type: ignore[arg-type]
        elif _hf_attention(m):
            heads = int(m.q_proj.out_features // m.head_dim)  # type: ignore[union-attr, operator]
        else:
            continue
        found.append(Site(name, m, heads, _block_of(name, modules)))
    if not found:
        kinds = sorted({type(m).__name__ for m in modules.values() if "attention" in type(m).__name__.lower()})
        what = f" (it has {', '.join(kinds[:3])})" if kinds else ""
        raise MethodError(f"attention methods read {SUPPORTED}; this model has none{what}")
    return found


def _block_of(name: str, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The attention's enclosing block: its nearest ancestor that is an item of a
    ``ModuleList``/``Sequential`` (``blocks.3``, ``encoder.layers.encoder_layer_3``, ``encoder.layer.3``)."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = modules.get(".".join(parts[: end - 1]))
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            return modules[".".join(parts[:end])]
    return None


def token_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's final norm and classifier applied to the mean of a block's ``(N, L, E)``
    tokens (LeGrad's per-block score): timm ``VisionTransformer`` (``norm``, ``fc_norm``,
    ``head``, the distilled ``head_dist`` averaged in as at inference), torchvision
    ``VisionTransformer`` (``encoder.ln``, ``heads``), HuggingFace ``*ForImageClassification``
    (the base model's ``layernorm``, ``classifier`` or DeiT's two classifiers); the model itself
    or, when it wraps one, the outermost such module inside it.

    Raises:
        MethodError: no such module, or a timm model pooling by attention.
    """
    for _, module in model.named_modules():
        head = _head_of(module)
        if head is not None:
            return head
    raise MethodError("LeGrad scores each block through the model's final norm and head; it knows timm and torchvision "
                      f"VisionTransformer and HuggingFace image classifiers, not {type(model).__name__}")


def _head_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if isinstance(getattr(model, "blocks", None), nn.Sequential) and isinstance(getattr(model, "head", None), nn.Module):
        if getattr(model, "global_pool", "token") == "map":
            raise MethodError("LeGrad scores blocks through the classifier; this timm model pools by attention ('map')")
        norm, fc_norm = getattr(model, "norm", nn.Identity()), getattr(model, "fc_norm", nn.Identity())
        heads = [model.head] + ([model.head_dist] if isinstance(getattr(model, "head_dist", None), nn.Module) else [])
        return lambda z: _mean_of([h(fc_norm(norm(z.mean(dim=1)))) for h in heads])  # type: ignore[operator]
    encoder = getattr(model, "encoder", None)
    if isinstance(getattr(encoder, "ln", None), nn.Module) and isinstance(getattr(model, "heads", None), nn.Module):
        ln, classifier = encoder.ln, model.heads  # type: ignore[union-attr]
        return lambda z: classifier(ln(z.mean(dim=1)))  # type: ignore[operator]
    base = getattr(model, "base_model", None)
    norm = getattr(base, "layernorm", None)
    names = ("classifier",) if hasattr(model, "classifier") else ("cls_classifier", "distillation_classifier")
    classifiers = [c for c in (getattr(model, n, None) for n in names) if isinstance(c, nn.Module)]
    if base is not model and isinstance(norm, nn.Module) and len(classifiers) == len(names):
        return lambda z: _mean_of([c(norm(z.mean(dim=1))) for c in classifiers])
    return None


def _mean_of(scores: list[torch.Tensor]) -> torch.Tensor:
    return scores[0] if len(scores) == 1 else torch.stack(scores).mean(dim=0)


def graph_point(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a forward's autograd graph begins or passes: ``(captured, replacement)``.

    Under ``no_grad`` (the first point reached) the captured tensor is a fresh leaf that
    requires grad and grad mode is switched on from here (the caller's ``no_grad`` restores
    it); later points capture the graph node itself. The layer returns the replacement, a
    clone, so that in-place operations downstream cannot change what was captured.
    """
    if torch.is_grad_enabled():
        captured = tensor
    else:
        captured = tensor.detach().requires_grad_(True)
        torch.set_grad_enabled(True)
    return captured, captured.clone()


@dataclass
class AttentionRecord:
    """What one forward pass left of the attention, block by block in run order.

    ``outputs`` are graph tensors whose gradients :attr:`to_heads` turns into ``(N, L, heads,
    d)`` gradients of :math:`o = A v`; ``values`` are ``(N, L, heads, d)`` without gradients;
    ``tokens`` are the blocks' outputs (graph tensors, LeGrad).
    """

    model: nn.Module
    sites: list[Site]
    probabilities: list[np.ndarray] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    to_heads: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)

    def check(self, gradients: bool, blocks: bool) -> None:
        """Every block's parts arrived once each.

        Raises:
            MethodError: no attention ran, or the parts do not pair up.
        """
        ran = len(self.probabilities) or len(self.outputs)
        if not ran:
            raise MethodError("no attention module ran during the forward pass")
        if ran != len(self.sites):
            raise MethodError(f"{len(self.sites)} attention modules ran {ran} times; attention methods need each to run "
                              "once per forward (one pass of one transformer)")
        if gradients and not (len(self.outputs) == len(self.values) == len(self.to_heads) == ran):
            raise MethodError("the attention modules ran in an order camlens cannot pair up (outputs and values)")
        if blocks and len(self.tokens) != len(self.outputs):
            raise MethodError(f"LeGrad found {len(self.outputs)} attention outputs but {len(self.tokens)} block outputs")
        shapes = {tuple(p.shape[-2:]) for p in self.probabilities} | {(v.shape[1], v.shape[1]) for v in self.values}
        if len(shapes) != 1 or len({*next(iter(shapes))}) != 1:
            where = ", ".join(s.name for s in self.sites[:3])
            raise MethodError(f"attention methods read self-attention over one token sequence; the attention of {where}... "
                              f"has query x key shapes {sorted(shapes)}")

    def attention_gradient(self, block: int, grad: torch.Tensor) -> torch.Tensor:
        """``(..., N, heads, L, L)`` :math:`\\partial S/\\partial A` of a block from the
        gradient of its captured output (any leading axes)."""
        return torch.einsum("...ihd,...jhd->...hij", self.to_heads[block](grad), self.values[block])


@contextmanager
def record_attention(model: nn.Module, *, probabilities: bool, gradients: bool = False,
                     blocks: bool = False) -> Iterator[AttentionRecord]:
    """Within the block, forwards of ``model`` in this thread fill the yielded
    :class:`AttentionRecord`: the ``probabilities``, the graph ``outputs`` and ``values`` for
    gradients, the ``blocks``' outputs; the hooks are removed on exit.

    Raises:
        MethodError: the model has no attention camlens reads.
    """
    sites = attention_sites(model)
    record = AttentionRecord(model, sites)
    owner = threading.get_ident()
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def mine() -> bool:
        return threading.get_ident() == owner

    def softmax(q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        with torch.no_grad():
            logits = (q.detach() * scale) @ k.detach().transpose(-2, -1)
            record.probabilities.append(logits.softmax(dim=-1).float().cpu().numpy())

    def add_output(tensor: torch.Tensor, to_heads: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        captured, replacement = graph_point(tensor)
        record.outputs.append(captured)
        record.to_heads.append(to_heads)
        return replacement

    def separate(site: Site, parts: tuple[nn.Module, nn.Module, nn.Module, nn.Module], scale: float,
                 by_head: Callable[[torch.Tensor], torch.Tensor], value: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Attention with its own submodules for queries, keys, values and the output's input
        (``parts``); ``by_head`` turns a query/key output into ``(N, heads, L, d)``, ``value``
        turns the value submodule's output into ``(N, L, heads, d)``."""
        heads = site.heads
        queries: list[torch.Tensor] = []

        def on_q(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            if mine():
                queries[:] = [by_head(out.detach())]

        def on_k(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            if mine() and queries:
                softmax(queries.pop(), by_head(out.detach()), scale)

        def on_v(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            if mine():
                record.values.append(value(out.detach()))

        def on_output(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            if not mine():
                return None
            return (add_output(args[0], lambda g: g.reshape(*g.shape[:-1], heads, -1)), *args[1:])

        q, k, v, out = parts
        if probabilities:
            handles.append(q.register_forward_hook(on_q))
            handles.append(k.register_forward_hook(on_k))
        if gradients:
            handles.append(v.register_forward_hook(on_v))
            handles.append(out.register_forward_pre_hook(on_output))

    def timm(site: Site) -> None:  # qkv -> (q_norm, k_norm) -> attention -> norm -> proj
        m, heads = site.module, site.heads
        separate(site, (m.q_norm, m.k_norm, m.qkv, m.norm), float(m.scale),  # type: ignore[arg-type]
                 lambda x: x, lambda x: x.reshape(x.shape[0], x.shape[1], 3, heads, -1)[:, :, 2])

    def hf(site: Site) -> None:  # q_proj, k_proj, v_proj -> attention -> o_proj
        m, heads = site.module, site.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], x.shape[1], heads, -1)

        separate(site, (m.q_proj, m.k_proj, m.v_proj, m.o_proj), float(m.scaling),  # type: ignore[arg-type]
                 lambda x: split(x).transpose(1, 2), split)

    def mha(site: Site) -> None:
        m = site.module
        assert isinstance(m, nn.MultiheadAttention)
        if m.in_proj_weight is None:
            raise MethodError(f"attention {site.name!r}: MultiheadAttention without a shared in_proj_weight is not read")
        e, heads = m.embed_dim, m.num_heads
        d = e // heads
        w, b = m.in_proj_weight, m.in_proj_bias

        def project(x: torch.Tensor, part: int) -> torch.Tensor:
            x = x if m.batch_first else x.transpose(0, 1)
            sl = slice(part * e, (part + 1) * e)
            return F.linear(x.detach(), w[sl], None if b is None else b[sl]).reshape(x.shape[0], x.shape[1], heads, d)

        def before(mod: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            if not mine():
                return
            query, key, value = (*args, *(kwargs.get(k) for k in ("query", "key", "value")[len(args):]))[:3]
            if not all(isinstance(t, torch.Tensor) for t in (query, key, value)):
                return
            with torch.no_grad():
                if probabilities:
                    softmax(project(query, 0).transpose(1, 2), project(key, 1).transpose(1, 2), 1 / math.sqrt(d))  # type: ignore[arg-type]
                if gradients:
                    record.values.append(project(value, 2))  # type: ignore[arg-type]

        def after(mod: nn.Module, args: object, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            if not mine():
                return None
            weight = m.out_proj.weight.detach()

            def to_heads(g: torch.Tensor) -> torch.Tensor:
                g = g if m.batch_first else g.transpose(-3, -2)
                return (g @ weight).reshape(*g.shape[:-1], heads, d)

            return (add_output(out[0], to_heads), *out[1:])

        handles.append(m.register_forward_pre_hook(before, with_kwargs=True))
        if gradients:
            handles.append(m.register_forward_hook(after))

    def on_block(mod: nn.Module, args: object, out: object) -> None:
        if mine():
            tokens = out[0] if isinstance(out, tuple) else out
            if isinstance(tokens, torch.Tensor):
                record.tokens.append(tokens)

    try:
        for site in sites:
            if isinstance(site.module, nn.MultiheadAttention):
                mha(site)
            elif _timm_attention(site.module):
                timm(site)
            else:
                hf(site)
            if blocks:
                if site.block is None:
                    raise MethodError(f"LeGrad needs the transformer block around attention {site.name!r}; found none")
                handles.append(site.block.register_forward_hook(on_block))
        yield record
    finally:
        for handle in handles:
            handle.remove()
