"""Parity with peer libraries on the same model, layer and target.

Grad-CAM: pytorch-grad-cam and torchcam. Grad-CAM++: pytorch-grad-cam, whose alpha follows the
paper's Eq. 19 (sum of activations times g^3); torchcam sums g^3 * A over positions instead,
which is not the paper's formula, so it is not the reference here.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from camlens import Explainer
from camlens.core import normalize, upsample

TARGETS = [3, 11, 17]


def _ours(model, batch, method: str, layer: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    with Explainer(model, method, layer) as ex:
        raw = ex(batch, targets=TARGETS).map()[:, 0]
    return normalize(upsample(raw, tuple(batch.shape[2:])))


@pytest.fixture(scope="module")
def steep_resnet(resnet) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    """The same network with its classifier scaled by 1000, so that gradients are large.

    pytorch-grad-cam adds eps = 1e-6 to Grad-CAM++'s denominator 2 g^2 + sum(A) g^3; where
    g^2 is near 1e-6 (common: random or trained nets, deep layers) that eps, not the formula,
    sets alpha. Parity is checked where the eps is negligible; camlens itself uses no eps.
    """
    model = copy.deepcopy(resnet)
    with torch.no_grad():
        model.fc.weight.mul_(1000.0)
    return model


@pytest.mark.parametrize("layer", ["layer2", "layer3", "layer4"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_pytorch_grad_cam_parity(resnet, steep_resnet, batch, method: str, layer: str) -> None:  # type: ignore[no-untyped-def]
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref_cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    if method == "gradcam++":
        resnet = steep_resnet
    with ref_cls(model=resnet, target_layers=[getattr(resnet, layer)]) as ref:
        theirs = ref(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in TARGETS])
    for p in resnet.parameters():
        p.grad = None
    ours = _ours(resnet, batch, method, layer)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_torchcam_gradcam_parity(resnet, batch, layer: str) -> None:  # type: ignore[no-untyped-def]
    from torchcam.methods import GradCAM

    theirs = []
    with GradCAM(resnet, target_layer=layer) as extractor:
        for i, t in enumerate(TARGETS):
            scores = resnet(batch[i : i + 1])
            theirs.append(extractor(t, scores)[0][0].detach().numpy())
    for p in resnet.parameters():
        p.grad = None
    with Explainer(resnet, "gradcam", layer) as ex:
        ours = normalize(ex(batch, targets=TARGETS).map()[:, 0])
    np.testing.assert_allclose(ours, np.stack(theirs), atol=1e-4)


def test_torchcam_cam_parity(resnet, batch) -> None:  # type: ignore[no-untyped-def]
    from torchcam.methods import CAM

    with CAM(resnet, target_layer="layer4", fc_layer="fc") as extractor:
        theirs = []
        for i, t in enumerate(TARGETS):
            scores = resnet(batch[i : i + 1])
            theirs.append(extractor(t, scores)[0][0].detach().numpy())
    with Explainer(resnet, "cam") as ex:
        raw = ex(batch, targets=TARGETS).map()[:, 0]
    # Neither rectifies CAM (as in the paper): both min-max scale the signed map.
    np.testing.assert_allclose(normalize(raw), np.stack(theirs), atol=1e-4)
