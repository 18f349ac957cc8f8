"""How ``camlens evaluate`` finds each image's class and boxes, and rescales boxes."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from camlens.evaluation.annotations import read_annotations
from camlens.evaluation.boxes import Box
from camlens.evaluation.run import Item, dataset
from camlens.lens import Lens
from tests.conftest import TinyGapNet


def test_classes_from_boxes_in_a_flat_folder_and_unknown_classes(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("ant\nbee\ncat\n")
    lens = Lens(TinyGapNet(), labels=tmp_path / "labels.txt")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c", "d"):
        Image.new("RGB", (40, 20)).save(images / f"{name}.png")
    (tmp_path / "boxes.csv").write_text(
        "image,label,xmin,ymin,xmax,ymax,width,height\n"
        "a.png,bee,1,2,11,12,80,40\n"    # stated size 80x40: boxes halve on the 40x20 file
        "a.png,cat,5,5,9,9,80,40\n"
        "b.png,Cat,0,0,4,4,,\n"          # names match as Labels.index does: any case
        "c.png,wasp,0,0,4,4,,\n"         # not a class of the model
    )
    items, problems = dataset(images, lens, read_annotations(tmp_path / "boxes.csv"))
    by_name = {it.path.name: it for it in items}
    assert sorted(by_name) == ["a.png", "b.png", "d.png"]
    assert len(problems) == 1 and "c.png" in problems[0] and "wasp" in problems[0]
    a = by_name["a.png"]
    assert a.label == 1 and a.boxes == [Box(1, 2, 11, 12, "bee")]  # only the boxes of its own class
    assert a.boxes_on(Image.new("RGB", (40, 20))) == [Box(0.5, 1, 5.5, 6, "bee")]
    assert by_name["b.png"].label == 2
    assert by_name["d.png"].label is None and by_name["d.png"].boxes is None


def test_boxes_keep_their_size_when_the_image_matches() -> None:
    item = Item(Path("x.png"), 0, [Box(10, 10, 20, 20)], size=(100, 50))
    assert item.boxes_on(Image.new("RGB", (100, 50))) == [Box(10, 10, 20, 20)]
    assert item.boxes_on(Image.new("RGB", (200, 100))) == [Box(20, 20, 40, 40)]
