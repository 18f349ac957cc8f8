"""One forward pass that captures target-layer activations, and gradients taken down to them.

How gradients stay cheap and the caller's model untouched:

* Layers before the first target run under ``torch.no_grad()``: no graph is recorded there.
  The first target's output becomes a fresh leaf that requires grad, grad mode is switched on
  from that point, and the rest of the network records a graph as usual.
* Gradients come from ``torch.autograd.grad(score, captured_activations)``: autograd stops at
  the target layer, never reaches a parameter, never fills a ``.grad``.
* Each hook returns a *clone* of the layer's output, so in-place operations downstream (e.g.
  ``ReLU(inplace=True)``) cannot change what was captured.
* All hooks are removed in ``finally``; grad mode is restored by the context managers even when
  the model raises. Train/eval mode and ``requires_grad`` flags are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camlens.errors import LayerError, ModelError


@dataclass
class ForwardCapture:
    """Logits and captured tensors of one forward pass.

    ``activations`` hold, per layer, the tensor gradients are taken with respect to (a leaf for
    the first target layer, a graph node for later ones) or a detached copy when no gradients
    were asked for. ``head_input`` is what the CAM head's linear layer received, if hooked.
    """

    logits: torch.Tensor
    activations: dict[str, torch.Tensor]
    head_input: torch.Tensor | None = None


def logits_of(output: object) -> torch.Tensor:
    """The class scores in a model's output: a tensor, the first of a tuple, or ``.logits``."""
    if isinstance(output, torch.Tensor):
        scores = output
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        scores = output[0]
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        scores = output["logits"]
    elif isinstance(getattr(output, "logits", None), torch.Tensor):
        scores = output.logits  # type: ignore[attr-defined]
    else:
        raise ModelError(f"model returned {type(output).__name__}; expected class scores (N, classes)")
    if scores.ndim != 2:
        raise ModelError(f"model returned scores of shape {tuple(scores.shape)}; expected (N, classes)")
    return scores


def forward(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Mapping[str, nn.Module],
    *,
    with_gradients: bool,
    head: nn.Module | None = None,
) -> ForwardCapture:
    """Run ``model(batch)`` once with temporary hooks on ``layers`` (and on ``head``'s input)."""
    captured: dict[str, torch.Tensor] = {}
    head_inputs: list[torch.Tensor] = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                raise LayerError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another layer")
            if not with_gradients:
                captured[name] = output.detach().clone()
                return None
            if torch.is_grad_enabled():
                captured[name] = output
            else:
                captured[name] = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            return captured[name].clone()

        return hook

    handles = []
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        if head is not None:
            handles.append(head.register_forward_pre_hook(lambda module, args: head_inputs.append(args[0])))
        with torch.inference_mode(False), torch.no_grad():
            logits = logits_of(model(batch))
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in captured]
    if missing:
        raise LayerError(f"layer {missing[0]!r} did not run during the forward pass; pick another layer")
    if with_gradients and not logits.requires_grad:
        raise LayerError(f"the model's output does not depend on layer {next(iter(layers))!r}")
    return ForwardCapture(logits, captured, head_inputs[-1] if head_inputs else None)


def gradients(capture: ForwardCapture, targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Gradients of each target score with respect to every captured activation.

    Args:
        capture: a forward capture made ``with_gradients=True``.
        targets: ``(N, K)`` class indices; column ``k`` is explained by one backward pass that
            stops at the target layers (samples are independent, so their scores are summed).

    Returns:
        One dict per column ``k``: layer name -> ``(N, C, h, w)`` gradient.
    """
    names: Sequence[str] = list(capture.activations)
    inputs = [capture.activations[n] for n in names]
    columns = targets.shape[1]
    out: list[dict[str, torch.Tensor]] = []
    with torch.inference_mode(False), torch.enable_grad():
        for k in range(columns):
            score = capture.logits.gather(1, targets[:, k : k + 1]).sum()
            grads = torch.autograd.grad(score, inputs, retain_graph=k < columns - 1, allow_unused=True)
            for name, grad in zip(names, grads, strict=True):
                if grad is None:
                    raise LayerError(f"the class scores do not depend on layer {name!r}")
            out.append(dict(zip(names, grads, strict=True)))
    return out
