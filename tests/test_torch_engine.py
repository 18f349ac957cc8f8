"""The PyTorch adapter: golden values on a hand-built model, batching, targets, layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from camlens import CAM, Explainer, GradCAM, GradCAMPlusPlus
from camlens.adapters.pytorch import auto_layer, trace
from camlens.errors import LayerError, MethodError, TargetError


def _by_hand(model, x):  # type: ignore[no-untyped-def]
    """Feature maps A = relu(conv(x)) and logits, computed without camlens."""
    with torch.no_grad():
        a = torch.relu(model.conv(x))
        logits = model.fc(a.mean(dim=(2, 3)))
    return a.numpy(), logits.numpy()


def test_cam_golden_values_and_mean_equals_logit_minus_bias(tiny) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(3))
    a, logits = _by_hand(tiny, x)
    w = tiny.fc.weight.detach().numpy()
    with CAM(tiny) as cam:
        res = cam(x, targets=[2, 0])
    maps = res.map()[:, 0]
    expected = np.stack([np.einsum("c,chw->hw", w[2], a[0]), np.einsum("c,chw->hw", w[0], a[1])])
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    bias = tiny.fc.bias.detach().numpy()
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), [logits[0, 2] - bias[2], logits[1, 0] - bias[0]], rtol=1e-5)
    np.testing.assert_allclose(res.logits, logits, rtol=1e-6)


def test_gradcam_on_gap_linear_head_is_rectified_cam_over_hw(tiny) -> None:  # type: ignore[no-untyped-def]
    # d logit_c / dA_k(x, y) = w_ck / (h w): Grad-CAM weights are w_c / (h w).
    x = torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    a, _ = _by_hand(tiny, x)
    w = tiny.fc.weight.detach().numpy()
    with GradCAM(tiny, layer="relu") as cam:
        res = cam(x, targets=1)
    expected = np.maximum(np.einsum("c,chw->hw", w[1], a[0]), 0) / 20.0
    np.testing.assert_allclose(res.map()[0, 0], expected, rtol=1e-5, atol=1e-7)


def test_gradcam_plus_plus_on_gap_linear_head_by_hand(tiny) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    a, _ = _by_hand(tiny, x)
    g = np.broadcast_to(tiny.fc.weight.detach().numpy()[0][:, None, None] / 16.0, a[0].shape)
    s = a[0].sum(axis=(1, 2), keepdims=True)
    alpha = np.where(g != 0, g**2 / (2 * g**2 + s * g**3), 0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    expected = np.maximum(np.einsum("c,chw->hw", weights, a[0]), 0)
    with GradCAMPlusPlus(tiny, layer="relu") as cam:
        res = cam(x, targets=0)
    np.testing.assert_allclose(res.map()[0, 0], expected, rtol=1e-4, atol=1e-7)


def test_several_targets_per_image_share_one_forward(tiny) -> None:  # type: ignore[no-untyped-def]
    calls = []
    handle = tiny.conv.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(3, 3, 6, 6)
    try:
        with Explainer(tiny, ["gradcam", "gradcam++", "cam"], "relu") as explainer:
            explainer(x[:1])  # first call traces the model once to locate the CAM head
            calls.clear()
            res = explainer(x, top=3)
            assert len(calls) == 1
            with GradCAM(tiny, "relu") as single:
                for k in range(3):
                    one = single(x, targets=res.targets[:, k])
                    np.testing.assert_allclose(res.maps["gradcam"]["relu"][:, k], one.map()[:, 0], rtol=1e-5, atol=1e-7)
    finally:
        handle.remove()
    assert res.targets.shape == (3, 3)
    np.testing.assert_array_equal(res.targets, np.argsort(-res.logits, axis=1)[:, :3])


def test_batch_maps_equal_per_sample_maps() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with GradCAM(model, "layer3") as cam:
        batch = cam(x, targets=[1, 2, 3, 4]).map()
        single = np.concatenate([cam(x[i : i + 1], targets=i + 1).map() for i in range(4)])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-6)


def test_layer1_to_layer4_at_once_match_separate_runs() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    names = ["layer1", "layer2", "layer3", "layer4"]
    with GradCAM(model, names) as cam:
        res = cam(x, targets=3)
    shapes = {n: res.maps["gradcam"][n].shape for n in names}
    assert shapes == {"layer1": (2, 1, 16, 16), "layer2": (2, 1, 8, 8), "layer3": (2, 1, 4, 4), "layer4": (2, 1, 2, 2)}
    for n in names:
        with GradCAM(model, getattr(model, n)) as one:
            np.testing.assert_allclose(res.maps["gradcam"][n], one(x, targets=3).map(), rtol=1e-4, atol=1e-6)


def test_automatic_layer_choices() -> None:
    cases = {
        "resnet18": "layer4",
        "vgg11": "features",
        "densenet121": "features",
        "mobilenet_v3_small": "features",
        "convnext_tiny": "features",
    }
    for name, expected in cases.items():
        model = torchvision.models.get_model(name, weights=None).eval()
        assert auto_layer(model, trace(model, torch.zeros(1, 3, 64, 64))) == expected, name


def test_cam_head_found_for_densenet_with_functional_relu() -> None:
    model = torchvision.models.densenet121(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with CAM(model) as cam:
        c = cam(x, targets=5).map()[0, 0]
    # DenseNet applies F.relu after `features`: CAM must weight relu(features), not features.
    with torch.no_grad():
        feats = torch.relu(model.features(x))[0].numpy()
        logit = float(model(x)[0, 5] - model.classifier.bias[5])
        w = model.classifier.weight[5].numpy()
    np.testing.assert_allclose(c, np.einsum("c,chw->hw", w, feats), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c.mean(), logit, rtol=1e-4)


@pytest.mark.parametrize(
    "name, cause",
    [
        ("vgg11", "no linear layer \\(or 1x1 conv\\) maps its 512 channels to the 1000 classes"),
        ("convnext_tiny", "the classifier's input is not the spatial mean of this layer: they differ by up to"),
    ],
)
def test_cam_refused_without_gap_linear_head_naming_the_cause(name: str, cause: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    with CAM(model) as cam, pytest.raises(MethodError, match=f"{cause}.*; use gradcam"):
        cam(torch.randn(1, 3, 64, 64))


def _cam_mean_is_logit_minus_bias(model: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor, rtol: float) -> None:
    with CAM(model) as cam:
        out = cam(x, top=3)
    expected = np.take_along_axis(out.logits, out.targets, axis=1) - bias.float().numpy()[out.targets]
    np.testing.assert_allclose(out.map().mean(axis=(2, 3)), expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def test_cam_on_a_1x1_conv_classifier_after_pooling() -> None:
    import timm

    model = timm.create_model("resnetv2_50", pretrained=False, num_classes=7).eval()
    assert isinstance(model.head.fc, torch.nn.Conv2d)
    _cam_mean_is_logit_minus_bias(model, torch.randn(2, 3, 64, 64), model.head.fc.bias.detach(), 1e-4)


@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_cam_in_half_precision(tiny, dtype: torch.dtype, rtol: float) -> None:  # type: ignore[no-untyped-def]
    model = tiny.to(dtype)
    _cam_mean_is_logit_minus_bias(model, torch.randn(2, 3, 8, 8).to(dtype), model.fc.bias.detach(), rtol)


def _batches_tracked(model: torch.nn.Module) -> list[int]:
    return [int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_train_mode_googlenet_cam_with_dropout_and_no_extra_forward() -> None:
    model = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=True).train()
    before = _batches_tracked(model)
    rng = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="training mode"), CAM(model) as cam:
        out = cam(torch.randn(2, 3, 64, 64), top=2)
    assert out.map().shape == (2, 2, 2, 2) and np.isfinite(out.map()).all()
    assert _batches_tracked(model) == [b + 1 for b in before]  # the explained forward only, no tracing forward
    assert not torch.equal(rng, torch.random.get_rng_state())  # ...whose dropout drew numbers, as a forward does


def test_train_mode_inception_auto_layer_needs_no_batch_of_one() -> None:
    model = torchvision.models.inception_v3(num_classes=5, aux_logits=True, init_weights=False).train()
    before = _batches_tracked(model)
    with pytest.warns(UserWarning, match="training mode"), CAM(model) as cam:
        out = cam(torch.randn(2, 3, 299, 299))
    assert out.map().shape == (2, 1, 8, 8) and _batches_tracked(model) == [b + 1 for b in before]


def test_cam_refused_on_other_layers(tiny) -> None:  # type: ignore[no-untyped-def]
    with CAM(tiny, "conv") as cam, pytest.raises(MethodError, match="only to the layer that feeds the classifier"):
        cam(torch.randn(1, 3, 8, 8))


def test_unknown_layer_lists_close_matches(tiny) -> None:  # type: ignore[no-untyped-def]
    model = torchvision.models.resnet18()
    with pytest.raises(LayerError, match="no layer 'layer5'; did you mean layer4, layer3"):
        GradCAM(model, "layer5")
    with pytest.raises(LayerError, match="not a sub-module"):
        GradCAM(model, tiny.conv)


def test_targets_validated(tiny) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 3, 8, 8)
    with GradCAM(tiny) as cam:
        with pytest.raises(TargetError, match="class index 7 is out of range: the model has 3 classes"):
            cam(x, targets=7)
        with pytest.raises(TargetError, match="3 targets for a batch of 2"):
            cam(x, targets=[0, 1, 2])
        assert cam(x, targets=[[0, 2], [1, 1]]).map().shape == (2, 2, 8, 8)


def test_deep_model_all_methods_finite(deep) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 3, 8, 8)
    with Explainer(deep, ["gradcam", "gradcam++"], ["features.1", "features.4"]) as ex:
        res = ex(x, top=2)
    for by_layer in res.maps.values():
        for maps in by_layer.values():
            assert np.isfinite(maps).all() and (maps >= 0).all()


def test_cam_and_gradcam_together_on_densenet_match_separate_runs() -> None:
    """CAM weighs relu(features) for DenseNet; Grad-CAM in the same run still uses features."""
    model = torchvision.models.densenet121(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with Explainer(model, ["cam", "gradcam", "gradcam++"]) as both, CAM(model) as cam, GradCAM(model) as gc:
        res = both(x, targets=7)
        np.testing.assert_allclose(res.maps["cam"]["features"], cam(x, targets=7).map(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.maps["gradcam"]["features"], gc(x, targets=7).map(), rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        np.testing.assert_allclose(res.activations["features"], model.features(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_layer_without_feature_maps_is_named_in_one_line(resnet) -> None:  # type: ignore[no-untyped-def]
    for method in ("gradcam", "eigencam"):
        cause = r"layer 'fc' outputs shape \(1, 20\), not a feature map"
        with Explainer(resnet, method, "fc") as ex, pytest.raises(LayerError, match=cause):
            ex(torch.randn(1, 3, 32, 32))
