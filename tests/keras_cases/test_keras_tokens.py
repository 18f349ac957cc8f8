"""Keras token layers: a small Keras ViT (conv patch embedding, class token, two pre-norm
blocks of ``MultiHeadAttention``) has its token layout found from its graph and its automatic
layer at the last attention's input; its maps equal those of a PyTorch twin with the same
weights, whose layout is stated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from camlens import Explainer
from camlens.adapters.keras import KerasExplainer
from camlens.core import ATTENTION_NEEDS, get_method, method_names, normalize
from camlens.errors import LayerError, MethodError
from tests.keras_cases.conftest import keras

METHODS = [m for m in method_names(without=ATTENTION_NEEDS) if m != "cam"]  # CAM needs GAP -> Dense
HEADS, KEY, WIDTH, BLOCKS = 2, 4, 8, 2


class ClassToken(keras.layers.Layer):
    def build(self, shape: tuple[int, ...]) -> None:
        self.token = self.add_weight(shape=(1, 1, shape[-1]), initializer="random_normal")

    def call(self, x):  # type: ignore[no-untyped-def]
        token = keras.ops.broadcast_to(self.token, (keras.ops.shape(x)[0], 1, x.shape[-1]))
        return keras.ops.concatenate([token, x], axis=1)


class Position(keras.layers.Layer):
    def build(self, shape: tuple[int, ...]) -> None:
        self.position = self.add_weight(shape=(1, shape[1], shape[2]), initializer="random_normal")

    def call(self, x):  # type: ignore[no-untyped-def]
        return x + self.position


class First(keras.layers.Layer):
    def call(self, x):  # type: ignore[no-untyped-def]
        return x[:, 0]


def tiny_vit() -> keras.Model:
    rng = np.random.default_rng(3)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(WIDTH, 4, strides=4, name="patch")(inp)  # 4x4 patches
    x = keras.layers.Reshape((16, WIDTH), name="tokens")(x)
    x = Position(name="position")(ClassToken(name="cls")(x))
    for i in range(BLOCKS):
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln1_{i}")(x)
        h = keras.layers.MultiHeadAttention(HEADS, KEY, name=f"mha_{i}")(h, h)
        x = keras.layers.Add(name=f"add1_{i}")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln2_{i}")(x)
        h = keras.layers.Dense(16, activation="gelu", name=f"fc1_{i}")(h)
        h = keras.layers.Dense(WIDTH, name=f"fc2_{i}")(h)
        x = keras.layers.Add(name=f"add2_{i}")([x, h])
    x = First(name="first")(keras.layers.LayerNormalization(epsilon=1e-6, name="ln")(x))
    model = keras.Model(inp, keras.layers.Dense(5, name="fc")(x))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(scale=0.4, size=w.shape).astype("float32") + (1.0 if "ln" in layer.name and
                               j == 0 else 0.0) for j, w in enumerate(layer.get_weights())])
    return model


def _t(a: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)))


class TwinAttention(nn.Module):
    """Keras' MultiHeadAttention with its own kernels: q/k/v ``(E, heads, d)``, output ``(heads, d, E)``."""

    def __init__(self, weights: list[np.ndarray]) -> None:
        super().__init__()
        self.wq, self.bq, self.wk, self.bk, self.wv, self.bv, self.wo, self.bo = map(_t, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.einsum("nle,ehd->nhld", x, self.wq) + self.bq[None, :, None]
        k = torch.einsum("nle,ehd->nhld", x, self.wk) + self.bk[None, :, None]
        v = torch.einsum("nle,ehd->nhld", x, self.wv) + self.bv[None, :, None]
        a = (q @ k.transpose(-2, -1) / math.sqrt(KEY)).softmax(dim=-1)
        return torch.einsum("nhld,hde->nle", a @ v, self.wo) + self.bo


class TwinBlock(nn.Module):
    def __init__(self, model: keras.Model, i: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = (_norm(model.get_layer(f"{n}_{i}")) for n in ("ln1", "ln2"))
        self.attn = TwinAttention(model.get_layer(f"mha_{i}").get_weights())
        self.fc1, self.fc2 = (_linear(model.get_layer(f"{n}_{i}")) for n in ("fc1", "fc2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


def _norm(layer: keras.layers.Layer) -> nn.LayerNorm:
    norm = nn.LayerNorm(WIDTH, eps=1e-6)
    gamma, beta = layer.get_weights()
    norm.weight, norm.bias = _t(gamma), _t(beta)
    return norm


def _linear(layer: keras.layers.Layer) -> nn.Linear:
    kernel, bias = layer.get_weights()
    linear = nn.Linear(*kernel.shape)
    linear.weight, linear.bias = _t(kernel.T), _t(bias)
    return linear


class TorchTwin(nn.Module):
    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        kernel, bias = model.get_layer("patch").get_weights()
        self.patch = nn.Conv2d(3, WIDTH, 4, stride=4)
        self.patch.weight, self.patch.bias = _t(kernel.transpose(3, 2, 0, 1)), _t(bias)
        self.cls = _t(model.get_layer("cls").get_weights()[0])
        self.position = _t(model.get_layer("position").get_weights()[0])
        self.blocks = nn.Sequential(*(TwinBlock(model, i) for i in range(BLOCKS)))
        self.ln, self.fc = _norm(model.get_layer("ln")), _linear(model.get_layer("fc"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).permute(0, 2, 3, 1).reshape(x.shape[0], 16, WIDTH)  # row by row, like Keras' Reshape
        t = torch.cat([self.cls.expand(x.shape[0], 1, WIDTH), t], dim=1) + self.position
        return self.fc(self.ln(self.blocks(t))[:, 0])


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(4).normal(size=(2, 16, 16, 3)).astype("float32")


def test_keras_vit_layout_found_and_maps_equal_the_pytorch_twin(images: np.ndarray) -> None:
    model = tiny_vit()
    twin = TorchTwin(model).eval()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    methods = METHODS
    if keras.backend.backend() == "tensorflow":  # its LayerNormalization's second derivatives are wrong: refused
        methods = [m for m in METHODS if m != "shapleycam"]
        with pytest.raises(MethodError, match="LayerNormalization .* wrong on the TensorFlow backend"):
            KerasExplainer(model, "shapleycam")
    specs = [f"{m}:masks=64" if m == "rise" else m for m in methods]  # RISE with fewer masks than its 4000
    with KerasExplainer(model, specs) as ke, sdpa_kernel(SDPBackend.MATH):  # torch: twice-differentiable attention
        assert ke.layer_names == ["ln1_1"]  # the input of the last attention
        assert ke.layouts[("ln1_1",)].describe() == "tokens 4x4 +1"
        k = ke(images, [1, 4])
    with Explainer(twin, specs, "blocks.1.ln1", layout="tokens:1") as te:
        t = te(x, [1, 4])
    np.testing.assert_allclose(k.logits, t.logits, rtol=1e-4, atol=1e-4)
    for method in methods:
        assert k.maps[method]["ln1_1"].shape == ((2, 1, 16, 16) if get_method(method).input_resolution else (2, 1, 4, 4))
        np.testing.assert_allclose(normalize(k.maps[method]["ln1_1"]), normalize(t.maps[method]["blocks.1.ln1"]),
                                   atol=2e-4, err_msg=method)


def test_keras_token_layouts_stated_and_refused(images: np.ndarray) -> None:
    model = tiny_vit()
    with KerasExplainer(model, "gradcam", "add2_0") as found, \
            KerasExplainer(model, "gradcam", "add2_0", layout={"add2_0": "tokens:1:4x4"}) as stated:
        np.testing.assert_allclose(found(images).map(), stated(images).map(), rtol=1e-6)
    with pytest.raises(LayerError, match="do not form a grid"):
        KerasExplainer(model, "gradcam", "add2_0", layout="tokens:2")(images)
    with pytest.raises(LayerError, match="not a target layer"):
        KerasExplainer(model, "gradcam", "add2_0", layout={"ln": "tokens:1"})
    with pytest.raises(LayerError, match="not a feature map"):
        KerasExplainer(model, "gradcam", "first")(images)


def test_a_transposed_feature_map_is_not_read_as_tokens() -> None:
    from camlens.adapters.keras.graph import layout_of

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(70, 2, strides=2, name="conv")(inp)  # 8x8 positions, 70 channels
    x = keras.layers.Permute((2, 1), name="swap")(keras.layers.Reshape((64, 70), name="flat")(x))  # (70, 64)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    assert layout_of(model, ("flat",)).describe() == "tokens 8x8"  # type: ignore[union-attr]
    assert layout_of(model, ("swap",)) is None  # 70 "tokens" of width 64: channels by positions, not tokens
