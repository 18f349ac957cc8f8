"""Vision transformers and other modern classifiers: layouts found from the model, the
automatic layer per family, parity with pytorch-grad-cam's hand-written reshape transforms."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from camlens import Explainer
from camlens.adapters.pytorch.capture import TorchProbe
from camlens.core import normalize, upsample
from camlens.core.layouts import Layout, token_grid
from camlens.errors import LayerError
from tests.test_cli import camlens

# (family, build, input size, automatic layer, grid); random-weight LeViT's last stages are
# constant over positions (its zero-initialised residual norms), so only its layer and grid are checked
TIMM = [
    ("vit_tiny_patch16_224", {}, 224, "blocks.11.norm1", (14, 14)),
    ("deit_tiny_distilled_patch16_224", {}, 224, "blocks.11.norm1", (14, 14)),
    ("vit_tiny_patch16_224", {"reg_tokens": 4}, 224, "blocks.11.norm1", (14, 14)),  # registers
    ("beit_base_patch16_224", {"depth": 2}, 224, "blocks.1.norm1", (14, 14)),
    ("eva02_tiny_patch14_224", {}, 224, "blocks.11.norm1", (16, 16)),
    ("swin_tiny_patch4_window7_224", {}, 224, "norm", (7, 7)),
    ("swinv2_tiny_window8_256", {}, 256, "norm", (8, 8)),
    ("maxvit_tiny_tf_224", {}, 224, "stages", (7, 7)),
    ("coatnet_0_rw_224", {}, 224, "norm", (7, 7)),
    ("coat_lite_tiny", {}, 224, "serial_blocks4.1.norm1", (7, 7)),
    ("levit_128s", {}, 224, "stages", (4, 4)),
    ("efficientformer_l1", {}, 224, "norm", (7, 7)),
    ("mobilevit_xxs", {}, 256, "final_conv", (8, 8)),
    ("fastvit_t8", {}, 256, "final_conv", (8, 8)),
]


def _check(model: nn.Module, size: int, layer: str, grid: tuple[int, int], varies: bool = True) -> None:
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with Explainer(model.eval(), ["gradcam", "layercam"]) as ex:
        out = ex(x, "top-3")
    assert list(out.activations) == [layer]
    for by_layer in out.maps.values():
        m = by_layer[layer]
        assert m.shape[0] == 1 and m.shape[2:] == grid and np.isfinite(m).all()
        assert m.reshape(m.shape[1], -1).std(axis=1).max() > 0 or not varies


@pytest.mark.parametrize(("name", "kwargs", "size", "layer", "grid"), TIMM,
                         ids=[f"{t[0]}{'+reg' if t[1].get('reg_tokens') else ''}" for t in TIMM])
def test_timm_family_layer_and_grid(name: str, kwargs: dict, size: int, layer: str, grid: tuple[int, int]) -> None:  # type: ignore[type-arg]
    torch.manual_seed(0)
    _check(timm.create_model(name, pretrained=False, **kwargs), size, layer, grid, varies=not name.startswith("levit"))


def _nonzero_head(model: nn.Module, head: nn.Linear) -> nn.Module:
    """torchvision zero-initialises some classifier heads: random weights make the maps non-constant."""
    with torch.no_grad():
        head.weight.normal_()
    return model


@pytest.mark.parametrize(("name", "layer", "grid"), [
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", (14, 14)),
    ("swin_t", "permute", (7, 7)),
    ("maxvit_t", "blocks.3", (7, 7)),
])
def test_torchvision_family_layer_and_grid(name: str, layer: str, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name)
    if name == "vit_b_16":
        model = _nonzero_head(model, model.heads.head)
    _check(model, 224, layer, grid)


def test_huggingface_image_classifiers_from_configs() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "image_size": 64, "patch_size": 8}
    cases = [
        (transformers.ViTForImageClassification(transformers.ViTConfig(**small)), "vit.layers.1.layernorm_before", (8, 8)),
        (transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**small)),
         "deit.layers.1.layernorm_before", (8, 8)),
        (transformers.SwinForImageClassification(transformers.SwinConfig(
            image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4)),
         "swin.layernorm", (8, 8)),
        (transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            depths=[1, 1], hidden_sizes=[8, 16], num_stages=2)), "convnext.encoder.stages.1", (8, 8)),
    ]
    for model, layer, grid in cases:
        _check(model, 64, layer, grid)


def _vit_reshape(prefix: int, h: int, w: int):  # type: ignore[no-untyped-def]
    """pytorch-grad-cam's documented ViT reshape_transform, with the grid and prefix written by hand."""
    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), h, w, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return reshape


@pytest.mark.parametrize(("name", "prefix", "size", "grid"), [
    ("vit_tiny_patch16_224", 1, 224, 14),
    ("deit_tiny_distilled_patch16_224", 2, 224, 14),
    ("swin_tiny_patch4_window7_224", 0, 224, 7),
])
def test_gradcam_parity_with_pytorch_grad_cam_reshape_transform(name: str, prefix: int, size: int, grid: int) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    if name.startswith("swin"):
        layer, module = "norm", model.norm
        reshape = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731  (timm's Swin is channels last)
    else:
        layer, module = "blocks.11.norm1", model.blocks[-1].norm1
        reshape = _vit_reshape(prefix, grid, grid)
    with Explainer(model, "gradcam") as ex:
        ours = ex(x, [3, 7])
    assert list(ours.activations) == [layer]
    with GradCAM(model, [module], reshape_transform=reshape) as cam:
        theirs = cam(x, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)])
    mine = normalize(upsample(ours.map()[:, 0], (size, size)))
    np.testing.assert_allclose(mine, theirs, atol=1e-5)


class NoMetadata(nn.Module):
    """A token model that says nothing about its layout: 1 class token + a 4x4 grid."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.block(torch.cat([self.token.expand(x.shape[0], -1, -1), t], dim=1))
        return self.head(t[:, 1:].mean(1) + t[:, 0])


def test_a_stated_layout_and_its_errors() -> None:
    torch.manual_seed(3)
    model = NoMetadata().eval()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(LayerError, match=r"layer 'block' outputs shape \(2, 17, 8\), not a feature map") as err:
        Explainer(model, "gradcam", "block")(x)
    assert "layout=" in str(err.value) and "\n" not in str(err.value)
    with Explainer(model, "gradcam", "block", layout="tokens:1") as ex:
        out = ex(x)
    assert out.map().shape == (2, 1, 4, 4)
    with torch.no_grad():
        acts = model.block(torch.cat([model.token.expand(2, -1, -1), model.embed(x).flatten(2).transpose(1, 2)], 1))
    np.testing.assert_allclose(out.activations["block"], acts[:, 1:].reshape(2, 4, 4, 8).permute(0, 3, 1, 2).numpy(), rtol=1e-5)
    with pytest.raises(LayerError, match="do not form a grid"):
        Explainer(model, "gradcam", "block", layout="tokens:2")(x)
    with pytest.raises(LayerError, match="unknown layout 'tokens:x'"):
        Explainer(model, "gradcam", "block", layout="tokens:x")(x)


def test_layout_round_trip_and_grid() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 1 + 6 * 4, 5)).astype(np.float32)
    layout = Layout.parse("tokens:1")
    maps = layout.to_nchw(tokens, (60, 40))
    assert maps.shape == (2, 5, 6, 4)
    np.testing.assert_array_equal(layout.from_nchw(maps, tokens), tokens)
    grads = np.stack([tokens, 2 * tokens], axis=1)  # (N, K, L, C) per-target gradients
    np.testing.assert_array_equal(layout.to_nchw(grads, (60, 40), lead=2)[:, 1], 2 * maps)
    nhwc = rng.normal(size=(2, 3, 4, 5))
    np.testing.assert_array_equal(Layout.parse("NHWC").to_nchw(nhwc, (3, 4)), nhwc.transpose(0, 3, 1, 2))
    assert token_grid(196, (224, 224)) == (14, 14) and token_grid(24, (60, 40)) == (6, 4) and token_grid(17, (16, 16)) is None
    assert Layout.parse("tokens:1:14x14") == Layout("tokens", 1, (14, 14))


def test_probe_replaces_token_layers_in_their_own_layout() -> None:
    torch.manual_seed(4)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, patch_size=8).eval()
    x = torch.rand(2, 3, 32, 32)
    from camlens.adapters.pytorch import capture as cap

    fwd = cap.forward(model, x, {"blocks.1.norm1": model.blocks[1].norm1}, with_gradients=False)
    probe = TorchProbe(model, x, {"blocks.1.norm1": model.blocks[1].norm1}, capture=fwd)
    acts = cap.TorchPass(fwd, []).activations["blocks.1.norm1"]  # (2, C, 4, 4), channels first
    same = probe.score_replaced("blocks.1.norm1", acts[:, None])
    with torch.no_grad():
        logits = model(x).numpy()
    np.testing.assert_allclose(same[:, 0], logits, rtol=1e-4, atol=1e-5)


def test_a_compiled_model_is_explained_through_its_original_module(tiny) -> None:  # type: ignore[no-untyped-def]
    compiled = torch.compile(tiny, backend="eager")
    x = torch.rand(2, 3, 8, 8)
    with Explainer(tiny, "gradcam", "relu") as plain, Explainer(compiled, "gradcam", "_orig_mod.relu") as ex:
        np.testing.assert_allclose(ex(x, 1).map(), plain(x, 1).map())
    with Explainer(compiled, "gradcam") as ex:
        assert list(ex(x).activations) == ["relu"]


def test_layers_command_lists_layouts_offline_without_attention_internals() -> None:
    result = camlens("layers", "timm:vit_tiny_patch16_224")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert not any(".attn" in r for r in rows)
    [default] = [r for r in rows if "<- default" in r]
    assert "blocks.11.norm1" in default and "tokens 14x14" in default


def test_cam_on_a_channels_last_swin_is_exact() -> None:
    """CAM at timm Swin's NHWC ``norm``: each class map's spatial mean is its logit minus the bias."""
    torch.manual_seed(5)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    x = torch.rand(1, 3, 224, 224)
    with Explainer(model, "cam") as ex:
        out = ex(x, np.array([[3, 9]]))
    with torch.no_grad():
        logits = model(x).numpy()[0, [3, 9]]
    bias = model.head.fc.bias.detach().numpy()[[3, 9]]
    np.testing.assert_allclose(out.map()[0].mean(axis=(1, 2)), logits - bias, rtol=1e-4, atol=1e-5)


def test_linear_layers_on_4d_tensors_are_channels_last() -> None:
    """ConvNeXt's block MLPs act on (N, h, w, C): their outputs are read channels last."""
    from camlens.adapters.pytorch.layers import trace

    model = torchvision.models.convnext_tiny().eval()
    infos = {i.name: i for i in trace(model, torch.rand(1, 3, 224, 224))}
    mlp = infos["features.1.0.block.3"]  # nn.Linear(96, 384) after a Permute to channels last
    assert mlp.layout is not None and mlp.layout.kind == "NHWC" and mlp.grid == (56, 56)
    assert infos["features.1.0.block.0"].layout.kind == "NCHW"  # type: ignore[union-attr]  (the depthwise conv)


def _rollout_by_hand(attentions: list[np.ndarray], prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """Abnar & Zuidema's rollout, written out: per block mean over heads, plus I, rows
    renormalised, multiplied from the first block up; the class token's row over the patches."""
    n, _, length, _ = attentions[0].shape
    out = np.zeros((n, *grid))
    for i in range(n):
        rollout = np.eye(length)
        for a in attentions:
            mixed = a[i].mean(axis=0) + np.eye(length)
            rollout = (mixed / mixed.sum(axis=1, keepdims=True)) @ rollout
        out[i] = rollout[0, prefix:].reshape(grid)
    return out


def test_attention_rollout_on_a_two_block_timm_vit_by_hand() -> None:
    import copy

    torch.manual_seed(6)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, patch_size=8).eval()
    x = torch.rand(2, 3, 32, 32)
    with Explainer(model, ["rollout", "gradcam"]) as ex:
        out = ex(x, "top-2")
    reference = copy.deepcopy(model)
    seen: list[np.ndarray] = []
    for block in reference.blocks:  # the unfused path materialises the probabilities: hook them there
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, a, o: seen.append(o.detach().numpy()))
    with torch.no_grad():
        reference(x)
    expected = _rollout_by_hand(seen, 1, (4, 4))
    maps = out.maps["rollout"]["blocks.1.norm1"]
    assert maps.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(maps[:, 0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps[:, 1], maps[:, 0])  # class-agnostic
    assert not any(m._forward_hooks for m in model.modules())


def test_attention_rollout_on_torchvision_vit_matches_its_own_attention_weights() -> None:
    torch.manual_seed(7)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                                 mlp_dim=32, num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    with Explainer(model, "rollout") as ex:
        maps = ex(x).map()[:, 0]
    seen: list[np.ndarray] = []

    def weights(module: nn.MultiheadAttention, args: tuple[torch.Tensor, ...]) -> None:
        with torch.no_grad():
            _, w = nn.MultiheadAttention.forward(module, args[0], args[1], args[2], need_weights=True,
                                                 average_attn_weights=False)
        seen.append(w.numpy())

    handles = [layer.self_attention.register_forward_pre_hook(weights) for layer in model.encoder.layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    np.testing.assert_allclose(maps, _rollout_by_hand(seen, 1, (4, 4)), rtol=1e-4, atol=1e-6)


def test_attention_rollout_refuses_models_without_readable_attention(tiny) -> None:  # type: ignore[no-untyped-def]
    from camlens.errors import MethodError

    with pytest.raises(MethodError, match="attention methods read timm ViT/DeiT attention"):
        Explainer(tiny, "rollout", "relu")(torch.rand(1, 3, 8, 8))
