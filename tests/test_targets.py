"""Target kinds on tiny hand-built PyTorch models: each score and its Grad-CAM computed by hand.

For a layer A (C, h, w) and a score s, Grad-CAM is ReLU(sum_c alpha_c A_c) with
alpha_c = mean over positions of ds/dA_c. Each test derives ds/dA by hand from the model's
weights, so the target's score *and* its gradient are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camlens import Explainer
from camlens.errors import CamlensError, LayerError, MethodError, TargetError
from camlens.targets import (
    AllClasses,
    Class,
    Detection,
    Probability,
    Score,
    Segmentation,
    Sigmoid,
    Similarity,
    Top,
    target_kinds,
)
from tests.conftest import TinyGapNet

X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5))


def _acts(model: nn.Module, x: torch.Tensor = X) -> np.ndarray:
    with torch.no_grad():
        return model.relu(model.conv(x)).numpy().astype(np.float64)


def _gradcam(acts: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(N, h, w) maps from (N, C, h, w) activations and (N, C) weights."""
    return np.maximum(np.einsum("nc,nchw->nhw", alpha, acts), 0.0)


def _run(model: nn.Module, targets: object, method: str = "gradcam", **kw: object):  # type: ignore[no-untyped-def]
    with Explainer(model, method, "relu", **kw) as ex:  # type: ignore[arg-type]
        return ex(X, targets)


class OneUnit(TinyGapNet):
    """TinyGapNet with a single output unit (a binary or regression head)."""

    def __init__(self) -> None:
        super().__init__(classes=1)


def test_registry_lists_every_kind_once() -> None:
    kinds = [k.kind for k in target_kinds()]
    assert kinds == ["class", "top", "all", "probability", "sigmoid", "finer", "score", "segmentation", "similarity", "detection"]
    assert all(k.summary and k.outputs for k in target_kinds())


def test_class_logit_golden(tiny: TinyGapNet) -> None:
    acts, w = _acts(tiny), tiny.fc.weight.detach().numpy().astype(np.float64)
    out = _run(tiny, [Class(2), Class([0, 1])])
    hw = acts.shape[2] * acts.shape[3]
    np.testing.assert_allclose(out.map()[:, 0], _gradcam(acts, np.tile(w[2] / hw, (2, 1))), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.map()[:, 1], _gradcam(acts, w[[0, 1]] / hw), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.targets, [[2, 0], [2, 1]])
    with torch.no_grad():
        logits = tiny(X).numpy()
    np.testing.assert_allclose(out.scores, logits[[[0], [1]], [[2, 0], [2, 1]]], rtol=1e-6)


def test_one_unit_head_positive_and_negative_sides() -> None:
    model = OneUnit().eval()
    acts, w = _acts(model), model.fc.weight.detach().numpy()[0].astype(np.float64)
    hw = acts.shape[2] * acts.shape[3]
    out = _run(model, [Class(1), Class(0)])
    with torch.no_grad():
        z = model(X).numpy()[:, 0]
    np.testing.assert_allclose(out.scores, np.stack([z / 2, -z / 2], axis=1), rtol=1e-6)
    np.testing.assert_allclose(out.map()[:, 0], _gradcam(acts, np.tile(w / (2 * hw), (2, 1))), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.map()[:, 1], _gradcam(acts, np.tile(-w / (2 * hw), (2, 1))), rtol=1e-5, atol=1e-7)
    sig = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(out.probabilities, np.stack([1 - sig, sig], axis=1), rtol=1e-4, atol=1e-7)
    probs = _run(model, [Probability(1), Sigmoid(1), Sigmoid(0)]).scores
    np.testing.assert_allclose(probs, np.stack([sig, sig, 1 - sig], axis=1), rtol=1e-4, atol=1e-7)


def test_cam_on_a_one_unit_head_explains_both_sides() -> None:
    model = OneUnit().eval()
    acts, w = _acts(model), model.fc.weight.detach().numpy()[0].astype(np.float64)
    out = _run(model, [Class(1), Class(0)], "cam")
    expected = np.einsum("c,nchw->nhw", w / 2, acts)  # CAM keeps its sign
    np.testing.assert_allclose(out.map()[:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.map()[:, 1], -expected, rtol=1e-5, atol=1e-6)


def test_probability_and_sigmoid_golden(tiny: TinyGapNet) -> None:
    acts, w = _acts(tiny), tiny.fc.weight.detach().numpy().astype(np.float64)
    hw = acts.shape[2] * acts.shape[3]
    with torch.no_grad():
        z = tiny(X).numpy().astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    # d p_k / d z_j = p_k (delta_kj - p_j); d z_j / d A_c = w_jc / hw
    alpha_p = p[:, 1:2] * (w[1][None] - p @ w) / hw
    sig = 1 / (1 + np.exp(-z[:, 2]))
    alpha_s = (sig * (1 - sig))[:, None] * w[2][None] / hw
    out = _run(tiny, [Probability(1), Sigmoid(2)])
    np.testing.assert_allclose(out.scores, np.stack([p[:, 1], sig], axis=1), rtol=1e-5)
    np.testing.assert_allclose(out.map()[:, 0], _gradcam(acts, alpha_p), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out.map()[:, 1], _gradcam(acts, alpha_s), rtol=1e-4, atol=1e-7)


def test_score_function_golden(tiny: TinyGapNet) -> None:
    acts, w = _acts(tiny), tiny.fc.weight.detach().numpy().astype(np.float64)
    hw = acts.shape[2] * acts.shape[3]
    out = _run(tiny, Score(lambda y: y[:, 0] - 2 * y[:, 1], name="margin"))
    np.testing.assert_allclose(out.map()[:, 0], _gradcam(acts, np.tile((w[0] - 2 * w[1]) / hw, (2, 1))), rtol=1e-5, atol=1e-6)
    assert out.columns[0].label == "margin" and out.targets.tolist() == [[-1], [-1]]
    two = _run(tiny, Score(lambda y: y[:, :2]))  # (N, K) scores: K columns
    assert two.map().shape[1] == 2


class TinySeg(nn.Module):
    """conv(3->4) -> ReLU -> 1x1 conv (4 -> 3 classes): (N, 3, h, w) logits, returned as a dict."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.classifier = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.relu(self.conv(x))), "aux": x}


def test_segmentation_golden_default_region_and_mask() -> None:
    model = TinySeg().eval()
    acts = _acts(model)
    w = model.classifier.weight.detach().numpy()[:, :, 0, 0].astype(np.float64)  # (classes, C)
    with torch.no_grad():
        y = model(X)["out"].numpy()
    region = y.argmax(1) == 1  # (N, h, w)
    # s = sum_p region[p] y_1[p] -> ds/dA_c[p] = w_1c region[p]; alpha_c = w_1c mean(region)
    alpha = w[1][None] * region.reshape(2, -1).mean(1)[:, None]
    out = _run(model, Segmentation(1))
    np.testing.assert_allclose(out.scores[:, 0], (y[:, 1] * region).sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(out.map()[:, 0], _gradcam(acts, alpha), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.columns[0].regions, region)
    assert _run(model, Class(1)).columns[0].kind == "segmentation"  # a class on a segmentation model is its region
    mask = np.zeros((2, 6, 6), np.float32)
    mask[0, :3] = 1
    mask[1, :, 4:] = 1
    masked = _run(model, Segmentation(2, mask))
    np.testing.assert_allclose(masked.scores[:, 0], (y[:, 2] * mask).sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(masked.map()[:, 0], _gradcam(acts, w[2][None] * mask.reshape(2, -1).mean(1)[:, None]),
                               rtol=1e-5, atol=1e-6)
    top = _run(model, Segmentation(None, mask[0]))  # the class winning most pixels inside the mask
    wins = y.argmax(1)[:, :3]
    assert top.targets[:, 0].tolist() == [int(np.bincount(wins[i].ravel(), minlength=3).argmax()) for i in range(2)]
    shares = _run(model, None).probabilities
    np.testing.assert_allclose(shares[0], np.bincount(y[0].argmax(0).ravel(), minlength=3) / 36)


def test_segmentation_resizes_a_mask_to_a_coarser_output() -> None:
    class Strided(TinySeg):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {"out": self.classifier(self.relu(self.conv(x)))[:, :, ::2, ::2]}

    model = Strided().eval()
    mask = np.zeros((6, 6), np.float32)
    mask[:2, :2] = 1  # covers output pixel (0, 0) only
    out = _run(model, Segmentation(0, mask))
    with torch.no_grad():
        y = model(X)["out"].numpy()
    np.testing.assert_allclose(out.scores[:, 0], y[:, 0, 0, 0], rtol=1e-5)


class TinyEmbed(TinyGapNet):
    """conv -> ReLU -> GAP -> linear(4 -> 5): a 5-d embedding."""

    def __init__(self) -> None:
        super().__init__(classes=5)


def test_similarity_golden() -> None:
    model = TinyEmbed().eval()
    acts, w = _acts(model), model.fc.weight.detach().numpy().astype(np.float64)
    hw = acts.shape[2] * acts.shape[3]
    with torch.no_grad():
        e = model(X).numpy().astype(np.float64)
    ref = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    r, u = ref / np.linalg.norm(ref), e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = u @ r
    dcos = (r[None] - cos[:, None] * u) / np.linalg.norm(e, axis=1, keepdims=True)  # d cos / d e
    out = _run(model, Similarity(ref))
    np.testing.assert_allclose(out.scores[:, 0], cos, rtol=1e-5)
    np.testing.assert_allclose(out.map()[:, 0], _gradcam(acts, dcos @ w / hw), rtol=1e-4, atol=1e-7)
    per_sample = _run(model, Similarity(np.stack([ref, -ref])))
    np.testing.assert_allclose(per_sample.scores[:, 0], [cos[0], -cos[1]], rtol=1e-5)


class TinyDetector(nn.Module):
    """A detector-shaped model: per image 3 detections whose boxes and scores depend on the
    features (boxes = anchors + 2 * tanh(pooled . v), scores = sigmoid(pooled . u))."""

    ANCHORS = torch.tensor([[0.0, 0.0, 3.0, 3.0], [2.0, 2.0, 6.0, 6.0], [1.0, 0.0, 4.0, 5.0]])

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(9)
        self.conv, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.u = nn.Parameter(torch.randn(3, 4, generator=g))
        self.v = nn.Parameter(torch.randn(3, 4, 4, generator=g) * 0.1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        pooled = self.relu(self.conv(x)).mean((2, 3))  # (N, 4)
        out = []
        for p in pooled:
            boxes = self.ANCHORS + 2 * torch.tanh(torch.einsum("c,dkc->dk", p, self.v))
            out.append({"boxes": boxes, "scores": torch.sigmoid(self.u @ p), "labels": torch.tensor([1, 2, 1])})
        return out


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.maximum(a[:2], b[:2]), torch.minimum(a[2:], b[2:])
    inter = (hi - lo).clamp(min=0).prod()
    return inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter)


def test_detection_golden_iou_plus_score() -> None:
    model = TinyDetector().eval()
    with torch.no_grad():
        dets = model(X)
    box = dets[0]["boxes"][1].numpy() + np.array([0.2, -0.1, 0.1, 0.3])  # near detection 1 (label 2)
    out = _run(model, Detection(box[None], labels=[2]))
    # by hand: the same score through torch autograd on the activations
    acts = model.relu(model.conv(X)).detach().requires_grad_(True)
    pooled = acts.mean((2, 3))
    expected_scores, grads = [], []
    for i in range(2):
        boxes = model.ANCHORS + 2 * torch.tanh(torch.einsum("c,dkc->dk", pooled[i], model.v))
        s = _iou(torch.tensor(box, dtype=torch.float32), boxes[1]) + torch.sigmoid(model.u @ pooled[i])[1]
        expected_scores.append(float(s.detach()))
        grads.append(torch.autograd.grad(s, acts, retain_graph=True)[0][i].numpy())
    alpha = np.stack([g.mean((1, 2)) for g in grads])
    np.testing.assert_allclose(out.scores[:, 0], expected_scores, rtol=1e-5)
    np.testing.assert_allclose(out.map()[:, 0], _gradcam(acts.detach().numpy(), alpha), rtol=1e-4, atol=1e-7)
    assert out.targets[:, 0].tolist() == [2, 2]
    none = _run(model, Detection([[50.0, 50.0, 60.0, 60.0]]))  # nothing overlaps: zero maps, no error
    assert not none.map().any() and none.targets[:, 0].tolist() == [-1, -1]
    assert none.scores.shape == (2, 1) and not none.scores.any()  # a 0-d zero per sample, not (1,)
    top = _run(model, None, method="eigencam")  # gradient-free methods on a detector too
    assert top.map().shape == (2, 1, 6, 6) and top.columns[0].kind == "detection"


def test_targets_broadcast_and_stay_one_forward(tiny: TinyGapNet) -> None:
    calls = []
    handle = tiny.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = _run(tiny, [Top(2), Class(0), Probability([1, 2]), Score(lambda y: y.sum(1))])
    finally:
        handle.remove()
    assert len(calls) == 1 and out.map().shape == (2, 5, 6, 6)
    assert [c.kind for c in out.columns] == ["class", "class", "class", "probability", "score"]


def test_cam_refuses_targets_that_are_not_class_logits(tiny: TinyGapNet) -> None:
    np.testing.assert_allclose(_run(tiny, AllClasses(), "cam").map().shape, (2, 3, 6, 6))
    for target in (Probability(0), Sigmoid(1), Score(lambda y: y[:, 0])):
        with pytest.raises(MethodError, match=f"a {target.kind} target is not one"):
            _run(tiny, target, "cam")


@pytest.mark.parametrize(
    ("model", "target", "message"),
    [
        (TinyGapNet, Segmentation(0), r"needs segmentation maps .* the model outputs a \(N, units\) score vector"),
        (TinySeg, Segmentation(0, np.ones((5, 5))), r"mask of shape \(5, 5\) does not fit; give \(H, W\)"),
        (TinySeg, Segmentation(0, np.zeros((6, 6))), "the mask is empty"),
        (TinyGapNet, Detection([[0, 0, 2, 2]]), "needs a detector's boxes"),
        (TinyDetector, Detection([[3, 0, 2, 2]]), "x1 > x0"),
        (TinyGapNet, Score(lambda y: y.sum()), r"returned shape \(\); expected \(2,\) scores"),
        (TinyGapNet, Score(lambda y: y[:, 9]), "failed: IndexError"),
        (TinyGapNet, Score(lambda y: torch.ones(2)), "does not depend on layer 'relu'"),
        (TinyEmbed, Similarity(np.ones(3)), r"reference embedding of shape \(3,\) does not fit the model's \(5,\) output"),
        (TinyEmbed, Similarity(np.zeros(5)), "zero or not finite"),
        (TinyGapNet, Class(7), "class index 7 is out of range: the model has 3 classes"),
        (TinyGapNet, Class([0, 1, 2]), "3 values for a batch of 2"),
        (TinyGapNet, Top(0), "k must be a positive integer"),
        (TinyGapNet, "best", "unknown target 'best'"),
        (TinySeg, lambda logits: logits.argmax(1), "a target function receives"),
        (TinyGapNet, 2.7, r"must be an integer or one integer per sample"),
        (TinyDetector, Detection([np.ones((1, 4)) * [0, 0, 2, 2], np.ones((2, 4)) * [0, 0, 2, 2]]), "with the same B"),
        (TinyDetector, Detection([[0, 0, 2, 2], [1, 1, 3, 3]], labels=[1, 2, 1]), "3 labels for 2 boxes"),
        (TinyDetector, Detection(np.zeros((0, 4))), "the targets explain nothing"),
    ],
)
def test_bad_combinations_are_one_line_errors(model: type[nn.Module], target: object, message: str) -> None:
    with pytest.raises(CamlensError, match=message) as err:
        _run(model().eval(), target)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, (TargetError, LayerError))


def test_dict_and_tuple_outputs_need_no_wrapper() -> None:
    class Dicts(TinyGapNet):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {"features": x, "scores": super().forward(x)}

    class Tuples(TinyGapNet):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            return x.mean((2, 3)), super().forward(x)

    plain = _run(TinyGapNet().eval(), Class(1)).map()
    np.testing.assert_allclose(_run(Dicts().eval(), Class(1), output="scores").map(), plain, rtol=1e-6)
    np.testing.assert_allclose(_run(Tuples().eval(), Class(1), output=1).map(), plain, rtol=1e-6)
    with pytest.raises(CamlensError, match="keys features, scores; name the entry to explain with output="):
        _run(Dicts().eval(), Class(1))
    with pytest.raises(CamlensError, match="model output has no 'nope'"):
        _run(Dicts().eval(), Class(1), output="nope")


def test_huggingface_model_output_logits() -> None:
    transformers = pytest.importorskip("transformers")

    class HF(TinyGapNet):
        def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def,override]
            return transformers.modeling_outputs.ImageClassifierOutput(logits=super().forward(x))

    np.testing.assert_allclose(_run(HF().eval(), Class(2)).map(), _run(TinyGapNet().eval(), Class(2)).map(), rtol=1e-6)


def test_huggingface_segmentation_models_from_configs() -> None:
    """SegFormer (logits at 1/4 of the input) and UperNet on a ConvNeXt backbone, random
    weights: ModelOutput logits read as maps, a mask at the input's size resized to them."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    segformer = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
        num_labels=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], decoder_hidden_size=32)).eval()
    convnext = transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    upernet = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=convnext, hidden_size=32, auxiliary_in_channels=32, num_labels=4)).eval()
    mask = np.zeros((64, 64), np.float32)
    mask[8:40, 16:48] = 1
    with Explainer(segformer, "gradcam", "decode_head.linear_fuse") as ex:
        out = ex(x, Segmentation(2, mask))
        with torch.no_grad():
            logits = segformer(x).logits.numpy()  # (2, 4, 16, 16)
    np.testing.assert_allclose(out.scores[:, 0], logits[:, 2, 2:10, 4:12].sum((1, 2)), rtol=1e-4)
    with Explainer(upernet, "gradcam") as ex:
        result = ex(x)
    assert list(result.activations) == ["backbone.hidden_states_norms.stage4"]  # the backbone's last stage
    assert result.columns[0].kind == "segmentation" and np.isfinite(result.map()).all()
