"""RISE, Group-CAM and Recipro-CAM against the authors' algorithms written out naively, one
input at a time; progress reports and the ``max_batch`` bound of every method that runs the
model again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.transform import resize
from torch import nn

from camlens import Explainer
from camlens.core.perturbation import MASKS_PER_CALL, RISE, GroupCAM, ReciproCAM
from camlens.errors import CamlensError
from camlens.targets import Class
from tests.conftest import TinyDeepNet
from tests.test_perturbation import DeadChannels


def rise_masks_by_hand(rng: np.random.Generator, n: int, s: int, p: float, size: tuple[int, int]) -> np.ndarray:
    """The authors' ``generate_masks``, one mask at a time (the draws in camlens' order)."""
    cell = np.ceil(np.array(size) / s).astype(int)
    up = tuple((s + 1) * cell)
    grid = (rng.random((n, s, s)) < p).astype("float32")
    shifts = rng.integers(0, cell, size=(n, 2))
    return np.stack([resize(grid[i], up, order=1, mode="reflect", anti_aliasing=False)[y : y + size[0], x : x + size[1]]
                     for i, (y, x) in enumerate(shifts)])


def test_rise_masks_are_the_authors_upsampled_shifted_grids() -> None:
    rise = RISE(cells=5, keep=0.3)
    ours = rise.random_masks(np.random.default_rng(7), 40, (30, 22))
    np.testing.assert_allclose(ours, rise_masks_by_hand(np.random.default_rng(7), 40, 5, 0.3, (30, 22)), atol=1e-6)
    assert ours.shape == (40, 30, 22) and ours.min() >= 0 and ours.max() <= 1
    assert abs(rise.random_masks(np.random.default_rng(0), 400, (32, 32)).mean() - 0.3) < 0.05


def test_rise_is_its_formula_over_every_mask() -> None:
    model, x = TinyDeepNet().eval(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    count, cells, keep = MASKS_PER_CALL + 72, 3, 0.4  # two calls to the probe
    with Explainer(model, RISE(masks=count, cells=cells, keep=keep, seed=5), "features.4") as ex:
        got = ex(x, [Class(1), Class(3)]).maps["rise"]["features.4"]
    rng = np.random.default_rng(5)
    masks = np.concatenate([rise_masks_by_hand(rng, m, cells, keep, (8, 8)) for m in (MASKS_PER_CALL, 72)])
    with torch.no_grad():
        for i in range(2):
            probs = torch.stack([F.softmax(model(x[i : i + 1] * torch.from_numpy(m)), dim=1)[0] for m in masks])
            for j, cls in enumerate([1, 3]):
                want = np.tensordot(probs[:, cls].numpy(), masks, axes=1) / (count * keep)
                np.testing.assert_allclose(got[i, j], want, rtol=1e-4, atol=1e-6)


def test_rise_arguments_are_checked() -> None:
    for kwargs, needle in [({"masks": 0}, "masks"), ({"cells": -1}, "cells"), ({"keep": 0.0}, "keep"),
                           ({"keep": 1.5}, "keep"), ({"seed": -2}, "seed")]:
        with pytest.raises(CamlensError, match=needle):
            RISE(**kwargs)


def kornia_blur(x: torch.Tensor, size: int = 51, sigma: float = 50.0) -> torch.Tensor:
    """kornia's ``gaussian_blur2d(x, (size, size), (sigma, sigma))``: a normalised Gaussian of
    ``size`` taps, reflect-padded, along H then W."""
    t = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c, r = x.shape[1], size // 2
    y = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


def group_cam_by_hand(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int, groups: int) -> np.ndarray:
    """The authors' ``GroupCAM.forward`` (wofmanaf/Group-CAM) for one image, a constant group
    scored 0 where their code divides by zero."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append(o))
    logit = model(x)
    handle.remove()
    grad = torch.autograd.grad(logit[0, cls], seen[0])[0]
    weighted = (grad.mean(dim=(2, 3), keepdim=True) * seen[0]).detach()
    maps = F.relu(torch.cat([c.sum(dim=1, keepdim=True) for c in weighted.chunk(groups, 1)], dim=1))
    maps = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]  # (G, H, W)
    blurred = kornia_blur(x)
    with torch.no_grad():
        base = F.softmax(model(blurred), dim=1)[0, cls]
        out = torch.zeros(x.shape[-2:])
        for s in maps:
            span = s.max() - s.min()
            norm = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
            score = F.relu(F.softmax(model(x * norm + blurred * (1 - norm)), dim=1)[0, cls] - base)
            out += score * s
    return out.numpy()


@pytest.mark.parametrize("groups", [4, 6])  # 6: dead channels 1 and 4 are groups of their own
def test_group_cam_by_hand(groups: int) -> None:
    model = DeadChannels().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with Explainer(model, GroupCAM(groups=groups), "relu") as ex:
        got = ex(x, [Class(0), Class(2)]).maps["groupcam"]["relu"]
    assert got.shape == (2, 2, 32, 32)
    for i in range(2):
        for j, cls in enumerate([0, 2]):
            want = group_cam_by_hand(model, model.relu, x[i : i + 1], cls, groups)
            np.testing.assert_allclose(got[i, j], want, rtol=1e-4, atol=1e-7)
    assert (got.reshape(4, -1).max(axis=1) > 0).sum() >= 2  # groups that beat the blurred input


def recipro_by_hand(model: TinyDeepNet, x: torch.Tensor, cls: int, gaussian: bool) -> np.ndarray:
    """The authors' mosaic for one image: per position a feature map zero but there (or the
    position's vector spread over its clipped 3 x 3 neighbourhood), scored by the head."""
    kernel = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32) / 16
    with torch.no_grad():
        a = model.features(x)[0]
        c, h, w = a.shape
        out = np.zeros((h, w), np.float32)
        for u in range(h):
            for v in range(w):
                kept = torch.zeros_like(a)
                if gaussian:
                    for du in (-1, 0, 1):
                        for dv in (-1, 0, 1):
                            if 0 <= u + du < h and 0 <= v + dv < w:
                                kept[:, u + du, v + dv] = a[:, u, v] * kernel[du + 1, dv + 1]
                else:
                    kept[:, u, v] = a[:, u, v]
                out[u, v] = F.softmax(model.head(kept[None]), dim=1)[0, cls]
    return out


@pytest.mark.parametrize("gaussian", [False, True])
def test_recipro_cam_by_hand_running_only_the_layers_after(gaussian: bool) -> None:
    model = TinyDeepNet().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    stem_rows: list[int] = []
    handle = model.features[0].register_forward_hook(lambda m, a, o: stem_rows.append(a[0].shape[0]))
    try:
        with Explainer(model, ReciproCAM(gaussian=gaussian), "features.4") as ex:
            got = ex(x, [Class(4), Class(0)]).maps["reciprocam"]["features.4"]
    finally:
        handle.remove()
    for i in range(2):
        for j, cls in enumerate([4, 0]):
            np.testing.assert_allclose(got[i, j], recipro_by_hand(model, x[i : i + 1], cls, gaussian), rtol=1e-5, atol=1e-7)
    # 16 positions per image, one forward each: the layers before the target layer ran once per
    # forward (one input row), not once per position
    assert stem_rows[0] == 2 and max(stem_rows[1:]) == 1


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "rise", "groupcam", "reciprocam", "sscam"])
def test_progress_is_reported_and_max_batch_bounds_every_forward(method: str) -> None:
    model = TinyDeepNet().eval()
    rows: list[int] = []
    after: list[int] = []
    handles = [model.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0])),
               model.head.register_forward_hook(lambda m, a, o: after.append(a[0].shape[0]))]
    seen: list[tuple[str, int, int]] = []
    try:
        with Explainer(model, method, "features.4", max_batch=5) as ex:
            ex(torch.randn(3, 3, 8, 8), top=2, progress=lambda *report: seen.append(report))
    finally:
        for handle in handles:
            handle.remove()
    assert rows[0] == 3 and max(rows[1:]) <= 5  # the explained forward, then at most 5 inputs per forward
    # after the replaced layer, as many replacements as fit in 5 inputs' bytes: 5 * (3*8*8) // (8*4*4) = 7
    assert max(after[1:]) == (7 if method in ("ablationcam", "reciprocam") else 5)
    what, done, total = zip(*seen, strict=True)
    assert set(what) == {f"{ex.methods[0].title} at features.4"}
    assert list(done) == sorted(done) and done[-1] == total[-1] and len(set(total)) == 1


def test_method_settings_by_name() -> None:
    from camlens.core.methods import canonical_spec, get_method, methods_from

    assert repr(get_method("RISE:masks=100:keep=0.25")) == "RISE(masks=100, cells=7, keep=0.25, seed=0)"
    assert repr(get_method("recipro-cam:gaussian=true")) == "ReciproCAM(gaussian=True)"
    assert [repr(m) for m in methods_from("fasterscorecam:channels=8,gradcam")] == ["FasterScoreCAM(channels=8)", "GradCAM()"]
    assert canonical_spec("Ablation_CAM") == "ablationcam" and canonical_spec("RISE: masks=10") == "rise:masks=10"
    for bad, needle in [("rise:mask=3", "rise takes masks, cells, keep, seed"), ("gradcam:x=1", "gradcam takes no settings"),
                        ("rise:masks=0", "masks must be at least 1"), ("groupcam:groups", "groupcam takes groups")]:
        with pytest.raises(CamlensError, match=needle) as info:
            get_method(bad)
        assert bad in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CamlensError, match="rise is asked for twice with different settings"):
        methods_from("rise:masks=10,rise:masks=20")
    assert len(methods_from("rise:masks=10,RISE:masks=10")) == 1


class NoAutograd(nn.Module):
    """conv -> ReLU -> [GAP -> linear under torch.no_grad]: no gradient reaches the layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        with torch.no_grad():
            return self.fc(a.mean(dim=(2, 3)))


def test_a_model_without_gradients_is_told_which_methods_work() -> None:
    model, x = NoAutograd().eval(), torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CamlensError, match="through autograd .* methods without gradients work: scorecam") as info:
        Explainer(model, "gradcam", "conv")(x)
    assert "\n" not in str(info.value)
    for method in ("scorecam", "ablationcam", "reciprocam"):
        assert np.ptp(Explainer(model, method, "conv")(x).maps[method]["conv"]) > 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_bad_max_batch_is_one_line(bad: object) -> None:
    with pytest.raises(CamlensError, match="max_batch"):
        Explainer(TinyDeepNet(), "scorecam", "features.4", max_batch=bad)  # type: ignore[arg-type]
