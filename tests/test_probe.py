"""The probe: extra forward passes an adapter runs for a method (masked inputs, a layer replaced)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camlens import Explainer
from camlens.adapters.pytorch.capture import TorchProbe
from camlens.core import LayerRecord, Method, Need
from camlens.errors import MethodError
from tests.conftest import TinyGapNet


class PositionOcclusion(Method):
    """Test-only method: the target score's drop when one position of the layer is zeroed."""

    name = "test-position-occlusion"
    title = paper = formula = "test"
    needs = frozenset({Need.FORWARDS})

    def maps(self, record: LayerRecord) -> np.ndarray:
        assert record.probe is not None and record.scores is not None
        n, c, h, w = record.activations.shape
        masks = 1.0 - np.eye(h * w, dtype=np.float32).reshape(h * w, 1, h, w)
        replaced = record.activations[:, None] * masks[None]  # (N, hw, C, h, w)
        scores = record.probe.score_replaced(record.layer, replaced, record.columns)  # (N, hw, K)
        drop = record.scores[:, None, :] - scores
        return drop.transpose(0, 2, 1).reshape(n, -1, h, w)


def test_probe_through_a_method_equals_cam_over_hw(tiny: TinyGapNet) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with Explainer(tiny, [PositionOcclusion(), "cam"], "relu") as ex:
        out = ex(x, top=2)
    occluded = out.maps["test-position-occlusion"]["relu"] * 64  # float32 logit differences, x64
    np.testing.assert_allclose(occluded, out.maps["cam"]["relu"], rtol=1e-4, atol=5e-4)


@pytest.mark.parametrize("max_batch", [1, 3, 64])
def test_masked_and_replaced_scores_by_hand(tiny: TinyGapNet, max_batch: int) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    probe = TorchProbe(tiny, x, {"relu": tiny.relu}, max_batch=max_batch)
    with torch.no_grad():
        logits = tiny(x).numpy()
        acts = tiny.relu(tiny.conv(x)).numpy()
        half = np.zeros((8, 8), np.float32)
        half[:, :4] = 1
        expected_half = tiny(x * torch.from_numpy(half) + 0.5 * (1 - torch.from_numpy(half))).numpy()
        zeros_layer = tiny.fc(torch.zeros(1, 4)).numpy()
    masks = np.stack([np.ones((8, 8), np.float32), half])
    scores = probe.score_masked(masks, baseline=0.5)
    assert scores.shape == (2, 2, 3)
    np.testing.assert_allclose(scores[:, 0], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores[:, 1], expected_half, rtol=1e-5, atol=1e-6)
    per_sample = probe.score_masked(np.stack([masks[::-1], masks]))  # (N, M, H, W)
    np.testing.assert_allclose(per_sample[1, 0], logits[1], rtol=1e-5, atol=1e-6)
    replaced = probe.score_replaced("relu", np.stack([acts, np.zeros_like(acts)], axis=1))
    np.testing.assert_allclose(replaced[:, 0], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(replaced[:, 1], np.repeat(zeros_layer, 2, axis=0), rtol=1e-5, atol=1e-6)
    assert sum(len(m._forward_hooks) for m in tiny.modules()) == 0
    with pytest.raises(MethodError, match="masks must be"):
        probe.score_masked(np.ones((2, 5, 5)))
    with pytest.raises(Exception, match="was not captured"):
        probe.score_replaced("conv", acts[:, None])
