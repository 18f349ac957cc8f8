"""The framework-free core on hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camlens.core import LayerRecord, get_method, method_names, normalize, upsample
from camlens.core.methods import CAM, GradCAM, GradCAMPlusPlus
from camlens.errors import MethodError


def record(acts: np.ndarray, grads: np.ndarray | None = None, class_weights: np.ndarray | None = None) -> LayerRecord:
    """One target per sample: gradients ``(N, C, h, w)`` and class weights ``(N, C)`` get a K axis."""
    n = acts.shape[0]
    return LayerRecord(
        "layer", acts, np.zeros((n, 1), np.int64),
        gradients=None if grads is None else grads[:, None],
        class_weights=None if class_weights is None else class_weights[:, None],
    )


def test_gradcam_weights_are_mean_gradients_and_map_is_rectified() -> None:
    acts = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    grads = np.array([[[[1.0, 1.0], [1.0, 1.0]], [[-4.0, -4.0], [-4.0, 0.0]]]])
    rec = record(acts, grads)
    np.testing.assert_allclose(GradCAM().weights(rec), [[[1.0, -3.0]]])
    # 1*A0 - 3*A1 = [[1, -1], [3, 1]] -> ReLU
    np.testing.assert_allclose(GradCAM().maps(rec), [[[[1.0, 0.0], [3.0, 1.0]]]])


def test_gradcam_plus_plus_matches_eq19_by_hand() -> None:
    acts = np.array([[[[1.0, 2.0], [0.0, 1.0]]]])  # one channel, sum A = 4
    grads = np.array([[[[0.5, -1.0], [0.0, 2.0]]]])
    rec = record(acts, grads)
    # alpha_ij = g^2 / (2 g^2 + 4 g^3): g=.5 -> .25/(.5+.5)=.25 ; g=-1 -> 1/(2-4)=-.5 ; g=0 -> 0 ; g=2 -> 4/(8+32)=.1
    # w = sum alpha * relu(g) = .25*.5 + 0 + 0 + .1*2 = .325
    np.testing.assert_allclose(GradCAMPlusPlus().weights(rec), [[[0.325]]], rtol=1e-6)
    np.testing.assert_allclose(GradCAMPlusPlus().maps(rec), 0.325 * acts, rtol=1e-6)


def test_cam_uses_class_weights_without_relu() -> None:
    acts = np.array([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    rec = record(acts, class_weights=np.array([[2.0, -1.0]]))
    np.testing.assert_allclose(CAM().maps(rec), [[[[2 - 3, -4 - 0]]]])


def test_missing_inputs_raise_clear_errors() -> None:
    rec = record(np.ones((1, 1, 2, 2)))
    with pytest.raises(MethodError, match="Grad-CAM needs gradients"):
        GradCAM().maps(rec)
    with pytest.raises(MethodError, match="class weights"):
        CAM().maps(rec)


def test_method_registry_names_and_aliases() -> None:
    assert method_names()[:3] == ["cam", "gradcam", "gradcam++"]
    assert isinstance(get_method("Grad-CAM++"), GradCAMPlusPlus)
    assert isinstance(get_method("grad_cam"), GradCAM)
    assert isinstance(get_method("GradCAM"), GradCAM) and isinstance(get_method("gradcampp"), GradCAMPlusPlus)
    with pytest.raises(MethodError, match=r"unknown method 'gradcamx'; did you mean .*\(choose from cam, gradcam"):
        get_method("gradcamx")


def test_normalize_min_max_and_constant_maps_become_zero() -> None:
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalize(maps)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [0.25, 1.0]])
    assert np.all(out[1] == 0) and np.all(out[2] == 0)
    assert not np.isnan(out).any()


def test_upsample_equals_torch_bilinear_half_pixel() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 7, 7)).astype(np.float32)
    ours = upsample(maps, (61, 83))
    ref = F.interpolate(torch.from_numpy(maps), size=(61, 83), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_cam_weighting_then_resizing_equals_resizing_then_weighting() -> None:
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(1, 16, 7, 7)).astype(np.float32)
    w = rng.normal(size=(1, 16)).astype(np.float32)
    cam = CAM().maps(record(acts, class_weights=w))
    weight_then_resize = upsample(cam, (224, 300))
    resized = upsample(acts, (224, 300))
    resize_then_weight = CAM().maps(record(resized, class_weights=w))
    np.testing.assert_allclose(weight_then_resize, resize_then_weight, atol=1e-4)
