"""Backbones to fine-tune, each ending in global average pooling -> one linear layer (what CAM needs)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from camlens.errors import CamlensError, ModelError
from camlens.models.preprocess import Preprocessing
from camlens.models.small_cnn import SMALL_CNN


def build(
    arch: str, num_classes: int, *, pretrained: bool = True, input_size: int | None = None
) -> tuple[nn.Module, Preprocessing]:
    """A classifier for ``num_classes`` with a fresh linear head, and its preprocessing.

    Args:
        arch: ``small_cnn`` (from scratch, 64x64 by default), ``efficientnet_lite0`` (bundled
            ImageNet weights, offline), a torchvision model name, or ``timm:NAME``.
        pretrained: start from ImageNet weights (ignored for ``small_cnn``); torchvision and timm
            weights download on first use.
        input_size: square input side; default the backbone's own (224 for most).

    Raises:
        ModelError: unknown architecture, weights unavailable offline, or a model whose classifier
            is not global average pooling -> linear (checked with a forward pass).
    """
    from camlens.models import registry

    if pretrained and arch != SMALL_CNN:
        try:
            model, prep = registry.build_named(arch)
        except ModelError as exc:
            raise ModelError(f"{exc}; or train from scratch (--no-pretrained)") from exc
        _replace_head(model, num_classes, arch)
    else:
        model = registry.architecture(arch, num_classes)
        prep = registry.preprocessing_of(arch, model)
    if input_size is not None:
        if input_size < 16:
            raise CamlensError(f"input size must be at least 16 pixels, got {input_size}")
        prep = replace(prep, input_size=(input_size, input_size))
    check_gap_head(model, arch, prep)
    return model, prep


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


def check_gap_head(model: nn.Module, arch: str, prep: Preprocessing) -> None:
    """Run CAM once on a blank input of the training size: raises when the model's classifier is
    not GAP -> linear, or when at that size its last feature maps have a single position."""
    from camlens.adapters.pytorch.extractor import TorchExplainer
    from camlens.errors import MethodError

    def cam_runs(h: int, w: int) -> bool:
        try:
            with TorchExplainer(model, "cam") as cam:
                cam(torch.zeros(1, 3, h, w), 0)
        except MethodError:
            return False
        return True

    was_training = model.training
    model.eval()
    try:
        h, w = prep.input_size
        if cam_runs(h, w):
            return
        if max(h, w) < 224 and cam_runs(224, 224):
            raise ModelError(f"{arch}: at {h}x{w} input its last feature maps are 1x1, too small for CAM; "
                             "use a larger --input-size")
        raise ModelError(
            f"{arch}: its classifier is not global average pooling -> linear, so CAM cannot explain it "
            "(choose e.g. small_cnn, efficientnet_lite0, resnet18, mobilenet_v3_small, densenet121)"
        )
    finally:
        model.train(was_training)
