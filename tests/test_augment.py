"""Smoothing any method (camlens.Augment): SmoothGrad noise and test-time flips and scales,
each against the mean of plain explanations of the copies computed by hand, for the batch's
own targets; spatial targets refused where the pixels move; bad arguments in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens import Augment, Explainer
from camlens.errors import CamlensError, TargetError
from camlens.targets import Class, Segmentation
from tests.conftest import TinyGapNet

METHODS = ["gradcam", "scorecam", "layercam"]


def plain(model: nn.Module, x: torch.Tensor, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's (N, 1, h, w) maps of ``x`` for one class per sample."""
    with Explainer(model, METHODS, "relu") as ex:
        result = ex(x, Class(classes))
    return {m: result.maps[m]["relu"] for m in METHODS}


def resized(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Each channel resized bilinearly by PIL (camlens' half-pixel convention)."""
    h, w = round(x.shape[2] * scale), round(x.shape[3] * scale)
    out = [[np.asarray(Image.fromarray(c.numpy()).resize((w, h), Image.Resampling.BILINEAR)) for c in img] for img in x]
    return torch.from_numpy(np.array(out, dtype=np.float32))


def back(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.empty((*maps.shape[:2], *size), np.float32)
    for i in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            picture = Image.fromarray(np.ascontiguousarray(maps[i, k]))
            out[i, k] = np.asarray(picture.resize(size[::-1], Image.Resampling.BILINEAR))
    return out


@pytest.fixture
def setup() -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    model = TinyGapNet(channels=6).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        top = model(x).argmax(1).numpy()
    return model, x, top


def test_flips_and_scales_average_the_maps_mapped_back(setup) -> None:  # type: ignore[no-untyped-def]
    model, x, top = setup
    with Explainer(model, METHODS, "relu", augment=Augment.tta((0.75, 1.0))) as ex:
        got = ex(x)
    assert np.array_equal(got.targets[:, 0], top)  # the batch's own top class, not each copy's
    want = {m: np.zeros((2, 1, 16, 16)) for m in METHODS}
    for flip in (False, True):
        for scale in (0.75, 1.0):
            copy = torch.flip(x, dims=[3]) if flip else x
            copy = resized(copy, scale) if scale != 1.0 else copy
            for m, maps in plain(model, copy, top).items():
                maps = maps[..., ::-1] if flip else maps
                want[m] += back(maps, (16, 16)) if maps.shape[-1] != 16 else maps
    for m in METHODS:
        np.testing.assert_allclose(got.maps[m]["relu"], want[m] / 4, rtol=1e-4, atol=1e-6, err_msg=m)


def test_smoothgrad_noise_is_seeded_per_draw_and_scaled_to_each_input(setup) -> None:  # type: ignore[no-untyped-def]
    model, x, top = setup
    x = x * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)  # the second image's range is three times the first's
    with Explainer(model, METHODS, "relu", augment=Augment.smoothgrad(samples=4, noise=0.2)) as ex:
        got = ex(x, Class(top))
    spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(2, 1, 1, 1)
    want = {m: np.zeros((2, 1, 16, 16)) for m in METHODS}
    for i in range(4):
        noise = torch.from_numpy(np.random.default_rng([0, i]).normal(0.0, 1.0, (3, 16, 16)).astype(np.float32))
        for m, maps in plain(model, x + 0.2 * spread * noise, top).items():
            want[m] += maps
    for m in METHODS:
        np.testing.assert_allclose(got.maps[m]["relu"], want[m] / 4, rtol=1e-4, atol=1e-6, err_msg=m)
    with Explainer(model, "gradcam", "relu", augment=Augment.smoothgrad(samples=4, noise=0.2)) as ex:
        alone = ex(x[1:], Class(top[1:]))  # an image's smoothed map does not depend on the rest of the batch
    np.testing.assert_allclose(alone.maps["gradcam"]["relu"][0], got.maps["gradcam"]["relu"][1], rtol=1e-5, atol=1e-7)


def test_pixel_targets_refuse_flips_and_scales() -> None:
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    x = torch.rand(1, 3, 12, 12)
    with Explainer(seg, "gradcam", "1", augment=Augment(flips=True)) as ex, \
            pytest.raises(TargetError, match="segmentation target"):
        ex(x, Segmentation(1))
    with Explainer(seg, "gradcam", "1", augment=Augment.smoothgrad(2)) as ex:
        assert ex(x, Segmentation(1)).maps["gradcam"]["1"].shape == (1, 1, 12, 12)


@pytest.mark.parametrize("kwargs, needle", [
    ({}, "changes nothing"), ({"samples": -1}, "samples"), ({"samples": 2, "noise": -0.1}, "noise"),
    ({"scales": ()}, "scales"), ({"scales": (0.0,)}, "scales"), ({"flips": "yes"}, "flips"),
])
def test_bad_augmentations_are_one_line(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(CamlensError, match=needle) as info:
        Augment(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_an_augment_that_is_not_one_is_refused(tiny: TinyGapNet) -> None:
    with pytest.raises(CamlensError, match="augment must be a camlens Augment"):
        Explainer(tiny, "gradcam", augment="tta")  # type: ignore[arg-type]
