"""Attention methods (rollout, gradient rollout, LeGrad) on timm, torchvision and HuggingFace
ViTs: equal to the formulas written out by hand on models whose attention probabilities sit in
the autograd graph (timm's unfused path, torchvision's ``need_weights``, HF's eager attention),
LeGrad equal to torchcam's, and the model left as it was."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTConfig, ViTForImageClassification

from camlens import Explainer
from camlens.errors import MethodError

SMALL_HF = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8, "num_labels": 5}


def _timm_vit(**extra: object) -> nn.Module:
    torch.manual_seed(11)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=32, patch_size=8,
                             num_classes=5, **extra).eval()


def _torchvision_vit() -> nn.Module:
    torch.manual_seed(12)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                                 mlp_dim=32, num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: every gradient would be 0
    return model


def _hf_vit() -> nn.Module:
    torch.manual_seed(13)
    return ViTForImageClassification(ViTConfig(**SMALL_HF)).eval()


Graph = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]
"""A reference forward: logits, each block's attention probabilities in the graph, each block's output."""


def _timm_graph(model: nn.Module, x: torch.Tensor) -> Graph:
    ref = copy.deepcopy(model)
    attn: list[torch.Tensor] = []
    blocks: list[torch.Tensor] = []
    for block in ref.blocks:
        block.attn.fused_attn = False  # the unfused path materialises A and uses it
        block.attn.attn_drop.register_forward_hook(lambda m, a, o: attn.append(o))
        block.register_forward_hook(lambda m, a, o: blocks.append(o))
    return ref(x), attn, blocks


def _torchvision_graph(model: nn.Module, x: torch.Tensor) -> Graph:
    ref = copy.deepcopy(model)
    attn: list[torch.Tensor] = []
    blocks: list[torch.Tensor] = []

    def with_weights(module: nn.MultiheadAttention, args: tuple[torch.Tensor, ...], kwargs: dict[str, object],
                     out: object) -> tuple[torch.Tensor, None]:
        _, w = nn.MultiheadAttention.forward(module, *args[:3], need_weights=True, average_attn_weights=False)
        e, heads = module.embed_dim, module.num_heads
        v = nn.functional.linear(args[2], module.in_proj_weight[2 * e:], module.in_proj_bias[2 * e:])
        v = v.reshape(v.shape[0], v.shape[1], heads, e // heads).transpose(1, 2)
        attn.append(w)  # the returned weights are a view: aggregate from them so that A is on the path
        return module.out_proj((w @ v).transpose(1, 2).reshape(v.shape[0], -1, e)), None

    for layer in ref.encoder.layers:
        layer.self_attention.register_forward_hook(with_weights, with_kwargs=True)
        layer.register_forward_hook(lambda m, a, o: blocks.append(o))
    return ref(x), attn, blocks


def _hf_graph(model: nn.Module, x: torch.Tensor) -> Graph:
    ref = copy.deepcopy(model)
    ref.config._attn_implementation = "eager"
    blocks: list[torch.Tensor] = []
    for layer in ref.vit.layers:
        layer.register_forward_hook(lambda m, a, o: blocks.append(o[0] if isinstance(o, tuple) else o))
    out = ref(x, output_attentions=True)
    return out.logits, list(out.attentions), blocks


def _gradient_rollout_by_hand(graph: Graph, targets: list[int]) -> np.ndarray:
    """Chefer et al. 2021: R = I; R += mean_heads(relu(dS/dA * A)) R per block; class token's row."""
    logits, attn, _ = graph
    score = sum(logits[i, t] for i, t in enumerate(targets))
    grads = torch.autograd.grad(score, attn)
    length = attn[0].shape[-1]
    relevance = torch.eye(length).expand(len(targets), length, length).clone()
    for a, g in zip(attn, grads, strict=True):
        relevance = relevance + (g * a).clamp(min=0).mean(dim=1) @ relevance
    return relevance[:, 0, 1:].detach().numpy()


def _legrad_by_hand(graph: Graph, head: Callable[[torch.Tensor], torch.Tensor], targets: list[int]) -> np.ndarray:
    """Bousselham et al. 2025: per block, s_l = head(mean tokens of block l); mean over heads and
    queries of relu(d s_l / d A_l) at the patch keys; mean over blocks."""
    _, attn, blocks = graph
    total = 0.0
    for a, z in zip(attn, blocks, strict=True):
        s = head(z)
        (g,) = torch.autograd.grad(sum(s[i, t] for i, t in enumerate(targets)), [a], retain_graph=True)
        total = total + g.clamp(min=0).mean(dim=(1, 2))[:, 1:]
    return (total / len(attn)).detach().numpy()  # type: ignore[union-attr]


CASES = {
    "timm": (_timm_vit, _timm_graph, "blocks.2.norm1",
             lambda m: lambda z: m.head(m.fc_norm(m.norm(z.mean(dim=1))))),
    "torchvision": (_torchvision_vit, _torchvision_graph, "encoder.layers.encoder_layer_2.ln_1",
                    lambda m: lambda z: m.heads(m.encoder.ln(z.mean(dim=1)))),
    "hf": (_hf_vit, _hf_graph, "vit.layers.2.layernorm_before",
           lambda m: lambda z: m.classifier(m.vit.layernorm(z.mean(dim=1)))),
}


@pytest.mark.parametrize("family", list(CASES))
def test_gradient_rollout_and_legrad_equal_the_formulas_by_hand(family: str) -> None:
    build, graph_of, layer, head = CASES[family]
    model = build()
    x = torch.rand(2, 3, 32, 32)
    targets = [1, 3]
    with Explainer(model, ["gradrollout", "legrad", "gradcam"]) as ex:
        out = ex(x, [[1, 2], [3, 0]])  # two targets each: the batched vector-Jacobian product
        single = ex(x, targets)  # one target each: one backward per column
    assert list(out.maps["legrad"]) == [layer]
    got = {m: out.maps[m][layer] for m in ("gradrollout", "legrad")}
    assert got["legrad"].shape == (2, 2, 4, 4)
    expected = _gradient_rollout_by_hand(graph_of(model, x), targets).reshape(2, 4, 4)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got["gradrollout"][:, 0], expected, atol=1e-5 * scale)
    np.testing.assert_allclose(single.maps["gradrollout"][layer][:, 0], expected, atol=1e-5 * scale)
    expected = _legrad_by_hand(graph_of(model, x), head(model), targets).reshape(2, 4, 4)
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(got["legrad"][:, 0], expected, atol=1e-5 * scale)
    assert not np.allclose(got["legrad"][:, 0], got["legrad"][:, 1])  # class-specific


def test_legrad_equals_torchcams_on_a_torchvision_vit() -> None:
    from torchcam.methods import LeGrad

    model = _torchvision_vit()
    x = torch.rand(3, 3, 32, 32)
    targets = [4, 0, 2]
    with Explainer(model, "legrad") as ex:
        ours = ex(x, targets).map()[:, 0]
    with LeGrad(model, list(model.encoder.layers)) as cam:
        theirs = cam(targets, model(x))[0].detach().numpy()
    low = ours.min(axis=(1, 2), keepdims=True)
    ours = (ours - low) / (ours.max(axis=(1, 2), keepdims=True) - low)  # torchcam's min-max normalisation
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_hf_vit_rollout_equals_its_own_output_attentions() -> None:
    model = _hf_vit()
    x = torch.rand(2, 3, 32, 32)
    with Explainer(model, "rollout") as ex:
        maps = ex(x).map()[:, 0]
    with torch.no_grad():
        _, attn, _ = _hf_graph(model, x)
    length = attn[0].shape[-1]
    rollout = torch.eye(length).expand(2, length, length)
    for a in attn:
        mixed = a.mean(dim=1) + torch.eye(length)
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    np.testing.assert_allclose(maps, rollout[:, 0, 1:].reshape(2, 4, 4).numpy(), rtol=1e-4, atol=1e-7)


def test_distilled_and_register_models_score_blocks_like_their_heads() -> None:
    torch.manual_seed(14)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=2, img_size=32, patch_size=8,
                             num_classes=5).eval()
    registers = _timm_vit(reg_tokens=4, global_pool="avg", fc_norm=True)
    teacher = DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL_HF)).eval()
    for model in (deit, registers, teacher):
        x = torch.rand(1, 3, 32, 32)
        with Explainer(model, ["legrad", "gradrollout", "rollout"]) as ex:
            out = ex(x)
        for method, by_layer in out.maps.items():
            (maps,) = by_layer.values()
            assert maps.shape == (1, 1, 4, 4), method
            assert np.isfinite(maps).all() and maps.std() > 0, (type(model).__name__, method)


def test_attention_methods_leave_a_frozen_model_as_it_was_under_no_grad() -> None:
    model = _timm_vit()
    for p in list(model.parameters())[::2]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), Explainer(model, ["legrad", "gradrollout"]) as ex:
        out = ex(x)
        with torch.inference_mode():
            again = ex(x)
    np.testing.assert_allclose(again.map("legrad"), out.map("legrad"), rtol=1e-6)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_attention_methods_from_several_threads_on_one_model() -> None:
    model = _timm_vit()
    inputs = [torch.rand(1, 3, 32, 32) for _ in range(4)]
    with Explainer(model, "legrad") as ex:
        alone = [ex(x).map() for x in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        with Explainer(model, "legrad") as ex:
            results[i] = ex(inputs[i]).map()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(alone):
        np.testing.assert_allclose(results[i], expected, rtol=1e-5, atol=1e-9)


def test_attention_methods_refuse_what_they_cannot_read_in_one_line(tiny) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MethodError, match="attention methods read timm ViT/DeiT attention") as info:
        Explainer(tiny, "legrad", "relu")(torch.rand(1, 3, 8, 8))
    assert "\n" not in str(info.value)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3).eval()
    with pytest.raises(MethodError, match="has none .*WindowAttention"):
        Explainer(swin, "gradrollout")(torch.rand(1, 3, 224, 224))
    pooled = _timm_vit(global_pool="map")
    with pytest.raises(MethodError, match="pools by attention"):
        Explainer(pooled, "legrad")(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("family", list(CASES))
def test_every_method_maps_the_token_grid(family: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from camlens.core import get_method, method_names

    build, _, layer, _ = CASES[family]
    model = build()
    # every method but CAM; SS-CAM and IS-CAM are Score-CAM's machinery with 35 and 10 times the
    # forwards (tested in test_perturbation.py), and RISE runs with fewer masks here
    methods = [m for m in method_names() if m not in ("cam", "sscam", "iscam", "rise")]
    specs = [*methods, "rise:masks=64"]
    methods.append("rise")
    with sdpa_kernel(SDPBackend.MATH), Explainer(model, specs) as ex:  # math attention: Shapley-CAM's 2nd derivatives
        out = ex(torch.rand(2, 3, 32, 32), "top-2")
    for method in methods:
        maps = out.maps[method][layer]
        assert maps.shape == ((2, 2, 32, 32) if get_method(method).input_resolution else (2, 2, 4, 4)), method
        assert np.isfinite(maps).all() and np.ptp(maps) > 0, method
    with pytest.raises(MethodError) as info:  # the class token feeds the head: no GAP -> linear for CAM
        Explainer(model, "cam")(torch.rand(1, 3, 32, 32))
    assert "\n" not in str(info.value)


class _Twice(nn.Module):
    """A test-time flip: the transformer runs twice per forward."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.vit(x) + self.vit(x.flip(-1))) / 2


class _KeywordAttention(nn.Module):
    """Self-attention called with keyword arguments, then a cross-attention pooling head."""

    def __init__(self, pool: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.blocks = nn.ModuleList([nn.MultiheadAttention(8, 2, batch_first=True) for _ in range(2)])
        self.pool = nn.MultiheadAttention(8, 2, batch_first=True) if pool else None
        self.query = nn.Parameter(torch.randn(1, 1, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        for attention in self.blocks:
            t = t + attention(query=t, key=t, value=t, need_weights=False)[0]
        if self.pool is not None:
            t = self.pool(self.query.expand(t.shape[0], 1, 8), t, t, need_weights=False)[0]
        return self.head(t.mean(dim=1))


def test_attention_that_is_not_one_pass_of_self_attention_is_refused() -> None:
    from camlens.targets import Score

    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(MethodError, match="ran 6 times"):
        Explainer(_Twice(_timm_vit()).eval(), "rollout", "vit.blocks.2.norm1")(x)
    torch.manual_seed(15)
    keywords = _KeywordAttention(pool=False).eval()
    maps = Explainer(keywords, ["rollout", "gradrollout"], "embed")(x)
    assert all(np.isfinite(m).all() and np.ptp(m) > 0 for m in (maps.map("rollout"), maps.map("gradrollout")))
    with pytest.raises(MethodError, match="self-attention over one token sequence"):
        Explainer(_KeywordAttention(pool=True).eval(), "gradrollout", "embed")(x)
    with pytest.raises(MethodError, match="a Score function"):
        Explainer(_timm_vit(), "legrad")(x, Score(lambda out: out[:, 1], "second"))


def test_a_wrapped_vit_keeps_its_layouts_layer_and_head() -> None:
    vit = _timm_vit()
    wrapped = nn.Sequential(nn.Identity(), vit).eval()  # e.g. the user's normalisation in front
    x = torch.rand(2, 3, 32, 32)
    methods = ["gradcam", "rollout", "gradrollout", "legrad"]
    with Explainer(vit, methods) as plain, Explainer(wrapped, methods) as outer:
        alone, inside = plain(x, [1, 2]), outer(x, [1, 2])
    assert list(inside.maps["legrad"]) == ["1.blocks.2.norm1"]
    for method in methods:
        np.testing.assert_allclose(inside.map(method), alone.map(method), rtol=1e-5, atol=1e-8)
