"""Boxes from hand-drawn maps, IoU, the pointing game and MaxBoxAccV2 on cases with known answers,
and box extraction against OpenCV's contours (what Choe et al.'s evaluation code uses)."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.evaluation.boxes import Box, best_iou, boxes_from_map, iou
from camlens.evaluation.localization import LocalizationMeter, LocalizationProtocol, localize


def blobs() -> np.ndarray:
    """A 20x30 map: a big block (value 1.0) and a small one (0.5), apart."""
    m = np.zeros((20, 30), dtype=np.float32)
    m[2:8, 3:13] = 1.0  # 6 x 10 = 60 pixels
    m[12:15, 20:22] = 0.5  # 3 x 2 = 6 pixels
    return m


def test_largest_region_box_is_exact() -> None:
    assert boxes_from_map(blobs(), 0.2) == [Box(3.0, 2.0, 13.0, 8.0)]


def test_all_regions_and_min_area() -> None:
    both = boxes_from_map(blobs(), 0.2, largest=False)
    assert both == [Box(3.0, 2.0, 13.0, 8.0), Box(20.0, 12.0, 22.0, 15.0)]
    assert boxes_from_map(blobs(), 0.2, largest=False, min_area=7 / 600) == [Box(3.0, 2.0, 13.0, 8.0)]
    # above half of the range only the big block is left
    assert boxes_from_map(blobs(), 0.6, largest=False) == [Box(3.0, 2.0, 13.0, 8.0)]


def test_threshold_is_a_fraction_of_the_range() -> None:
    m = blobs() + 10.0  # same shape, shifted: min-max normalisation gives the same boxes
    assert boxes_from_map(m, 0.2, largest=False) == boxes_from_map(blobs(), 0.2, largest=False)
    assert boxes_from_map(np.full((5, 5), 3.0), 0.2) == []  # constant: nothing stands out


def test_regions_are_eight_connected() -> None:
    m = np.zeros((6, 6))
    m[1, 1] = m[2, 2] = m[3, 3] = 1.0  # a diagonal line
    assert boxes_from_map(m, 0.5, largest=False) == [Box(1.0, 1.0, 4.0, 4.0)]


def test_iou_and_containment() -> None:
    a, b = Box(0, 0, 10, 10), Box(5, 0, 15, 10)
    assert iou(a, b) == pytest.approx(50 / 150)
    assert iou(a, a) == 1.0
    assert iou(a, Box(20, 20, 30, 30)) == 0.0
    assert best_iou([b, a], [a]) == 1.0
    assert best_iou([], [a]) == 0.0
    assert a.contains(9, 9) and not a.contains(10, 5)
    assert a.contains(14, 5, tolerance=5.0) and not a.contains(15, 5, tolerance=5.0)  # centre 15.5 is 5.5 away
    assert a.scaled(2, 0.5) == Box(0, 0, 20, 5)


def perfect_map(truth: Box, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    m = np.zeros(shape, dtype=np.float32)
    m[int(truth.ymin) : int(truth.ymax), int(truth.xmin) : int(truth.xmax)] = 1.0
    return m


def test_perfect_inverted_and_uniform_maps() -> None:
    truth = [Box(10, 8, 22, 30)]
    proto = LocalizationProtocol(pointing_tolerance=0.0)
    perfect = localize(perfect_map(truth[0]), truth, proto)
    assert perfect.box == truth[0] and perfect.iou == 1.0 and perfect.pointing_hit
    # at threshold 0 the whole image is one box: IoU = box area / image area = 264 / 1600 < 0.3
    assert not perfect.maxbox_hits[0].any() and perfect.maxbox_hits[1:].all()

    inverted = localize(1.0 - perfect_map(truth[0]), truth, proto)
    assert inverted.iou < 0.5 and not inverted.pointing_hit
    assert inverted.box == Box(0, 0, 40, 40)  # the frame around the box is one region

    uniform = localize(np.ones((40, 40)), truth, proto)
    assert uniform.box is None and uniform.iou == 0.0 and not uniform.maxbox_hits.any()
    assert not uniform.pointing_hit  # its first maximum, (0, 0), is far from the box


def test_meter_scores_known_mixture() -> None:
    truth = [Box(10, 8, 22, 30)]
    proto = LocalizationProtocol()
    meter = LocalizationMeter(proto)
    meter.update(localize(perfect_map(truth[0]), truth, proto), correct=True)
    meter.update(localize(perfect_map(truth[0]), truth, proto), correct=False)  # located, wrong class
    meter.update(localize(np.ones((40, 40)), truth, proto), correct=True)
    meter.update(localize(1.0 - perfect_map(truth[0]), truth, proto), correct=True)
    s = meter.summary()
    assert s["gt_known_loc"] == pytest.approx(50.0)
    assert s["top1_loc"] == pytest.approx(25.0)
    assert s["maxboxacc@0.5"] == pytest.approx(50.0)
    assert s["maxboxacc_v2"] == pytest.approx(50.0)
    assert s["best_threshold@0.5"] == pytest.approx(0.01)
    # the uniform and inverted maps peak at pixel (0, 0), whose centre is hypot(9.5, 7.5) = 12.1 px from
    # the box: a hit with the paper's 15 px of slack, a miss without
    assert s["pointing_game"] == pytest.approx(100.0)
    strict = LocalizationProtocol(pointing_tolerance=12.0)
    meter = LocalizationMeter(strict)
    for m in (perfect_map(truth[0]), np.ones((40, 40)), 1.0 - perfect_map(truth[0])):
        meter.update(localize(m, truth, strict), correct=True)
    assert meter.summary()["pointing_game"] == pytest.approx(100.0 / 3)


def test_maxboxacc_picks_the_best_threshold() -> None:
    """A map whose box is right only above 0.5: MaxBoxAccV2 finds that threshold, the fixed
    CAM-paper threshold (0.2) does not."""
    truth = [Box(10, 10, 20, 20)]
    m = np.full((40, 40), 0.3, dtype=np.float32)
    m[0, 0] = 0.0
    m[10:20, 10:20] = 1.0
    proto = LocalizationProtocol()
    out = localize(m, truth, proto)
    assert out.iou < 0.5
    thresholds = proto.map_thresholds
    hit_at = thresholds[out.maxbox_hits[:, 1]]
    assert hit_at.min() == pytest.approx(0.31) and hit_at.max() == pytest.approx(0.99)


def test_boxes_match_opencv_contours() -> None:
    """Every region's box equals cv2.boundingRect of the external contours of the same mask."""
    cv2 = pytest.importorskip("cv2")
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(20):
        m = ndimage.gaussian_filter(rng.random((48, 64)), 3)
        m = (m - m.min()) / (m.max() - m.min())
        for thr in (0.3, 0.5, 0.7):
            ours = sorted((b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes_from_map(m, thr, largest=False))
            mask = (m.astype(np.float32) >= thr).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            rects = [cv2.boundingRect(c) for c in contours]
            theirs = sorted((float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in rects)
            assert ours == theirs
