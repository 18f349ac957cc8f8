"""Faithfulness metrics: hand-computed values, torchcam parity, layouts, batching, inputs left untouched."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn
from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

from camlens.errors import CamlensError
from camlens.evaluation.faithfulness import (
    Curves,
    apply_mask,
    auc,
    confidence_change,
    deletion_insertion,
    rise_blur,
)

# --- hand-built cases -------------------------------------------------------------------------------
# A 2-channel 4x4 input of ones; class 0's probability is 0.1 + 0.8 * (mean of the 2x2 region below),
# i.e. linear in how much of the region is kept. The region's raster indices are 5, 6, 9 and 10.
H = W = 4
P = H * W
REGION = np.zeros((H, W), dtype=bool)
REGION[1:3, 1:3] = True
PERFECT = REGION.astype(np.float32)
INVERTED = 1.0 - PERFECT
UNIFORM = np.full((H, W), 0.5, dtype=np.float32)


def to_layout(x_nchw: np.ndarray, layout: str) -> np.ndarray:
    return x_nchw if layout == "NCHW" else np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))


def region_predict(layout: str) -> Callable[[np.ndarray], np.ndarray]:
    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4
        nchw = batch if layout == "NCHW" else batch.transpose(0, 3, 1, 2)
        p = 0.1 + 0.8 * nchw[:, :, REGION].astype(np.float64).mean(axis=(1, 2))
        return np.stack([p, 1.0 - p], axis=1)

    return predict


def ones(n: int, layout: str) -> np.ndarray:
    return to_layout(np.ones((n, 2, H, W), dtype=np.float32), layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("steps", [P, 4, None, 5])  # None = H = 4 steps; 5 steps -> ceil(16/5) = 4 pixels per step too
def test_deletion_insertion_hand_values(layout: str, steps: int | None) -> None:
    # Deleting the region first loses 0.8 over its first 4/16 of the curve: AUC = 0.1 + 0.8 * 4/32 = 0.2;
    # last (inverted): 0.1 + 0.8 * (12/16 + 4/32) = 0.8; in raster order (uniform map: ties): 0.1 + 0.8 * 8/16 = 0.5.
    # With zero baselines, insertion is the mirror image. These values hold at 1 and at 4 pixels per step.
    curves = deletion_insertion(
        region_predict(layout),
        ones(3, layout),
        np.stack([PERFECT, UNIFORM, INVERTED]),
        0,
        layout,
        steps=steps,
        insertion_baseline="zero",
    )
    np.testing.assert_allclose(curves.deletion_auc, [0.2, 0.5, 0.8], atol=1e-12)
    np.testing.assert_allclose(curves.insertion_auc, [0.8, 0.5, 0.2], atol=1e-12)
    if steps == P:
        np.testing.assert_allclose(curves.fractions, np.arange(P + 1) / P)
        perfect_deletion = [0.9, 0.7, 0.5, 0.3] + [0.1] * (P - 3)
        np.testing.assert_allclose(curves.deletion[0], perfect_deletion, atol=1e-12)
        np.testing.assert_allclose(curves.insertion[0], 1.0 - np.array(perfect_deletion), atol=1e-12)
    else:
        np.testing.assert_allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1])
        np.testing.assert_allclose(curves.deletion[1], [0.9, 0.9, 0.5, 0.1, 0.1], atol=1e-12)  # uniform: raster order


def test_deletion_insertion_closed_form_for_random_maps() -> None:
    # One pixel per step and a probability linear in the kept part of the region: a region pixel of rank r
    # (0 = most salient) is deleted between points r and r + 1, so by the trapezoid rule
    # AUC_del = 0.1 + 0.8 * mean_r (r + 1/2) / P and AUC_ins = 0.1 + 0.8 * (1 - mean_r (r + 1/2) / P).
    rng = np.random.default_rng(3)
    maps = rng.random((5, H, W))
    rank = (maps.reshape(5, 1, P) > maps.reshape(5, P, 1)).sum(axis=2).reshape(5, H, W)  # pixels ranked above
    expected = np.array([(rank[i][REGION] + 0.5).mean() / P for i in range(5)])
    curves = deletion_insertion(region_predict("NCHW"), ones(5, "NCHW"), maps, 0, "NCHW", steps=P, insertion_baseline="zero")
    np.testing.assert_allclose(curves.deletion_auc, 0.1 + 0.8 * expected, atol=1e-12)
    np.testing.assert_allclose(curves.insertion_auc, 0.1 + 0.8 * (1.0 - expected), atol=1e-12)
    assert (curves.deletion_auc < curves.insertion_auc).sum() >= 1  # the numbers are not all the same


def test_deletion_insertion_baselines_enter_as_documented() -> None:
    # Deletion towards 0.5 stops at p = 0.1 + 0.8 * 0.5 = 0.5; insertion from a constant 0.25 starts at 0.3.
    curves = deletion_insertion(
        region_predict("NCHW"), ones(1, "NCHW"), PERFECT, 0, "NCHW", steps=4, deletion_baseline=0.5,
        insertion_baseline=lambda v: np.full_like(v, 0.25),
    )
    np.testing.assert_allclose(curves.deletion[0], [0.9, 0.5, 0.5, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(curves.insertion[0], [0.3, 0.9, 0.9, 0.9, 0.9], atol=1e-12)


@pytest.mark.parametrize(("height", "width", "steps", "fractions"), [
    (2, 5, 3, [0, 0.4, 0.8, 1]),  # ceil(10 / 3) = 4 pixels per step, the last interval shorter
    (2, 5, None, [0, 0.5, 1]),  # default: H steps of one row (W pixels) each
    (3, 2, 100, np.arange(7) / 6),  # more steps than pixels: one pixel per step
    (3, 2, 1, [0, 1]),
])
def test_fractions_follow_torchcam_counts(height: int, width: int, steps: int | None, fractions: Any) -> None:
    x = np.ones((1, 1, height, width), dtype=np.float32)
    calls: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return np.tile([[0.5, 0.5]], (batch.shape[0], 1))

    curves = deletion_insertion(predict, x, np.zeros((height, width)), 1, "NCHW", steps=steps)
    np.testing.assert_allclose(curves.fractions, fractions)
    assert curves.deletion.shape == curves.insertion.shape == (1, len(fractions))
    assert sum(calls) == 2 * len(fractions) - 1  # the unperturbed input is scored once for both curves


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_confidence_change_hand_values(layout: str) -> None:
    # On ones, Y(class 0) = 0.9 and Y(class 1) = 0.1; a constant map m keeps p0 = 0.1 + 0.8 m.
    x = ones(4, layout)
    maps = np.stack([np.ones((H, W)), np.zeros((H, W)), np.zeros((H, W)), np.full((H, W), 0.5)])
    drop, increase = confidence_change(region_predict(layout), x, maps, [0, 0, 1, 0], layout)
    # all ones: O == Y exactly; zeros, class 0: 1 - 0.1/0.9; zeros, class 1: 0.1 -> 0.9, an increase; 0.5: 1 - 0.5/0.9
    np.testing.assert_allclose(drop, [0.0, 1 - 0.1 / 0.9, 0.0, 1 - 0.5 / 0.9], atol=1e-12)
    np.testing.assert_array_equal(increase, [False, False, True, False])
    assert drop.dtype == np.float64 and increase.dtype == bool


def test_confidence_change_zero_confidence_is_no_drop() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        return np.tile([[0.0, 1.0]], (batch.shape[0], 1))

    drop, increase = confidence_change(predict, ones(2, "NCHW"), np.zeros((H, W)), [0, 1], "NCHW")
    np.testing.assert_array_equal(drop, [0.0, 0.0])
    np.testing.assert_array_equal(increase, [False, False])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_apply_mask_broadcasts_over_channels(layout: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    masks = rng.random((2, H, W)).astype(np.float32)
    expected = x * masks[:, None]
    np.testing.assert_array_equal(apply_mask(to_layout(x, layout), masks, layout), to_layout(expected, layout))
    np.testing.assert_array_equal(apply_mask(to_layout(x, layout), masks[1], layout), to_layout(x * masks[1], layout))


def test_auc_is_the_trapezoid_rule() -> None:
    rng = np.random.default_rng(1)
    fractions = np.sort(np.concatenate([[0.0, 1.0], rng.random(6)]))
    curves = rng.random((3, 8))
    np.testing.assert_allclose(auc(fractions, curves), np.trapezoid(curves, fractions, axis=-1), rtol=1e-14)
    assert auc([0, 0.5, 1], [1, 1, 0]).shape == ()
    assert float(auc([0, 0.5, 1], [1, 1, 0])) == 0.75
    assert Curves(np.array([0, 1.0]), np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])).deletion_auc.tolist() == [0.5]


# --- RISE's blur substrate ---------------------------------------------------------------------------


def rise_reference_blur(x_nchw: np.ndarray) -> np.ndarray:
    """Petsiuk et al.'s evaluation.py: gkern(11, 5), then conv2d(x, kern, padding=11 // 2)."""
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = gaussian_filter(delta, 5)
    kern = np.zeros((3, 3, 11, 11))
    for c in range(3):
        kern[c, c] = k
    weight = torch.from_numpy(kern.astype("float32"))
    return nn.functional.conv2d(torch.from_numpy(x_nchw), weight, padding=5).numpy()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_rise_blur_matches_rise_code(layout: str) -> None:
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 12)).astype(np.float32)
    blurred = rise_blur(to_layout(x, layout), layout)
    assert blurred.dtype == np.float32
    np.testing.assert_allclose(blurred, to_layout(rise_reference_blur(x), layout), atol=2e-6)
    constant = rise_blur(np.full((1, 3, 16, 16), 2.0, dtype=np.float32), "NCHW")
    np.testing.assert_allclose(constant[..., 5:11, 5:11], 2.0, rtol=1e-6)  # the kernel sums to 1 ...
    assert constant[0, 0, 0, 0] < 1.5  # ... and the borders are zero-padded, as conv2d(padding=5)


def test_blur_baseline_by_name_array_and_callable_agree() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, H, W)).astype(np.float32)
    maps = rng.random((2, H, W))
    predict = region_predict("NCHW")
    by_name = deletion_insertion(predict, x, maps, 0, "NCHW", steps=4, deletion_baseline="blur")
    by_array = deletion_insertion(predict, x, maps, 0, "NCHW", steps=4, deletion_baseline=rise_blur(x, "NCHW"),
                                  insertion_baseline=rise_blur(x, "NCHW"))
    by_callable = deletion_insertion(predict, x, maps, 0, "NCHW", steps=4, deletion_baseline=partial(rise_blur, layout="NCHW"),
                                     insertion_baseline=partial(rise_blur, layout="NCHW"))
    for other in (by_array, by_callable):
        np.testing.assert_array_equal(other.deletion, by_name.deletion)
        np.testing.assert_array_equal(other.insertion, by_name.insertion)
    np.testing.assert_array_equal(by_name.deletion[:, -1], by_name.insertion[:, 0])  # both end on the blurred input


# --- parity with torchcam ----------------------------------------------------------------------------


class TinyNet(nn.Module):
    """conv(3 -> 8, 3x3) -> ReLU -> global average pooling -> linear(8 -> 4), seeded."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class StubExtractor:
    """The slice of torchcam's _CAMExtractor protocol its metrics use, returning fixed maps."""

    def __init__(self, model: nn.Module, maps: np.ndarray) -> None:
        self.model = model
        self.maps = torch.from_numpy(maps)
        self.class_idx: list[Any] = []

    def __call__(self, class_idx: Any = None, scores: Any = None, normalized: bool = True, **kwargs: Any) -> list[torch.Tensor]:
        self.class_idx.append(class_idx)
        return [self.maps]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    def _hooks_off(self) -> nullcontext[None]:
        return nullcontext()


def torch_predict(model: nn.Module, layout: str) -> Callable[[np.ndarray], np.ndarray]:
    def predict(batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(batch)
        with torch.inference_mode():
            logits = model(tensor if layout == "NCHW" else tensor.permute(0, 3, 1, 2))
            return torch.softmax(logits, dim=-1).numpy()

    return predict


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    model = TinyNet().eval()
    rng = np.random.default_rng(3)
    # per-sample colour offsets, so the top class and its confidence vary across samples (3, 1, 3, 2 here)
    x = (rng.standard_normal((4, 3, 16, 16)) + rng.normal(0, 2, (4, 3, 1, 1))).astype(np.float32)
    raw = rng.random((4, 16, 16)).astype(np.float32)
    lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    smooth = ((raw - lo) / (hi - lo)).astype(np.float32)
    maps = {"random": smooth, "ties": (np.round(smooth * 3) / 3).astype(np.float32)}  # 4 levels: many ties
    with torch.inference_mode():
        targets = model(torch.from_numpy(x)).argmax(dim=-1).numpy()
    return model, x, maps, targets


@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize("steps", [4, 5, 16])
def test_deletion_insertion_matches_torchcam(setup: Any, kind: str, steps: int) -> None:
    model, x, all_maps, targets = setup
    maps = all_maps[kind]
    predict = torch_predict(model, "NCHW")
    ours = deletion_insertion(predict, x, maps, targets, "NCHW", steps=steps, insertion_baseline="zero", batch_size=7)
    reference = []
    for i in range(x.shape[0]):  # one sample per update, so torchcam's summary is that sample's AUCs
        extractor = StubExtractor(model, maps[i : i + 1])
        metric = DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1), steps=steps, batch_size=5)
        metric.update(torch.from_numpy(x[i : i + 1]))
        assert extractor.class_idx == [[int(targets[i])]]  # torchcam's default class: the top one, as ours
        summary = metric.summary()
        reference.append((summary["deletion_auc"], summary["insertion_auc"]))
    np.testing.assert_allclose(ours.deletion_auc, [d for d, _ in reference], atol=1e-5)
    np.testing.assert_allclose(ours.insertion_auc, [i for _, i in reference], atol=1e-5)
    assert np.ptp(ours.deletion_auc) > 1e-3  # distinct samples, distinct numbers

    nhwc = deletion_insertion(torch_predict(model, "NHWC"), to_layout(x, "NHWC"), maps, targets, "NHWC", steps=steps,
                              insertion_baseline="zero", batch_size=7)
    np.testing.assert_allclose(nhwc.deletion, ours.deletion, atol=1e-6)
    np.testing.assert_allclose(nhwc.insertion, ours.insertion, atol=1e-6)


def test_confidence_change_matches_torchcam(setup: Any) -> None:
    model, x, all_maps, targets = setup
    maps = np.concatenate([all_maps["random"], all_maps["ties"]])
    inputs = np.concatenate([x, x])
    targets = np.concatenate([targets, targets])
    drop, increase = confidence_change(torch_predict(model, "NCHW"), inputs, maps, targets, "NCHW", batch_size=3)
    reference = []
    for i in range(inputs.shape[0]):
        extractor = StubExtractor(model, maps[i : i + 1])
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(torch.from_numpy(inputs[i : i + 1]))
        assert extractor.class_idx == [[int(targets[i])]]
        summary = metric.summary()
        reference.append((summary["avg_drop"], summary["conf_increase"]))
    np.testing.assert_allclose(drop, [d for d, _ in reference], atol=1e-5)
    np.testing.assert_array_equal(increase, [bool(c) for _, c in reference])
    assert drop.max() > 0.05  # the maps do change the confidence

    batch_metric = ClassificationMetric(StubExtractor(model, maps), partial(torch.softmax, dim=-1))
    batch_metric.update(torch.from_numpy(inputs))
    assert drop.mean() == pytest.approx(batch_metric.summary()["avg_drop"], abs=1e-5)
    assert increase.mean() == batch_metric.summary()["conf_increase"]

    nhwc = confidence_change(torch_predict(model, "NHWC"), to_layout(inputs, "NHWC"), maps, targets, "NHWC")
    np.testing.assert_allclose(nhwc[0], drop, atol=1e-6)
    np.testing.assert_array_equal(nhwc[1], increase)


# --- batching, inputs untouched, bad arguments -------------------------------------------------------


def test_batches_are_bounded_and_do_not_change_results() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, H, W)).astype(np.float32)
    maps = rng.random((3, H, W))
    sizes: list[int] = []
    inner = region_predict("NCHW")

    def predict(batch: np.ndarray) -> np.ndarray:
        sizes.append(batch.shape[0])
        return inner(batch)

    small = deletion_insertion(predict, x, maps, [0, 1, 0], "NCHW", steps=4, batch_size=4)
    assert max(sizes) == 4 and sum(sizes) == 3 * (2 * 5 - 1)
    large = deletion_insertion(inner, x, maps, [0, 1, 0], "NCHW", steps=4, batch_size=1000)
    np.testing.assert_array_equal(small.deletion, large.deletion)
    np.testing.assert_array_equal(small.insertion, large.insertion)

    sizes.clear()
    drop = confidence_change(predict, x, maps, [0, 1, 0], "NCHW", batch_size=2)[0]
    assert sizes == [2, 2, 1, 1]
    np.testing.assert_array_equal(drop, confidence_change(inner, x, maps, [0, 1, 0], "NCHW")[0])


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, H, W)).astype(np.float32)
    maps = rng.random((2, H, W)).astype(np.float32)
    baseline = rng.standard_normal((1, 2, H, W)).astype(np.float32)
    saved = [a.copy() for a in (x, maps, baseline)]
    for a in (x, maps, baseline):
        a.flags.writeable = False
    inner = region_predict("NCHW")

    def vandal(batch: np.ndarray) -> np.ndarray:  # a predict that scribbles on its argument
        out = inner(batch)
        batch[...] = 7.0
        return out

    deletion_insertion(vandal, x, maps, 0, "NCHW", steps=4, deletion_baseline=baseline, insertion_baseline="blur")
    confidence_change(vandal, x, maps, 0, "NCHW")
    apply_mask(x, maps, "NCHW")
    rise_blur(x, "NCHW")
    for before, after in zip(saved, (x, maps, baseline), strict=True):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"layout": "CHW"}, CamlensError, "layout"),
    ({"maps": np.zeros((3, 3))}, CamlensError, "maps must have shape"),
    ({"maps": np.full((H, W), np.nan)}, CamlensError, "finite"),
    ({"targets": 2}, CamlensError, "out of range"),
    ({"targets": [0, 1, 0]}, CamlensError, "one per sample"),
    ({"targets": 0.5}, CamlensError, "integer"),
    ({"batch_size": 0}, CamlensError, "batch_size"),
    ({"steps": 0}, CamlensError, "steps"),
    ({"deletion_baseline": "mean"}, CamlensError, "unknown baseline"),
    ({"insertion_baseline": np.zeros((3, 3))}, CamlensError, "broadcastable"),
])
def test_deletion_insertion_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    arguments: dict[str, Any] = {"predict": region_predict("NCHW"), "x": ones(2, "NCHW"), "maps": PERFECT, "targets": 0}
    arguments["layout"] = "NCHW"
    with pytest.raises(error, match=match):
        deletion_insertion(**(arguments | kwargs))


def test_confidence_change_rejects_maps_outside_unit_range() -> None:
    with pytest.raises(CamlensError, match=r"\[0, 1\]"):
        confidence_change(region_predict("NCHW"), ones(1, "NCHW"), PERFECT * 2, 0, "NCHW")
    with pytest.raises(CamlensError, match="predict must return"):
        confidence_change(lambda b: np.ones(b.shape[0]), ones(1, "NCHW"), PERFECT, 0, "NCHW")
