"""Every registered method: golden values by hand, parity with the peers where they are right,
and behaviour on the bundled model and a real photo (parametrised over the registry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from camlens import Explainer
from camlens.core import LayerRecord, Method, get_method, method_classes, method_names, normalize, upsample
from camlens.core.methods import (
    EigenCAM,
    GradCAMElementWise,
    GradCAMPlusPlusAuthors,
    GradCAMPlusPlusPGC,
    LayerCAM,
    XGradCAM,
    principal_projection,
    register,
)
from camlens.core.record import ATTENTION_NEEDS, Need
from camlens.errors import MethodError
from tests.conftest import TinyGapNet

CNN_METHODS = method_names(without=ATTENTION_NEEDS)  # every method with maps on a CNN (not attention rollout)
# the methods that run the model again (Score-CAM: 515 forwards on this photo, SS-CAM 35 times
# that) are checked on the bundled model against their naive definitions in test_perturbation
PHOTO_METHODS = [m for m in CNN_METHODS if Need.FORWARDS not in get_method(m).needs]

ACTS = np.array([[[[1.0, 2.0], [0.0, 1.0]], [[0.5, 0.0], [0.0, 0.5]]]])  # (1, 2, 2, 2); channel sums 4, 1
GRADS = np.array([[[[0.5, -1.0], [0.0, 2.0]], [[1.0, 1.0], [-2.0, 0.0]]]])


def rec(acts: np.ndarray = ACTS, grads: np.ndarray = GRADS) -> LayerRecord:
    return LayerRecord("layer", acts, np.zeros((acts.shape[0], 1), np.int64), gradients=grads[:, None])


def test_xgradcam_by_hand() -> None:
    # w0 = (1*.5 + 2*-1 + 0 + 1*2) / 4 = .125 ; w1 = (.5*1 + 0 + 0 + 0) / 1 = .5
    np.testing.assert_allclose(XGradCAM().weights(rec()), [[[0.125, 0.5]]])
    np.testing.assert_allclose(XGradCAM().maps(rec())[0, 0], np.maximum(0.125 * ACTS[0, 0] + 0.5 * ACTS[0, 1], 0))
    zero = rec(np.zeros_like(ACTS))
    assert np.all(XGradCAM().weights(zero) == 0)  # a channel summing to 0 gets weight 0, no NaN


def test_layercam_and_elementwise_by_hand() -> None:
    product = GRADS * ACTS  # [[.5, -2], [0, 2]] and [[.5, 0], [0, 0]]
    layer = np.maximum(GRADS, 0) * ACTS  # [[.5, 0], [0, 2]] and [[.5, 0], [0, 0]]
    np.testing.assert_allclose(LayerCAM().maps(rec())[0, 0], [[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(LayerCAM().maps(rec())[0, 0], np.maximum(layer.sum(axis=1), 0)[0])
    np.testing.assert_allclose(GradCAMElementWise().maps(rec())[0, 0], np.maximum(product, 0).sum(axis=1)[0])


def test_gradcam_plus_plus_variants_by_hand() -> None:
    # channel 0: alpha = g^2 / (2 g^2 + 4 g^3): g=.5 -> .25, g=-1 -> -.5, g=0 -> 0, g=2 -> .1
    # channel 1: sum A = 1: g=1 -> 1/3, g=1 -> 1/3, g=-2 -> 4/(8-8) = 0/0 -> 0, g=0 -> 0
    # authors: alpha normalised over positive-gradient positions: ch0 (.25 + .1), ch1 (2/3)
    w0 = (0.25 * 0.5 + 0.1 * 2) / 0.35
    w1 = (1 / 3 + 1 / 3) / (2 / 3)
    np.testing.assert_allclose(GradCAMPlusPlusAuthors().weights(rec()), [[[w0, w1]]], rtol=1e-6)
    eps = 1e-6  # pytorch-grad-cam's: the g=-2 position now has alpha 4 / 1e-6 but relu(g) = 0 there
    a = [0.25 / (0.5 + 0.5 + eps), 4 / (8 + 32 + eps)]
    b = 1 / (2 + 1 + eps)
    np.testing.assert_allclose(GradCAMPlusPlusPGC().weights(rec()), [[[a[0] * 0.5 + a[1] * 2, 2 * b]]], rtol=1e-6)


def test_principal_projection_sign_rule_and_degenerate_input() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(49, 8)) + np.linspace(0, 3, 49)[:, None]
    ref = rows.mean(axis=1)
    p = principal_projection(rows, ref)
    centred = rows - rows.mean(axis=0)
    v = np.linalg.svd(centred)[2][0]
    assert np.allclose(np.abs(p), np.abs(centred @ v)) and p @ ref >= 0
    np.testing.assert_allclose(principal_projection(-rows, -ref), -p, atol=1e-9)  # sign follows the reference
    assert np.all(principal_projection(np.ones((9, 3)), np.ones(9)) == 0)


def test_hirescam_equals_cam_over_hw_on_a_gap_linear_head(tiny: TinyGapNet) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with Explainer(tiny, ["cam", "hirescam"], "relu") as ex:
        out = ex(x, top=3)
    np.testing.assert_allclose(out.maps["hirescam"]["relu"] * 64, out.maps["cam"]["relu"], rtol=1e-4, atol=1e-5)


class SmoothNet(nn.Module):
    """conv -> relu -> conv [target] -> GELU -> linear -> tanh -> linear: a curved head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Sequential(nn.GELU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 12), nn.Tanh(), nn.Linear(12, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.relu(self.conv1(x))))


def test_shapleycam_against_a_hessian_vector_product_by_hand() -> None:
    model = SmoothNet().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        acts = model.conv2(torch.relu(model.conv1(x)))
    targets = [1, 3]
    weights = []
    for i, t in enumerate(targets):
        def score(a: torch.Tensor, i: int = i, t: int = t) -> torch.Tensor:
            return model.head(a[None])[0, t]

        a = acts[i]
        g = torch.func.grad(score)(a)
        _, ha = torch.autograd.functional.hvp(score, a, a)
        weights.append((g - 0.5 * ha).mean(dim=(1, 2)))
    expected = torch.relu(torch.einsum("nc,nchw->nhw", torch.stack(weights), acts)).detach().numpy()
    with Explainer(model, ["shapleycam", "gradcam"], "conv2") as ex:
        out = ex(x, targets=targets)
    np.testing.assert_allclose(out.maps["shapleycam"]["conv2"][:, 0], expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(out.maps["shapleycam"]["conv2"], out.maps["gradcam"]["conv2"])  # the curvature counts


def test_shapleycam_equals_gradcam_on_a_piecewise_linear_head(tiny: TinyGapNet) -> None:
    x = torch.randn(2, 3, 8, 8)
    with Explainer(tiny, ["shapleycam", "gradcam"], "relu") as ex:
        out = ex(x, top=2)
    np.testing.assert_allclose(out.maps["shapleycam"]["relu"], out.maps["gradcam"]["relu"], atol=1e-6)


def test_batched_gradients_equal_one_backward_per_target() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with Explainer(model, ["gradcam", "layercam"], ["layer3", "layer4"]) as ex:
        many = ex(x, targets=np.array([[1, 4, 7], [0, 9, 2]]))
        one = [ex(x, targets=np.array([[1], [0]]) if k == 0 else np.array([[4, 7][k - 1], [9, 2][k - 1]])) for k in range(3)]
    for method in ("gradcam", "layercam"):
        for layer in ("layer3", "layer4"):
            stacked = np.concatenate([o.maps[method][layer] for o in one], axis=1)
            np.testing.assert_allclose(many.maps[method][layer], stacked, rtol=1e-4, atol=1e-6)


def test_registry_refuses_duplicate_names_and_aliases() -> None:
    with pytest.raises(MethodError, match="'gradcam' of Dup is already taken by 'gradcam'"):
        @register
        class Dup(EigenCAM):
            name = "Grad-CAM"

    with pytest.raises(MethodError, match="already taken by 'gradcam\\+\\+'"):
        @register
        class Dup2(EigenCAM):
            name = "brand-new"
            aliases = ("gradcampp",)

    assert "brand-new" not in method_names()


@pytest.mark.parametrize("cls", method_classes(), ids=lambda c: c.name)
def test_every_method_documents_itself(cls: type[Method]) -> None:
    assert cls.__doc__ and cls.paper and cls.title and cls.name == cls.name.lower()
    assert (cls.backwards > 0) == bool(cls.needs & {Need.GRADIENTS, Need.HESSIAN, Need.ATTENTION_GRADIENTS,
                                                     Need.LAYERWISE_GRADIENTS})


@pytest.fixture(scope="module")
def photo_maps(lens):  # type: ignore[no-untyped-def]
    from camlens.samples import sample_image

    return lens.explain([sample_image("coffee")], PHOTO_METHODS, None, ["espresso", "top-2"])[0]


@pytest.mark.parametrize("method", PHOTO_METHODS)
def test_every_method_on_the_bundled_model_and_a_real_photo(photo_maps, method: str) -> None:  # type: ignore[no-untyped-def]
    maps = [e for e in photo_maps if e.method == method]
    assert {e.target.label for e in maps} >= {"espresso"} and len(maps) == 2
    for e in maps:
        assert e.raw.shape == (7, 7) and np.isfinite(e.raw).all() and np.ptp(e.raw) > 0
        assert np.isfinite(e.heatmap).all() and e.heatmap.max() == 1.0


@pytest.mark.parametrize("method", CNN_METHODS)
def test_every_method_is_deterministic_and_batch_independent(tiny: TinyGapNet, method: str) -> None:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    with Explainer(tiny, method, "relu") as ex:
        a, b = ex(x, top=2).map(), ex(x, top=2).map()
        alone = ex(x[1:2], top=2).map()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[1:2], alone, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- parity with peers


TARGETS = [3, 11, 17]
PGC = {  # camlens name -> pytorch-grad-cam class (maps ReLU'd and min-max scaled by it)
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gradcam++-pgc": "GradCAMPlusPlus",
    "shapleycam": "ShapleyCAM",
}


def _pgc(model: nn.Module, batch: torch.Tensor, name: str, layer: str) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with getattr(pytorch_grad_cam, name)(model=model, target_layers=[getattr(model, layer)]) as ref:
        theirs = ref(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in TARGETS])
    for p in model.parameters():
        p.grad = None
    return np.asarray(theirs)


def _ours(model: nn.Module, batch: torch.Tensor, method: str, layer: str) -> np.ndarray:
    with Explainer(model, method, layer) as ex:
        raw = ex(batch, targets=TARGETS).map()[:, 0]
    return normalize(upsample(np.maximum(raw, 0), tuple(batch.shape[2:])))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize("method", list(PGC))
def test_pytorch_grad_cam_parity(resnet, batch, method: str, layer: str) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(_ours(resnet, batch, method, layer), _pgc(resnet, batch, PGC[method], layer), atol=2e-3)


def test_shapleycam_parity_on_a_curved_head() -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = SmoothNet().eval()
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    with pytorch_grad_cam.ShapleyCAM(model=model, target_layers=[model.conv2]) as ref:
        theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (0, 2, 3)])
    with Explainer(model, "shapleycam", "conv2") as ex:
        raw = ex(x, targets=[0, 2, 3]).map()[:, 0]
    np.testing.assert_allclose(normalize(upsample(raw, (6, 6))), theirs, atol=2e-3)


@pytest.mark.parametrize("method, project", [("eigencam", "get_2d_projection"), ("kpcacam", "get_2d_projection_kernel")])
def test_eigen_projections_equal_pytorch_grad_cams_up_to_the_fixed_sign(resnet, batch, method: str, project: str) -> None:  # type: ignore[no-untyped-def]
    from pytorch_grad_cam.utils import svd_on_activations

    with Explainer(resnet, method, "layer4") as ex:
        out = ex(batch, targets=TARGETS)
    acts = out.activations["layer4"]
    theirs = getattr(svd_on_activations, project)(acts.astype(np.float32))
    for i in range(len(TARGETS)):
        sign = 1.0 if float((theirs[i] * acts[i].mean(axis=0)).sum()) >= 0 else -1.0
        expected = np.maximum(sign * theirs[i], 0)
        np.testing.assert_allclose(normalize(out.map()[i, 0]), normalize(expected), atol=2e-3)


def test_eigengradcam_equals_pytorch_grad_cams_projection_up_to_the_fixed_sign(resnet, batch) -> None:  # type: ignore[no-untyped-def]
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    captured: list[torch.Tensor] = []
    handle = resnet.layer4.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = resnet(batch)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits[torch.arange(3), TARGETS].sum(), captured)
    for p in resnet.parameters():
        p.grad = None
    product = (grads * captured[0]).detach().numpy()
    theirs = get_2d_projection(product)
    with Explainer(resnet, "eigengradcam", "layer4") as ex:
        ours = ex(batch, targets=TARGETS).map()[:, 0]
    for i in range(3):
        sign = 1.0 if float((theirs[i] * product[i].sum(axis=0)).sum()) >= 0 else -1.0
        np.testing.assert_allclose(normalize(ours[i]), normalize(np.maximum(sign * theirs[i], 0)), atol=2e-3)


@pytest.mark.parametrize("method, peer", [("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")])
def test_torchcam_parity(resnet, batch, method: str, peer: str) -> None:  # type: ignore[no-untyped-def]
    import torchcam.methods

    theirs = []
    with getattr(torchcam.methods, peer)(resnet, target_layer="layer4") as extractor:
        for i, t in enumerate(TARGETS):
            scores = resnet(batch[i : i + 1])
            theirs.append(extractor(t, scores)[0][0].detach().numpy())
    for p in resnet.parameters():
        p.grad = None
    with Explainer(resnet, method, "layer4") as ex:
        ours = normalize(ex(batch, targets=TARGETS).map()[:, 0])
    np.testing.assert_allclose(ours, np.stack(theirs), atol=1e-4)


# ---------------------------------------------------------------- every class, layer fusion


def test_every_class_in_one_call_equals_one_class_at_a_time(resnet, batch) -> None:  # type: ignore[no-untyped-def]
    methods = ["cam", "gradcam", "layercam", "shapleycam"]
    with Explainer(resnet, methods) as ex:
        every = ex(batch, targets="all")
        some = ex(batch, targets=np.array([[0, 7, 19]] * 3))
    assert every.targets.shape == (3, 20) and np.array_equal(every.targets[0], np.arange(20))
    for m in methods:
        assert every.maps[m]["layer4"].shape == (3, 20, 3, 3)
        np.testing.assert_allclose(every.maps[m]["layer4"][:, [0, 7, 19]], some.maps[m]["layer4"], rtol=1e-4, atol=1e-6)


def test_gradients_for_many_targets_go_in_bounded_chunks(resnet, batch, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from camlens.core import compute

    with Explainer(resnet, "gradcam") as ex:
        whole = ex(batch, targets="all").map()
        monkeypatch.setattr(compute, "CHUNK_BYTES", 1)  # one target column per chunk
        chunked = ex(batch, targets="all").map()
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-7)


def test_fusion_by_hand() -> None:
    from camlens.core.fusion import fuse

    coarse = np.array([[[[0.0, 4.0], [2.0, 2.0]]]])  # (1, 1, 2, 2): upsampled to 4x4 first
    fine = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    up = normalize(upsample(coarse, (4, 4)))
    f = normalize(fine)
    np.testing.assert_allclose(fuse({"a": coarse, "b": fine}, "mean"), normalize((up + f) / 2), atol=1e-6)
    np.testing.assert_allclose(fuse({"a": coarse, "b": fine}, "max"), normalize(np.maximum(up, f)), atol=1e-6)
    np.testing.assert_allclose(fuse({"a": coarse, "b": fine}, "product"), normalize(up * f), atol=1e-6)
    with pytest.raises(Exception, match="unknown layer fusion 'median'"):
        fuse({"a": coarse, "b": fine}, "median")


def test_explainer_fuses_layers_and_refuses_a_single_layer(resnet, batch) -> None:  # type: ignore[no-untyped-def]
    from camlens.core.fusion import fuse

    with Explainer(resnet, ["gradcam", "layercam"], ["layer2", "layer3", "layer4"], fuse="product") as ex:
        out = ex(batch, targets=TARGETS)
    key = "product(layer2+layer3+layer4)"
    for m in ("gradcam", "layercam"):
        by_layer = {k: v for k, v in out.maps[m].items() if k != key}
        assert out.maps[m][key].shape == (3, 1, 12, 12)
        np.testing.assert_allclose(out.maps[m][key], fuse(by_layer, "product"))
    with pytest.raises(Exception, match="at least two layers"):
        Explainer(resnet, "gradcam", "layer4", fuse="mean")


def test_lens_and_cli_explain_every_class(lens, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from camlens.samples import write_samples
    from tests.test_cli import camlens

    [items] = lens.explain([write_samples(tmp_path / "in")[1]], "cam", None, "all")
    assert len(items) == 1000 and [e.target.index for e in items] == list(range(1000))
    with pytest.raises(Exception, match="give it alone"):
        lens.parse_targets(["all", "top-2"])
    result = camlens("explain", tmp_path / "in" / "coffee.png", "--method", "gradcam,layercam", "--target", "all",
                     "--layer", "blocks.5,bn2", "--fuse", "mean", "--out", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    raw = np.load(tmp_path / "out" / "coffee_gradcam_bn2_all-classes.npy")
    assert raw.shape == (1000, 7, 7)
    [[espresso]] = lens.explain([tmp_path / "in" / "coffee.png"], "gradcam", "bn2", 967)
    np.testing.assert_allclose(raw[967], espresso.raw, rtol=1e-4, atol=1e-6)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    for m in ("gradcam", "layercam"):
        for layer in ("blocks.5", "bn2", "mean-blocks.5+bn2"):
            assert {f"coffee_{m}_{layer}_all-classes.npy", f"coffee_{m}_{layer}_all-classes.png"} <= names
    from PIL import Image

    assert Image.open(tmp_path / "out" / "coffee_gradcam_bn2_all-classes.png").size[0] > 1000
