"""Targets from the command line: segmentation regions and masks, detector boxes, similarity to
an image with a headless model, and one-line errors for bad combinations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps

from camlens.samples import sample_image
from tests.test_cli import camlens


def _photo(path: Path, size: tuple[int, int] = (120, 96)) -> Path:
    sample_image("chelsea").resize(size).save(path)
    return path


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    path = tmp_path_factory.mktemp("models") / "seg.pt"
    torch.save(model.eval(), path)
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0)
    path = tmp_path_factory.mktemp("models") / "det.pt"
    torch.save(model.eval(), path)
    return path


def _summary(out: Path) -> dict:  # type: ignore[type-arg]
    [path] = out.glob("camlens-run-*.json")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_segmentation_class_region_and_user_mask(seg_model: Path, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "cat.png")
    mask = np.zeros((96, 120), np.uint8)
    mask[20:70, 30:90] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    result = camlens("explain", photo, "--model", seg_model, "--trust-pickle", "--target", "2", "--save-raw",
                     "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["cat_gradcam_2-class-2-region.png"]
    [entry] = _summary(out)["images"][0]["explanations"]
    assert entry["kind"] == "segmentation" and entry["explained"] == "class 2 region"
    masked = camlens("explain", photo, "--model", seg_model, "--trust-pickle", "--mask", tmp_path / "mask.png",
                     "--out", tmp_path / "masked", "--device", "cpu")
    assert masked.returncode == 0, masked.stderr
    [overlay] = (tmp_path / "masked").glob("cat_gradcam_*-region.png")
    pixels = np.asarray(Image.open(overlay))
    assert (pixels[20, 40:80] == 255).all()  # the region's outline is drawn in white on the overlay
    wrong = np.zeros((10, 10), np.uint8)
    wrong[2:5, 2:5] = 255
    Image.fromarray(wrong).save(tmp_path / "small.png")
    bad = camlens("explain", photo, "--model", seg_model, "--trust-pickle", "--mask", tmp_path / "small.png",
                  "--out", tmp_path / "bad", "--device", "cpu")
    assert bad.returncode == 1 and "cat.png: mask of 10x10 pixels does not fit an image of 120x96" in bad.stderr
    written = [p.suffix for p in (tmp_path / "bad").iterdir() if p.name != ".camlens-run"]  # but the run's ledger
    assert written == [".json"]  # the summary, listing the failure


def test_detector_box_target(detector: Path, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "cat.png")
    from camlens import Lens

    lens = Lens(str(detector), trust_pickle=True, device="cpu")
    [[top]] = lens.explain([photo], "eigencam")  # the top detection, gradient-free
    assert top.kind == "detection" and top.box is not None
    x0, y0, x1, y1 = (round(v) for v in top.box)
    out = tmp_path / "out"
    result = camlens("explain", photo, "--model", detector, "--trust-pickle", "--target", f"box:{x0},{y0},{x1},{y1}",
                     "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    [entry] = _summary(out)["images"][0]["explanations"]
    assert entry["kind"] == "detection" and entry["explained"].startswith(f"box {x0},{y0},{x1},{y1}")
    [path] = out.glob("*.png")
    assert path.name.startswith(f"cat_gradcam_box-{x0}-{y0}-{x1}-{y1}-class-")
    bad = camlens("explain", photo, "--model", detector, "--trust-pickle", "--target", "box:5,5,2", "--out",
                  tmp_path / "bad", "--device", "cpu")
    assert bad.returncode == 2 and "a box is box:x0,y0,x1,y1[:CLASS]" in bad.stderr


def test_similar_to_an_image_with_the_headless_bundled_model(tmp_path: Path) -> None:
    """The real-photo check: a cat and an espresso side by side, explained by their similarity
    to the same cat flipped (bundled EfficientNet-Lite0's pooled features): the cat lights up."""
    cat, cup = sample_image("chelsea"), sample_image("coffee")
    scene = Image.new("RGB", (448, 224))
    scene.paste(cat.resize((224, 224)), (0, 0))
    scene.paste(cup.resize((224, 224)), (224, 0))
    scene.save(tmp_path / "scene.png")
    ImageOps.mirror(cat).save(tmp_path / "flipped.png")
    out = tmp_path / "out"
    result = camlens("explain", tmp_path / "scene.png", "--headless", "--target", f"similar-to:{tmp_path / 'flipped.png'}",
                     "--save-raw", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    raw = np.load(out / "scene_gradcam_similar-to-flipped.npy")
    heat = np.asarray(Image.fromarray(raw).resize((448, 224), Image.Resampling.BILINEAR))
    heat = heat - heat.min()
    assert heat[:, :224].sum() / heat.sum() > 0.75  # measured 0.83
    [entry] = _summary(out)["images"][0]["explanations"]
    assert entry["kind"] == "similarity" and entry["target"]["probability"] is None
    missing = camlens("explain", tmp_path / "scene.png", "--headless", "--target", "similar-to:nope.png",
                      "--out", tmp_path / "o", "--device", "cpu")
    assert missing.returncode == 2 and "similar-to: nope.png" in missing.stderr
    region = np.zeros((224, 448), np.uint8)
    region[50:100, 50:100] = 1
    Image.fromarray(region).save(tmp_path / "region.png")
    on_classifier = camlens("explain", tmp_path / "scene.png", "--mask", tmp_path / "region.png", "--out",
                            tmp_path / "o2", "--device", "cpu")
    assert on_classifier.returncode == 2 and "needs segmentation maps" in on_classifier.stderr


def test_targets_listing_and_readme_table() -> None:
    listing = camlens("targets")
    assert listing.returncode == 0 and "similar-to:IMAGE" in listing.stdout
    table = camlens("targets", "--markdown").stdout.strip()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table in readme, "README's targets table is out of date: paste `camlens targets --markdown`"
