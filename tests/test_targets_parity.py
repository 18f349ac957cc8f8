"""Target kinds against pytorch-grad-cam's own targets, on random-weight torchvision models.

pytorch-grad-cam needs a wrapper module to unwrap a segmentation model's dict and one target
object per sample; camlens takes the model as it is and one target for the batch. Maps are
compared after both libraries' upsampling and min-max normalisation.

pytorch-grad-cam normalises with ``(m - min) / (1e-7 + max)``, before and after resizing. Where
raw maps are small (a cosine's or a detection score's gradient through a random network: maxima
near 1e-5) that eps, not the map, moves values by up to 1%; there the reference is their
formula applied to camlens' raw maps, and camlens' raw maps are checked against a hand
computation from the layer's activations and gradients.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
)
from torch import nn

from camlens import Explainer
from camlens.core import normalize, upsample
from camlens.targets import Class, Detection, Finer, Segmentation, Similarity

ATOL = 1e-5


def _ours(model: nn.Module, layer: str, x: torch.Tensor, target: object) -> np.ndarray:
    with Explainer(model, "gradcam", layer) as ex:
        raw = ex(x, target).map()[:, 0]
    return normalize(upsample(raw, tuple(x.shape[2:])))


def _theirs(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[object]) -> np.ndarray:
    with GradCAM(model, [layer]) as cam:
        return np.asarray(cam(x, targets=targets))


def _pgc_scaled(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` (eps 1e-7) on raw maps, resized, then again."""
    def scale(maps: np.ndarray) -> np.ndarray:
        m = maps - maps.min(axis=(1, 2), keepdims=True)
        return m / (1e-7 + m.max(axis=(1, 2), keepdims=True))

    return scale(upsample(scale(np.maximum(raw, 0)), size))


def _by_hand(model: nn.Module, layer: nn.Module, x: torch.Tensor, score: object) -> np.ndarray:
    """Grad-CAM raw maps from a hooked forward: ReLU(sum_c mean(ds/dA_c) A_c)."""
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, o: acts.append(o))
    try:
        s = score(model(x))  # type: ignore[operator]
    finally:
        handle.remove()
    g = torch.autograd.grad(s, acts[0])[0]
    return np.maximum((g.mean((2, 3), keepdim=True) * acts[0]).sum(1).detach().numpy(), 0.0)


def _raw(model: nn.Module, layer: str, x: torch.Tensor, target: object) -> np.ndarray:
    with Explainer(model, "gradcam", layer) as ex:
        return ex(x, target).map()[:, 0]


def _batch(size: int = 96) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(11))


class Out(nn.Module):
    """The wrapper pytorch-grad-cam needs for a torchvision segmentation model (camlens does not)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def test_semantic_segmentation_target_parity() -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=4).eval()
    x = _batch()
    with torch.no_grad():
        y = model(x)["out"]
    category = int(torch.bincount(y.argmax(1).flatten(), minlength=4).argmax())
    masks = [(y[i].argmax(0) == category).float().numpy() for i in range(2)]
    theirs = _theirs(Out(model), model.backbone["16"], x, [SemanticSegmentationTarget(category, m) for m in masks])
    np.testing.assert_allclose(_ours(model, "backbone.16", x, Segmentation(category)), theirs, atol=ATOL)
    user_mask = np.zeros((96, 96), np.float32)
    user_mask[20:70, 10:50] = 1
    theirs = _theirs(Out(model), model.backbone["16"], x,
                     [SemanticSegmentationTarget(1, user_mask) for _ in range(2)])
    np.testing.assert_allclose(_ours(model, "backbone.16", x, Segmentation(1, user_mask)), theirs, atol=ATOL)


def test_finer_cam_parity_and_hand_computation() -> None:
    """pytorch-grad-cam's FinerCAM (Grad-CAM of its FinerWeightedTarget, the authors' code) on
    the top class and on a given class, and the score by hand: the 3 classes whose logits are
    nearest, weighted by their softmax probabilities."""
    from pytorch_grad_cam import FinerCAM

    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=12).eval()
    x = _batch(64)
    with FinerCAM(model, [model.layer4]) as cam:
        theirs = np.asarray(cam(x))
    np.testing.assert_allclose(_ours(model, "layer4", x, Finer()), theirs, atol=ATOL)
    with FinerCAM(model, [model.layer4]) as cam:
        theirs = np.asarray(cam(x, target_idx=5, alpha=0.5))
    np.testing.assert_allclose(_ours(model, "layer4", x, Finer(5, alpha=0.5)), theirs, atol=ATOL)

    def finer(z: torch.Tensor) -> torch.Tensor:
        rows = []
        for zi in z:
            refs = torch.argsort((zi - zi[5]).abs())[1:4]
            p = torch.softmax(zi, 0)[refs]
            rows.append((p * (zi[5] - 0.5 * zi[refs])).sum() / (p.sum() + 1e-9))
        return torch.stack(rows).sum()

    np.testing.assert_allclose(_raw(model, "layer4", x, Finer(5, alpha=0.5)), _by_hand(model, model.layer4, x, finer),
                               rtol=1e-4, atol=1e-6)


def test_binary_classifier_output_target_parity() -> None:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=1).eval()
    x = _batch(64)
    for category in (0, 1):
        theirs = _theirs(model, model.layer4, x, [BinaryClassifierOutputTarget(category)] * 2)
        np.testing.assert_allclose(_ours(model, "layer4", x, Class(category)), theirs, atol=ATOL)


def test_cosine_similarity_callable_parity() -> None:
    """Against a float64 hand computation camlens is within 2e-5 (float32: a cosine near 1
    cancels digits; 1.5e-5 measured on some CPUs); pytorch-grad-cam's float32 cosine gradient is
    1.4e-5 off it, so the two libraries agree to 2.5e-5."""
    torch.manual_seed(2)
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()  # a headless ResNet: (N, 512) embeddings
    model.eval()
    x = _batch(64)
    with torch.no_grad():
        reference = model(torch.flip(x[:1], dims=[3]))[0]
    theirs = _theirs(model, model.layer4, x, [lambda out: F.cosine_similarity(out, reference, dim=0)] * 2)
    raw = _raw(model, "layer4", x, Similarity(reference))
    wide = copy.deepcopy(model).double()
    truth = _by_hand(wide, wide.layer4, x.double(), lambda out: F.cosine_similarity(out, reference[None].double(), dim=1).sum())
    np.testing.assert_allclose(_pgc_scaled(raw, (64, 64)), _pgc_scaled(truth, (64, 64)), atol=2 * ATOL)
    np.testing.assert_allclose(_pgc_scaled(raw, (64, 64)), theirs, atol=2.5 * ATOL)


def test_faster_rcnn_box_score_target_parity() -> None:
    torch.manual_seed(3)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0).eval()
    x = _batch(160)[:1]
    with torch.no_grad():
        det = model(x)[0]
    assert len(det["boxes"]) > 0  # a random detector detects at threshold 0
    j = int(det["scores"].argmax())
    box, label = det["boxes"][j].numpy() + np.array([1.0, -1.0, 2.0, 0.5]), int(det["labels"][j])
    theirs = _theirs(model, model.backbone.body["16"], x, [FasterRCNNBoxScoreTarget([label], [box], iou_threshold=0.5)])
    target = FasterRCNNBoxScoreTarget([label], [box], iou_threshold=0.5)
    raw = _raw(model, "backbone.body.16", x, Detection(box[None], labels=[label]))
    np.testing.assert_allclose(_pgc_scaled(raw, (160, 160)), theirs, atol=ATOL)
    np.testing.assert_allclose(raw, _by_hand(model, model.backbone.body["16"], x, lambda out: target(out[0])),
                               rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_other_torchvision_detectors_explain_their_top_detection(name: str) -> None:
    torch.manual_seed(4)
    kwargs = {"score_thresh": 0.0} | ({} if name.startswith("ssd") else {"min_size": 160, "max_size": 160})
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=5, **kwargs).eval()
    x = _batch(160)[:1]
    with Explainer(model, ["gradcam", "eigencam"]) as ex:
        out = ex(x)
    assert out.columns[0].kind == "detection" and out.targets[0, 0] >= 0
    for by_layer in out.maps.values():
        m = next(iter(by_layer.values()))
        assert np.isfinite(m).all() and m.any()
