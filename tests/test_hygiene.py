"""The caller's model is left exactly as it was: hooks, modes, flags, .grad, grad mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camlens import CAM, Explainer, GradCAM
from camlens.core import ATTENTION_NEEDS, method_names
from camlens.errors import ModelFailure
from tests.conftest import TinyDeepNet, TinyGapNet

METHODS = method_names(without=ATTENTION_NEEDS)  # every method a CNN has maps for (rollout: test_transformers)


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def _flags(model: nn.Module) -> list[tuple[str, bool, bool]]:
    return [(n, m.training, all(p.requires_grad for p in m.parameters(recurse=False))) for n, m in model.named_modules()]


@pytest.mark.parametrize("training", [False, True])
def test_no_hooks_no_grads_flags_and_mode_restored(training: bool) -> None:
    model = TinyGapNet()
    model.train(training)
    model.conv.weight.requires_grad_(False)  # mixed flags must survive as they are
    before = _flags(model)
    x = torch.randn(2, 3, 8, 8)
    if training:
        with pytest.warns(UserWarning, match="training mode"), Explainer(model, METHODS) as ex:
            ex(x, top=2)
    else:
        with Explainer(model, METHODS) as ex:
            ex(x, top=2)
    assert _hooks(model) == 0
    assert _flags(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


def test_works_inside_no_grad_and_inference_mode_and_frozen() -> None:
    model = TinyGapNet().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 8, 8)
    with GradCAM(model) as cam:
        ref = cam(x, targets=1).map()
        with torch.no_grad():
            inside = cam(x, targets=1).map()
            assert not torch.is_grad_enabled()
        with torch.inference_mode():
            xi = torch.randn(1, 3, 8, 8) * 0 + x
            inferred = cam(xi, targets=1).map()
            assert torch.is_inference_mode_enabled()
    assert ref.max() > 0
    np.testing.assert_allclose(inside, ref)
    np.testing.assert_allclose(inferred, ref, rtol=1e-6)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_inplace_relu_after_target_does_not_change_captured_activations() -> None:
    model = TinyGapNet(inplace=True).eval()
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        pre_relu = model.conv(x).numpy()
        logits = model(x).numpy()
    assert (pre_relu < 0).any()
    with GradCAM(model, "conv") as cam:
        res = cam(x, targets=0)
    np.testing.assert_allclose(res.activations["conv"], pre_relu, rtol=1e-6)
    np.testing.assert_allclose(res.logits, logits, rtol=1e-6)
    # gradient through the ReLU is w/(hw) where conv > 0, else 0
    g = model.fc.weight[0].detach().numpy()[:, None, None] / 36.0 * (pre_relu[0] > 0)
    expected = np.maximum(np.einsum("c,chw->hw", g.mean(axis=(1, 2)), pre_relu[0]), 0)
    np.testing.assert_allclose(res.map()[0, 0], expected, rtol=1e-5, atol=1e-7)


def test_inplace_relus_inside_deep_model_and_several_layers() -> None:
    model = TinyDeepNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    with Explainer(model, ["gradcam", "gradcam++"], ["features.0", "features.3", "features.4"]) as ex:
        res = ex(x, top=2)
    np.testing.assert_allclose(res.logits, ref, rtol=1e-6)
    with torch.no_grad():
        conv0 = model.features[0](x).numpy()
    np.testing.assert_allclose(res.activations["features.0"], conv0, rtol=1e-6)
    assert _hooks(model) == 0


class Boom(RuntimeError):
    pass


def test_exceptions_propagate_and_hooks_are_removed() -> None:
    model = TinyGapNet().eval()

    def explode(module: nn.Module, args: object, output: object) -> None:
        raise Boom("from the model")

    handle = model.fc.register_forward_hook(explode)
    try:
        for method in METHODS:
            with Explainer(model, method, "relu") as ex, pytest.raises(ModelFailure, match="Boom: from the model") as caught:
                ex(torch.randn(1, 3, 8, 8))
            assert isinstance(caught.value.__cause__, Boom)  # the model's own exception, kept as the cause
            assert _hooks(model) == 1  # only the test's own hook remains
            assert torch.is_grad_enabled()
    finally:
        handle.remove()
    with torch.no_grad():
        with GradCAM(model) as cam:
            cam(torch.randn(1, 3, 8, 8))
        assert not torch.is_grad_enabled()


def test_closed_explainer_refuses_and_releases_model() -> None:
    model = TinyGapNet().eval()
    cam = CAM(model)
    with cam:
        cam(torch.randn(1, 3, 8, 8))
    with pytest.raises(Exception, match="closed"):
        cam(torch.randn(1, 3, 8, 8))


def test_no_full_backward_parameters_never_reached() -> None:
    """Autograd stops at the target layer: no parameter before it is touched by backward."""
    model = TinyDeepNet().eval()
    seen: list[str] = []
    hooks = [p.register_hook(lambda g, n=n: seen.append(n)) for n, p in model.named_parameters()]
    try:
        with GradCAM(model, "features.4") as cam:
            cam(torch.randn(1, 3, 8, 8))
    finally:
        for h in hooks:
            h.remove()
    assert seen == []


def test_one_model_serves_several_threads_without_mixing_captures(resnet) -> None:  # type: ignore[no-untyped-def]
    """Two threads explain different inputs and classes while a third runs plain inference:
    every result equals the one computed alone (hooks act only in the thread that made them)."""
    import threading

    inputs = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    targets = [[1, 2], [5, 9]]
    with Explainer(resnet, ["gradcam", "layercam", "cam"]) as ex:
        alone = [ex(x, targets=t).maps for x, t in zip(inputs, targets, strict=True)]
    failures: list[str] = []
    stop = threading.Event()

    def explain(k: int) -> None:
        with Explainer(resnet, ["gradcam", "layercam", "cam"]) as ex:
            for _ in range(25):
                try:
                    maps = ex(inputs[k], targets=targets[k]).maps
                except Exception as exc:  # a capture from the other thread breaks the gradient
                    failures.append(f"thread {k}: {exc}")
                    continue
                for m, by_layer in maps.items():
                    if not np.allclose(by_layer["layer4"], alone[k][m]["layer4"], rtol=1e-4, atol=1e-6):
                        failures.append(f"thread {k} {m}")

    def infer() -> None:
        while not stop.is_set():
            with torch.no_grad():
                resnet(torch.randn(3, 3, 64, 64))

    workers = [threading.Thread(target=explain, args=(k,)) for k in (0, 1)]
    noise = threading.Thread(target=infer)
    noise.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    noise.join()
    assert failures == [] and _hooks(resnet) == 0
