"""The digits-canvas benchmark generator: layout, exact boxes, determinism, no clobbering."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from camlens.data.digits_canvas import CanvasSpec, background, generate, place, render
from camlens.errors import CamlensError

SPEC = CanvasSpec(size=48, digit_min=16, digit_max=24, clutter=2)


def rows(boxes_csv: Path) -> list[dict[str, str]]:
    with open(boxes_csv, newline="") as fh:
        return list(csv.DictReader(fh))


def test_layout_and_boxes(tmp_path: Path) -> None:
    boxes = generate(tmp_path / "d", 3, 2, seed=1, spec=SPEC)
    table = rows(boxes)
    assert len(table) == 10 * (3 + 2)
    for split, n in (("train", 3), ("test", 2)):
        for digit in range(10):
            files = sorted((tmp_path / "d" / split / str(digit)).glob("*.png"))
            assert [f.name for f in files] == [f"{split}_{digit}_{k:05d}.png" for k in range(n)]
    for r in table:
        assert (tmp_path / "d" / r["image"]).is_file()
        assert r["label"] == r["image"].split("/")[1]
        x0, y0, x1, y1 = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
        assert 16 * 0.3 <= max(x1 - x0, y1 - y0) <= 24  # the ink of a 16..24 px digit


def test_box_is_the_tight_box_of_the_ink() -> None:
    """The canvas before and after the digit: pixels outside the box changed by less than the
    ink threshold allows, and every edge of the box touches ink."""
    digits = load_digits()
    for k in range(10):
        rng = np.random.default_rng(k)
        blank = background(rng, SPEC)
        image, box = place(blank, digits.images[k], rng, SPEC)
        diff = np.abs(np.asarray(image, np.float32) - np.asarray(blank, np.float32)).max(axis=2)
        x0, y0, x1, y1 = (int(v) for v in (box.xmin, box.ymin, box.xmax, box.ymax))
        outside = diff.copy()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() <= 0.2 * 255 + 1
        inside = diff[y0:y1, x0:x1] > 0
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert render(digits.images[k], np.random.default_rng(k), SPEC)[1] == box


def test_same_seed_same_images(tmp_path: Path) -> None:
    def digest(root: Path) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))]

    generate(tmp_path / "a", 2, 1, seed=3, spec=SPEC)
    generate(tmp_path / "b", 2, 1, seed=3, spec=SPEC)
    generate(tmp_path / "c", 2, 1, seed=4, spec=SPEC)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    assert rows(tmp_path / "a" / "boxes.csv") == rows(tmp_path / "b" / "boxes.csv")


def test_refuses_a_folder_with_files_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CamlensError, match="not empty"):
        generate(out, 1, 1, spec=SPEC)
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(CamlensError, match="digit sizes"):
        generate(tmp_path / "new", 1, 1, spec=CanvasSpec(size=20, digit_min=16, digit_max=24))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    generate(tmp_path / "empty_ok", 1, 1, spec=SPEC)  # an existing empty folder is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_ok", "mine"]
