"""Target kinds on Keras models, on the current backend: the same scores and maps as the PyTorch
twin of each network (the PyTorch side is checked by hand in tests/test_targets.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camlens import Explainer
from camlens.adapters.keras import KerasExplainer
from camlens.core import normalize
from camlens.errors import CamlensError, MethodError
from camlens.targets import Class, Probability, Score, Segmentation, Sigmoid, Similarity, Top
from tests.keras_cases.conftest import keras, small_cnn
from tests.keras_cases.test_keras import _torch_twin

METHODS = ["gradcam", "gradcam++", "layercam", "shapleycam"]


def _pair(model: keras.Model, twin: nn.Module, batch: np.ndarray, targets: object, methods: list[str] = METHODS,
          layers: tuple[str, str] = ("conv2", "relu2")):  # type: ignore[no-untyped-def]
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    with KerasExplainer(model, methods, layers[0]) as ke, Explainer(twin, methods, layers[1]) as te:
        return ke(batch, targets), te(x, targets)


def _same(k, t, layers: tuple[str, str] = ("conv2", "relu2")) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(k.scores, t.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(k.targets, t.targets)
    for method in k.maps:
        np.testing.assert_allclose(normalize(k.maps[method][layers[0]]), normalize(t.maps[method][layers[1]]), atol=2e-4)


def test_class_like_and_score_targets_match_pytorch(batch: np.ndarray) -> None:
    model = small_cnn("softmax")
    twin = _torch_twin(model)
    targets = [Top(2), Probability(1), Sigmoid([0, 2, 3]), Score(lambda y: y[:, 0] * y[:, 1])]
    k, t = _pair(model, twin, batch, targets)
    _same(k, t)
    assert [c.kind for c in k.columns] == ["class", "class", "probability", "sigmoid", "score"]


def test_similarity_matches_pytorch(batch: np.ndarray) -> None:
    model = small_cnn("logits")  # its 4 outputs as an embedding
    twin = _torch_twin(model)
    reference = np.array([0.5, -1.0, 2.0, 0.1], np.float32)
    _same(*_pair(model, twin, batch, [Similarity(reference), Similarity(np.stack([reference, -reference, reference]))]))


def test_binary_head_positive_and_negative(batch: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="conv")(inp)
    out = keras.layers.Dense(1, activation="sigmoid", name="fc")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    with KerasExplainer(model, "gradcam", "conv") as ke:
        result = ke(batch, [Class(1), Class(0), Sigmoid(1)])
    z = _logit(model, batch)
    np.testing.assert_allclose(result.scores[:, 0], z / 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.scores[:, 1], -z / 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.scores[:, 2], 1 / (1 + np.exp(-z)), rtol=1e-4, atol=1e-6)
    maps = result.map()
    assert (maps[:, 0].reshape(3, -1).any(1) | maps[:, 1].reshape(3, -1).any(1)).all()  # one side of each sample lights up


def _logit(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    p = np.asarray(keras.ops.convert_to_numpy(model(batch)))[:, 0].astype(np.float64)
    return np.log(p / (1 - p))


def _seg_pair() -> tuple[keras.Model, nn.Module]:
    """conv(3->6) relu -> 1x1 conv (6 -> 3 classes, softmax): a segmentation head, and its twin."""
    rng = np.random.default_rng(2)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inp)
    out = keras.layers.Conv2D(3, 1, activation="softmax", name="classes")(x)
    model = keras.Model(inp, out)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    twin = nn.Sequential()
    twin.conv, twin.relu, twin.classes = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1)
    with torch.no_grad():
        for name in ["conv", "classes"]:
            kernel, bias = model.get_layer(name).get_weights()
            getattr(twin, name).weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            getattr(twin, name).bias.copy_(torch.from_numpy(bias))
    return model, twin.eval()


def test_segmentation_head_matches_pytorch(batch: np.ndarray) -> None:
    model, twin = _seg_pair()
    mask = np.zeros((12, 12), np.float32)
    mask[2:9, 3:7] = 1
    k, t = _pair(model, twin, batch, [Segmentation(1), Segmentation(2, mask), Class(0)], layers=("conv", "relu"))
    _same(k, t, ("conv", "relu"))
    np.testing.assert_array_equal(k.columns[0].regions, t.columns[0].regions)
    np.testing.assert_allclose(k.probabilities, t.probabilities, atol=1e-6)
    with pytest.raises(MethodError):
        KerasExplainer(model, "cam", "conv")(batch, Segmentation(1))


def test_dict_outputs_pick_one_by_name(batch: np.ndarray) -> None:
    base = small_cnn("logits")
    feats = base.get_layer("gap").output
    model = keras.Model(base.input, {"embedding": feats, "scores": base.output})
    plain = small_cnn("logits")
    with KerasExplainer(model, "gradcam", "conv2", output="fc") as ke, KerasExplainer(plain, "gradcam", "conv2") as pe:
        np.testing.assert_allclose(ke(batch, Class(2)).map(), pe(batch, Class(2)).map(), rtol=1e-5, atol=1e-7)
    with pytest.raises(CamlensError, match="choose one with output="):
        KerasExplainer(model, "gradcam", "conv2")
    with KerasExplainer(model, "gradcam", "conv2", output="gap") as ke:
        emb = ke(batch, Similarity(np.ones(6, np.float32)))
    assert emb.columns[0].kind == "similarity" and emb.map().shape == (3, 1, 12, 12)


def test_unet_on_a_keras_applications_backbone() -> None:
    """A U-Net-style segmentation model around a nested MobileNetV2 (random weights): the
    automatic layer is the backbone's last stage, and a class's region and a mask both explain."""
    backbone = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None, alpha=0.35)
    inp = keras.Input((64, 64, 3))
    x = backbone(inp)
    x = keras.layers.Conv2DTranspose(16, 3, strides=4, padding="same", activation="relu", name="up1")(x)
    x = keras.layers.Conv2DTranspose(8, 3, strides=8, padding="same", activation="relu", name="up2")(x)
    out = keras.layers.Conv2D(3, 1, activation="softmax", name="classes")(x)
    model = keras.Model(inp, out)
    batch = np.random.default_rng(3).uniform(-1, 1, size=(2, 64, 64, 3)).astype("float32")
    with KerasExplainer(model, ["gradcam", "eigencam"]) as ke:
        assert ke.layer_names == ["mobilenetv2_0.35_64/out_relu"]
        result = ke(batch)
        mask = np.zeros((64, 64), np.float32)
        mask[10:40, 20:50] = 1
        masked = ke(batch, Segmentation(1, mask))
    assert result.columns[0].kind == "segmentation" and result.map("gradcam").shape == (2, 1, 2, 2)
    features = np.asarray(keras.ops.convert_to_numpy(keras.Model(inp, model.get_layer("up2").output)(batch)))
    kernel, bias = model.get_layer("classes").get_weights()
    logits = features @ kernel[0, 0] + bias  # the 1x1 convolution before its softmax
    np.testing.assert_allclose(masked.scores[:, 0], (logits[..., 1] * mask).sum((1, 2)), rtol=1e-4)
