"""Backbones to fine-tune, each ending in global average pooling -> one linear layer (what CAM needs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import nn

from camlens.errors import CamlensError, ModelError
from camlens.models.preprocess import Preprocessing
from camlens.models.registry import ArchOptions
from camlens.models.small_cnn import SMALL_CNN


class Backbone(NamedTuple):
    """A model to train, its preprocessing, the options it was built with (for the checkpoint),
    and whether CAM explains it (global average pooling -> linear; else gradient and attention
    methods do)."""

    model: nn.Module
    preprocessing: Preprocessing
    options: ArchOptions
    cam: bool


def build(
    arch: str, num_classes: int, *, pretrained: bool = True, input_size: int | None = None,
    options: Mapping[str, int | float | bool | str] | None = None,
) -> Backbone:
    """A classifier for ``num_classes`` with a fresh head (see :class:`Backbone`).

    Args:
        arch: ``small_cnn`` (from scratch, 64x64 by default), ``efficientnet_lite0`` (bundled
            ImageNet weights, offline), a torchvision model name, or ``timm:NAME`` (vision
            transformers included: they are explained by gradient and attention methods).
        pretrained: start from ImageNet weights (ignored for ``small_cnn``); torchvision and timm
            weights download on first use.
        input_size: square input side; default the backbone's own (224 for most). A timm
            transformer from scratch is built for it (``img_size``).
        options: builder keyword arguments for a model from scratch (``patch_size=8``, ``depth=6``).

    Raises:
        ModelError: unknown architecture, weights unavailable offline, options with
            pretrained weights, or a model no layer method can explain (checked with a forward pass).
    """
    from camlens.models import registry

    opts = registry.check_options(options)
    if input_size is not None and input_size < 16:
        raise CamlensError(f"input size must be at least 16 pixels, got {input_size}")
    if pretrained and arch != SMALL_CNN:
        if opts:
            raise ModelError(f"architecture options ({', '.join(opts)}) build a model from scratch: add pretrained=False")
        try:
            model, prep = registry.build_named(arch)
        except ModelError as exc:
            raise ModelError(f"{exc}; or train from scratch (pretrained=False)") from exc
        _replace_head(model, num_classes, arch)
    else:
        model = registry.architecture(arch, num_classes, opts)
        fixed = _fixed_size(model)
        if input_size is not None and fixed is not None and fixed[1] != input_size:
            if fixed[0] in opts:
                raise ModelError(f"{arch}: --arch-option {fixed[0]}={fixed[1]} and --input-size {input_size} disagree")
            opts[fixed[0]] = input_size  # position embeddings for the training size
            model = registry.architecture(arch, num_classes, opts)
            fixed = _fixed_size(model)
        prep = registry.preprocessing_of(arch, model)
        if fixed is not None:
            prep = replace(prep, input_size=(fixed[1], fixed[1]))
    if input_size is not None:
        prep = replace(prep, input_size=(input_size, input_size))
    return Backbone(model, prep, opts, check_explainable(model, arch, prep))


def _fixed_size(model: nn.Module) -> tuple[str, int] | None:
    """The builder option and square input side a transformer's position embeddings were built
    for: timm's ``img_size`` (unless dynamic) or torchvision ViT's ``image_size``; else None."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    fixed = getattr(embed, "strict_img_size", False) and not getattr(model, "dynamic_img_size", False)
    if fixed and isinstance(size, (tuple, list)) and len(set(size)) == 1:
        return "img_size", int(size[0])
    if isinstance(getattr(model, "image_size", None), int) and isinstance(getattr(model, "conv_proj", None), nn.Module):
        return "image_size", int(model.image_size)  # type: ignore[arg-type]
    return None


def _replace_head(model: nn.Module, num_classes: int, arch: str) -> None:
    """Swap the last ``nn.Linear`` for a new one with ``num_classes`` outputs."""
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(num_classes)  # type: ignore[operator]
        return
    last = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ModelError(f"{arch}: no linear classifier to replace")
    name, old = last[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def check_explainable(model: nn.Module, arch: str, prep: Preprocessing) -> bool:
    """Run the model once on a blank input of the training size: True when CAM explains it
    (global average pooling -> linear), False when only gradient and attention methods do (a
    transformer's class token); raises when neither works, or when at that size its last
    feature maps have a single position."""
    from camlens.adapters.pytorch.extractor import TorchExplainer
    from camlens.errors import LayerError, MethodError

    def runs(method: str, h: int, w: int) -> bool:
        try:
            with TorchExplainer(model, method) as ex:
                maps = ex(torch.zeros(1, 3, h, w), 0).map()
        except (MethodError, LayerError):
            return False
        except (AssertionError, RuntimeError, ValueError) as exc:  # the model itself refuses the input
            raise ModelError(f"{arch}: does not run on a {h}x{w} input ({str(exc).splitlines()[0][:160]}); "
                             "pick another --input-size") from None
        return method != "cam" or maps.shape[-1] * maps.shape[-2] > 1

    was_training = model.training
    model.eval()
    try:
        h, w = prep.input_size
        if runs("cam", h, w):
            return True
        if max(h, w) < 224 and _fixed_size(model) is None and runs("cam", 224, 224):
            raise ModelError(f"{arch}: at {h}x{w} input its last feature maps are 1x1, too small for CAM; "
                             "use a larger --input-size")
        if runs("gradcam", h, w):
            return False
        raise ModelError(
            f"{arch}: no layer of it holds feature maps camlens can explain "
            "(choose e.g. small_cnn, efficientnet_lite0, resnet18, timm:vit_tiny_patch16_224)"
        )
    finally:
        model.train(was_training)
