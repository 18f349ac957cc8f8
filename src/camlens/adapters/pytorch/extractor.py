"""The batched low-level API for PyTorch models: ``with GradCAM(model, layer="layer4") as cam``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn

from camlens.adapters.pytorch import capture as cap
from camlens.adapters.pytorch.attention import AttentionRecord, record_attention
from camlens.adapters.pytorch.head import LinearHead, find_linear_head
from camlens.adapters.pytorch.layers import LayerSpec, auto_layer, resolve, trace
from camlens.adapters.pytorch.layouts import model_prefix, owner_of
from camlens.adapters.pytorch.outputs import canonical
from camlens.arguments import count, layer_specs
from camlens.core.compute import needs_of, run
from camlens.core.fusion import check_fusion
from camlens.core.head import check_cam_layers, pooled_features
from camlens.core.layouts import TOKENS, Layout, token_grid
from camlens.core.methods import Method, methods_from
from camlens.core.record import ATTENTION_NEEDS, MAX_BATCH, AttentionMaps, ClassifierHead, Need, Progress
from camlens.core.result import CamResult
from camlens.core.targets import SCORES, Targets
from camlens.core.targets import resolve as resolve_columns
from camlens.errors import CamlensError, LayerError, MethodError


class TorchExplainer:
    """Compute CAMs for a batch with one forward pass, for several methods and layers at once.

    Args:
        model: any ``nn.Module``: a classifier, a regression or embedding model, a segmentation
            model or a torchvision detector, returning a tensor, a tuple, a dict or a
            ``ModelOutput`` (see :mod:`camlens.adapters.pytorch.outputs`). Its mode and flags
            are not changed; put it in ``eval()`` yourself (a warning reminds you otherwise).
        method: a method name (see ``camlens methods``), a :class:`~camlens.core.methods.Method`,
            or a sequence of them.
        layer: a dotted module name, a module, a sequence of those, or ``None`` for the last
            spatial layer before the classifier's global pooling.
        fuse: with several layers, also combine each method's maps into one (``mean``,
            ``max`` or ``product``; see :func:`camlens.core.fusion.fuse`).
        output: the entry of a tuple (index) or dict/``ModelOutput`` (key) output to explain,
            when it is not the first tensor, ``logits`` or ``out``.
        layout: how the layers' outputs hold their maps, when the model's metadata does not
            say (see :class:`camlens.core.layouts.Layout`): ``"tokens:1"`` (tokens after one
            class token), ``"tokens:1:14x14"``, ``"nhwc"``..., for every layer or as a dict
            by layer name. By default each layer's layout is found from the model.
        max_batch: inputs per extra forward pass of the methods that run the model again
            (Score-CAM, Ablation-CAM...): their memory is bounded by it.

    A ``torch.compile``'d model is explained through its original module (``_orig_mod``, the
    same parameters): hooks do not fire inside compiled code. Hooks live only during each call.
    Use as a context manager (or call :meth:`close`) to drop the references to the model and its
    layers.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | Method | Sequence[str | Method] = "gradcam",
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        fuse: str | None = None,
        output: int | str | None = None,
        layout: str | Layout | Mapping[str, str | Layout] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.methods: list[Method] = methods_from(method)
        self._max_batch = count(max_batch, "max_batch")
        self._output = output
        model = uncompiled(model)
        specs: list[LayerSpec | None] = layer_specs(layer, nn.Module)
        specs = [s.removeprefix("_orig_mod.") if isinstance(s, str) else s for s in specs]
        self._layout = layout
        check_fusion(fuse, len(specs))
        self._fuse = fuse
        self._model: nn.Module | None = model
        self._specs: list[LayerSpec | None] = specs
        self._layers: dict[str, nn.Module] | None = None
        self._head: LinearHead | None = None
        self._needs = needs_of(self.methods)
        if all(s is not None for s in specs) and Need.CLASS_WEIGHTS not in self._needs:
            self._layers = dict(resolve(model, s) for s in specs)  # type: ignore[arg-type]

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            raise CamlensError("this explainer is closed")
        return self._model

    def layers(self, example: torch.Tensor) -> list[str]:
        """Names of the target layers, resolving automatic ones with ``example`` if needed."""
        return list(self._resolve(example))

    def _resolve(self, example: torch.Tensor) -> dict[str, nn.Module]:
        if self._layers is not None:
            return self._layers
        model = self.model
        raw: list[object] = []
        traced = trace(model, example, raw)
        size = (int(example.shape[-2]), int(example.shape[-1]))
        dense = canonical(raw[0], self._output, size, example.device).kind != SCORES
        layers: dict[str, nn.Module] = {}
        for spec in self._specs:
            name, module = resolve(model, spec if spec is not None else auto_layer(model, traced, backbone=dense))
            layers[name] = module
        if Need.CLASS_WEIGHTS in self._needs:
            classes = next(i.output_shape for i in reversed(traced) if i.output_shape)[-1]
            head_layer = auto_layer(model, traced)
            self._head = find_linear_head(model, head_layer, traced, classes)
            check_cam_layers(head_layer, list(layers))
        self._layers = layers
        return layers

    def _layouts(self, layers: Mapping[str, nn.Module]) -> dict[str, Layout]:
        """The stated layouts, by layer name."""
        if self._layout is None:
            return {}
        if isinstance(self._layout, Mapping):
            if not all(isinstance(k, str) for k in self._layout):
                raise LayerError("layout= maps layer names (strings) to layouts")
            unknown = [k for k in self._layout if k.removeprefix("_orig_mod.") not in layers]
            if unknown:
                raise LayerError(f"layout= names {unknown[0]!r}, which is not a target layer ({', '.join(layers)})")
            return {k.removeprefix("_orig_mod."): Layout.parse(v) for k, v in self._layout.items()}
        return dict.fromkeys(layers, Layout.parse(self._layout))

    def __call__(self, batch: torch.Tensor, targets: Targets = None, *, top: int | None = None,
                 progress: Progress | None = None) -> CamResult:
        """Explain ``batch`` (``(N, 3, H, W)``, already preprocessed, on the model's device).

        Args:
            targets: a :mod:`camlens.targets` kind (or a list of them), a class index, indices
                per sample, ``"all"``, ``"top-k"``... (see :func:`camlens.core.targets.as_targets`);
                ``None`` explains the top-1 class.
            top: with ``targets=None``, explain the ``top`` best classes of each sample.
            progress: told how far the methods that run the model again are, ``(what, done,
                total)`` (see :data:`camlens.core.record.Progress`).
        """
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or not batch.is_floating_point() or not len(batch):
            shown = f"{tuple(batch.shape)} {batch.dtype}" if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise CamlensError(f"expected a float batch tensor of shape (N, C, H, W) with N >= 1, got {shown}")
        model = self.model
        weight = next((p for p in model.parameters() if p.is_floating_point()), None)
        if weight is not None and batch.dtype != weight.dtype:
            batch = batch.to(weight.dtype)  # a float64 batch for a float32 model, as a user would mean it
        if model.training:
            warnings.warn("model is in training mode; call model.eval() for stable maps", stacklevel=2)
        with torch.inference_mode(False):  # tensors made below must be usable by autograd
            layers = self._resolve(batch)
            gradients = bool(self._needs & {Need.ATTENTION_GRADIENTS, Need.LAYERWISE_GRADIENTS})
            capturing: AbstractContextManager[AttentionRecord | None] = (
                record_attention(model, probabilities=Need.ATTENTION in self._needs, gradients=gradients,
                                 blocks=Need.LAYERWISE_GRADIENTS in self._needs)
                if self._needs & ATTENTION_NEEDS else nullcontext(None))
            with capturing as attention:
                fwd = cap.forward(
                    model,
                    batch,
                    layers,
                    with_gradients=bool(self._needs & {Need.GRADIENTS, Need.HESSIAN}),
                    head=self._head.linear if self._head else None,
                    output=self._output,
                    layouts=self._layouts(layers),
                )
            columns = resolve_columns(targets, fwd.output, top)
            probe = None
            if Need.FORWARDS in self._needs:
                probe = cap.TorchProbe(model, batch, layers, columns, self._output, self._max_batch, capture=fwd)
            pass_ = cap.TorchPass(fwd, columns, None, probe)
            if attention is not None:
                attention.check(gradients, Need.LAYERWISE_GRADIENTS in self._needs)
                pass_.attention = _attention_maps(model, attention, fwd)
                pass_.attention_record = attention
            if self._head is not None:
                captured = fwd.activations[self._head.layer]
                pooled = _numpy(fwd.head_input) if fwd.head_input is not None else None
                eps = float(torch.finfo(captured.dtype).eps) if captured.dtype.is_floating_point else 0.0
                dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in model.modules())
                maps = pass_.activations[self._head.layer]  # channels first, whatever the layer's layout
                features = pooled_features(maps, pooled, self._head.layer, eps=eps, dropout=dropout)
                weights = _numpy(self._head.weight)
                if fwd.output.binary:  # the one unit's two scores are [-z/2, z/2]
                    weights = np.concatenate([-weights / 2, weights / 2])
                pass_.head = ClassifierHead(self._head.layer, features, weights)
            return run(pass_, self.methods, columns, self._fuse, progress)

    def close(self) -> None:
        """Drop references to the model and its layers."""
        self._model = self._layers = self._head = None

    def __enter__(self) -> TorchExplainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def feature_maps(model: nn.Module, batch: torch.Tensor, layer: LayerSpec | None = None,
                 output: int | str | None = None) -> tuple[str, np.ndarray]:
    """Activations of one layer (automatic when ``None``) for a batch: ``(name, (N, C, h, w))``,
    channels first whatever the layer's layout.

    One forward pass without gradients (plus a trace to find an automatic layer); hooks are
    removed before returning.
    """
    with TorchExplainer(model, "eigencam", layer, output=output) as ex:
        name, module = next(iter(ex._resolve(batch).items()))
    fwd = cap.forward(uncompiled(model), batch, {name: module}, with_gradients=False, output=output)
    return name, fwd.layouts[name].to_nchw(_numpy(fwd.activations[name]), fwd.input_size)


def _attention_maps(model: nn.Module, record: AttentionRecord, fwd: cap.ForwardCapture) -> AttentionMaps:
    """The captured attention with the token layout it belongs to: the first target layer's
    prefix when it is a token layer, else the model's own (timm, torchvision metadata)."""
    layout = next(iter(fwd.layouts.values()))
    owner = owner_of(model, record.sites[0].name, dict(model.named_modules()))
    prefix = layout.prefix if layout.kind == TOKENS else (model_prefix(owner) or 0)
    tokens = int(record.probabilities[-1].shape[-1]) if record.probabilities else int(record.values[-1].shape[1])
    grid = token_grid(tokens - prefix, fwd.input_size)
    if grid is None:
        raise MethodError(f"the attention's {tokens} tokens ({prefix} prefix) form no grid")
    blocks = len(record.probabilities) or len(record.outputs)
    heads = int(record.probabilities[-1].shape[1]) if record.probabilities else int(record.values[-1].shape[2])
    width = int(record.values[-1].shape[2] * record.values[-1].shape[3]) if record.values else 0
    return AttentionMaps(tuple(record.probabilities), prefix, grid, blocks, heads, width)


def uncompiled(model: nn.Module) -> nn.Module:
    """The original module of a ``torch.compile``'d model (same parameters), else ``model``."""
    original = getattr(model, "_orig_mod", None)
    return original if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module) else model
