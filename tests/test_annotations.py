"""Ground-truth annotations: VOC XML, COCO JSON and CSV, their conventions, lookup and error lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camlens.errors import CamlensError
from camlens.evaluation.annotations import Annotations, read_annotations
from camlens.evaluation.boxes import Box


def _voc(filename: str, objects: str, size: str = "<size><width>500</width><height>375</height><depth>3</depth></size>") -> str:
    return f"<annotation><folder>x</folder><filename>{filename}</filename>{size}{objects}</annotation>"


def _obj(name: str, xmin: object, ymin: object, xmax: object, ymax: object) -> str:
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><bndbox>"
        f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


# --- Pascal VOC ----------------------------------------------------------------------------------


def test_voc_file_converts_one_based_inclusive_to_pixel_edges(tmp_path: Path) -> None:
    xml = tmp_path / "n01440764_18.xml"
    xml.write_text(_voc("n01440764_18.JPEG", _obj("tench", 1, 1, 1, 1) + _obj("tench", 48, 10.5, 200, 375)))
    ann = read_annotations(xml)
    assert ann.boxes == {
        "n01440764_18.JPEG": [Box(0.0, 0.0, 1.0, 1.0, "tench"), Box(47.0, 9.5, 200.0, 375.0, "tench")],
    }
    assert ann.boxes["n01440764_18.JPEG"][0].area == 1.0  # VOC's single pixel (1, 1) is one pixel
    assert ann.sizes == {"n01440764_18.JPEG": (500, 375)}
    assert ann.errors == []


def test_voc_folder_reads_every_file_and_reports_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    good = tmp_path / "a.xml"
    good.write_text(_voc("a.jpg", _obj("cat", 11, 21, 30, 40) + _obj("dog", 1, 2, 3, 4)))
    nested = tmp_path / "sub" / "b.xml"
    nested.write_text(_voc("", _obj("cat", 5, 6, 7, 8), size=""))  # no filename: the XML's stem; no size
    broken = tmp_path / "c.xml"
    broken.write_text("<annotation><filename>c.jpg</filename>")
    wrong_root = tmp_path / "d.xml"
    wrong_root.write_text("<html><body/></html>")
    bad_objects = tmp_path / "e.xml"
    bad_objects.write_text(
        _voc(
            "dir\\e.jpg",
            _obj("ok", 1, 1, 10, 10)
            + "<object><name>nobox</name></object>"
            + "<object><name>short</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object>"
            + _obj("text", "abc", 1, 5, 5)
            + _obj("inverted", 10, 1, 9, 5)
            + _obj("nan", 1, 1, "nan", 5),
            size="<size><width>0</width><height>10</height></size>",
        )
    )
    ann = read_annotations(tmp_path)
    assert ann.boxes == {
        "a.jpg": [Box(10.0, 20.0, 30.0, 40.0, "cat"), Box(0.0, 1.0, 3.0, 4.0, "dog")],
        "b": [Box(4.0, 5.0, 7.0, 8.0, "cat")],
        "dir/e.jpg": [Box(0.0, 0.0, 10.0, 10.0, "ok")],
    }
    assert ann.sizes == {"a.jpg": (500, 375)}
    assert len(ann.errors) == 8
    assert ann.errors[0].startswith(f"{broken}: not readable VOC XML: ")
    assert ann.errors[1] == f"{wrong_root}: root element is <html>, expected <annotation>"
    assert ann.errors[2:] == [
        f"{bad_objects}: <size>: width 0 is not a positive whole number",
        f"{bad_objects}:object 2: no <bndbox>",
        f"{bad_objects}:object 3: <bndbox> has no <ymax>",
        f"{bad_objects}:object 4: <xmin> is not a number: 'abc'",
        f"{bad_objects}:object 5: empty box: <bndbox> (10, 1, 9, 5) has a maximum below its minimum",
        f"{bad_objects}:object 6: <xmax> is not a number: 'nan'",
    ]


def test_voc_image_without_valid_objects_is_still_a_key(tmp_path: Path) -> None:
    xml = tmp_path / "x.xml"
    xml.write_text(_voc("x.png", _obj("cat", 5, 5, 1, 1)))
    ann = read_annotations(xml, fmt="voc")
    assert ann.boxes == {"x.png": []}
    assert ann.for_image(Path("x.png")) == []
    assert ann.errors == [f"{xml}:object 1: empty box: <bndbox> (5, 5, 1, 1) has a maximum below its minimum"]


def test_voc_single_unparseable_file_or_empty_folder_raises(tmp_path: Path) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text("<annotation>")
    with pytest.raises(CamlensError, match=r"bad\.xml: not readable VOC XML"):
        read_annotations(xml)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CamlensError, match=r"empty: no \.xml annotation files"):
        read_annotations(empty)


# --- COCO ----------------------------------------------------------------------------------------


def _coco(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_converts_xywh_and_names_categories(tmp_path: Path) -> None:
    path = _coco(
        tmp_path,
        {
            "images": [
                {"id": 1, "file_name": "000001.jpg", "width": 640, "height": 480},
                {"id": "two", "file_name": "val\\000002.jpg"},
                {"id": 3, "file_name": "000003.jpg", "width": 10, "height": 10},
            ],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 18, "bbox": [10.5, 20.0, 30.0, 40.25], "iscrowd": 0},
                {"id": 11, "image_id": 1, "category_id": 17, "bbox": [0, 0, 640, 480], "iscrowd": 1},
                {"id": 12, "image_id": "two", "bbox": [1, 2, 3, 4]},
                {"id": 13, "image_id": 1, "category_id": 18, "segmentation": [[0, 0, 1, 1, 1, 0]]},
            ],
            "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
        },
    )
    ann = read_annotations(path)
    assert ann.boxes == {
        "000001.jpg": [Box(10.5, 20.0, 40.5, 60.25, "dog"), Box(0.0, 0.0, 640.0, 480.0, "cat")],
        "val/000002.jpg": [Box(1.0, 2.0, 4.0, 6.0, None)],
        "000003.jpg": [],
    }
    assert ann.sizes == {"000001.jpg": (640, 480), "000003.jpg": (10, 10)}
    assert ann.errors == []


def test_coco_malformed_records_are_reported_and_skipped(tmp_path: Path) -> None:
    path = _coco(
        tmp_path,
        {
            "images": [
                {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
                {"file_name": "noid.jpg"},
                {"id": 2, "width": 10, "height": 10},
                {"id": 1, "file_name": "again.jpg"},
                {"id": 3, "file_name": "c.jpg", "width": -5, "height": 10},
            ],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
                {"id": 2, "image_id": 99, "category_id": 1, "bbox": [5, 5, 10, 10]},
                {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, -1, 10]},
                {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, "x", 1, 10]},
                {"id": 5, "image_id": 1, "category_id": 7, "bbox": [5, 5, 1, 1]},
                {"id": 6, "image_id": 1, "category_id": 1, "bbox": [5, 5, 1]},
                "junk",
                {"image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 3]},
                {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
            ],
            "categories": [{"id": 1, "name": "bird"}, {"name": "noid"}],
        },
    )
    ann = read_annotations(path)
    assert ann.boxes == {"a.jpg": [Box(5.0, 5.0, 15.0, 15.0, "bird"), Box(1.0, 2.0, 4.0, 6.0, "bird")]}
    assert ann.sizes == {"a.jpg": (100, 50)}
    assert ann.errors == [
        f"{path}:categories[1]: needs an id and a name",
        f"{path}:images[1]: needs an id (a number or a string)",
        f"{path}:image 2: no image name (got None)",
        f"{path}:image 1: duplicate image id",
        f"{path}:image 3: width -5 is not a positive whole number",
        f"{path}:annotation 2: unknown image_id 99",
        f"{path}:annotation 3: empty box: bbox width -1 and height 10 must be positive",
        f"{path}:annotation 4: bbox y is not a number: 'x'",
        f"{path}:annotation 5: unknown category_id 7",
        f"{path}:annotation 6: bbox must be [x, y, w, h], got [5, 5, 1]",
        f"{path}:annotations[6]: not an object",
        f"{path}:annotations[7]: empty box: bbox width 0 and height 3 must be positive",
    ]


def test_coco_unreadable_file_raises_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(CamlensError, match=r"bad\.json: not readable COCO JSON"):
        read_annotations(bad)
    no_images = _coco(tmp_path, {"annotations": []})
    with pytest.raises(CamlensError, match=r"instances\.json: COCO JSON needs an 'images' list"):
        read_annotations(no_images)
    listed = _coco(tmp_path, [1, 2])
    with pytest.raises(CamlensError, match=r"instances\.json: expected a COCO JSON object, got list"):
        read_annotations(listed)


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_rows_keep_pixel_edges_labels_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(
        "\ufeffImage, xmin,ymin,xmax,ymax,label,width,height\n"
        "train/3/00012.png,0,0,2,1,three,28,28\n"
        "train/3/00012.png,1.5,2.5,10,12,,28,28\n"
        "\n"
        "train\\7\\00003.png,3,4,5,6,seven,,\n",
        encoding="utf-8",
    )
    ann = read_annotations(path)
    assert ann.boxes == {
        "train/3/00012.png": [Box(0.0, 0.0, 2.0, 1.0, "three"), Box(1.5, 2.5, 10.0, 12.0, None)],
        "train/7/00003.png": [Box(3.0, 4.0, 5.0, 6.0, "seven")],
    }
    assert ann.sizes == {"train/3/00012.png": (28, 28)}
    assert ann.errors == []


def test_csv_malformed_rows_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(
        "image,xmin,ymin,xmax,ymax,width,height\n"  # 1
        "a.png,1,1,4,4,10,10\n"  # 2
        "a.png,1,one,4,4,10,10\n"  # 3
        "a.png,4,1,4,4,10,10\n"  # 4
        "a.png,1,1,4\n"  # 5
        ",1,1,4,4,10,10\n"  # 6
        '"b\n.png",0,0,1,1,5,5\n'  # 7-8: one record over two lines
        "a.png,0,0,2,2,12,10\n"  # 9: box kept, its size contradicts line 2
        "c.png,0,0,2,2,1.5,3\n"  # 10: box kept, size dropped
        "c.png,0,0,3,1," + "9" * 200_000 + ",3\n"  # 11: a field beyond csv's limit
        "c.png,0,0,3,3,,\n"  # 12
    )
    ann = read_annotations(path)
    assert ann.boxes == {
        "a.png": [Box(1.0, 1.0, 4.0, 4.0), Box(0.0, 0.0, 2.0, 2.0)],
        "b\n.png": [Box(0.0, 0.0, 1.0, 1.0)],
        "c.png": [Box(0.0, 0.0, 2.0, 2.0), Box(0.0, 0.0, 3.0, 3.0)],
    }
    assert ann.sizes == {"a.png": (10, 10), "b\n.png": (5, 5)}
    assert len(ann.errors) == 7
    assert ann.errors[:6] == [
        f"{path}:3: ymin is not a number: 'one'",
        f"{path}:4: empty box (4, 1, 4, 4): a maximum is not above its minimum",
        f"{path}:5: 4 fields, the header has 7",
        f"{path}:6: no image name (got '')",
        f"{path}:9: size 12x10 differs from 10x10 stated before for a.png",
        f"{path}:10: width 1.5 is not a positive whole number",
    ]
    assert ann.errors[6].startswith(f"{path}:11: field larger than field limit")


def test_csv_without_required_columns_raises(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("file,xmin,ymin,x2,ymax\na.png,0,0,1,1\n")
    with pytest.raises(CamlensError, match=r"boxes\.csv: the CSV header lacks image, xmax"):
        read_annotations(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CamlensError, match=r"empty\.csv: the CSV header lacks image, xmin, ymin, xmax, ymax"):
        read_annotations(empty)


# --- lookup --------------------------------------------------------------------------------------


def test_lookup_by_relative_path_name_and_stem(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("image,xmin,ymin,xmax,ymax\ntrain/3/00012.png,0,0,1,1\n00013.png,0,0,2,2\n00014,0,0,3,3\n")
    ann = read_annotations(path)
    root = tmp_path / "data"
    assert ann.for_image(root / "train/3/00012.png", root) == [Box(0.0, 0.0, 1.0, 1.0)]
    assert ann.for_image("train/3/00012.png") == [Box(0.0, 0.0, 1.0, 1.0)]
    assert ann.for_image(root / "val/00013.png", root) == [Box(0.0, 0.0, 2.0, 2.0)]  # by name
    assert ann.for_image(root / "val/00014.png", root) == [Box(0.0, 0.0, 3.0, 3.0)]  # by stem
    assert ann.for_image(Path("/elsewhere/00012.jpg"), root) == [Box(0.0, 0.0, 1.0, 1.0)]  # not under root: stem
    assert ann.for_image(root / "00099.png", root) is None


def test_ambiguous_name_or_stem_matches_only_by_relative_path() -> None:
    a, b, c, d = Box(0, 0, 1, 1), Box(0, 0, 2, 2), Box(0, 0, 3, 3), Box(0, 0, 4, 4)
    ann = Annotations({"train/1/x.png": [a], "train/2/x.png": [b], "y.png": [c], "y.jpg": [d]})
    root = Path("/data")
    assert ann.for_image(root / "train/1/x.png", root) == [a]
    assert ann.for_image(root / "train/2/x.png", root) == [b]
    assert ann.for_image(root / "val/x.png", root) is None  # name x.png is shared
    assert ann.for_image(root / "val/x.bmp", root) is None  # stem x is shared
    assert ann.for_image(root / "val/y.jpg", root) == [d]  # name is unique even though the stem is not
    assert ann.for_image(root / "val/y.bmp", root) is None


def test_voc_filename_is_found_by_stem_from_another_suffix(tmp_path: Path) -> None:
    (tmp_path / "00012.xml").write_text(_voc("00012.jpg", _obj("cat", 1, 1, 4, 4)))
    ann = read_annotations(tmp_path)
    assert ann.for_image(Path("images/00012.png"), Path("images")) == [Box(0.0, 0.0, 4.0, 4.0, "cat")]


# --- sources and formats -------------------------------------------------------------------------


def test_format_can_be_forced_whatever_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "boxes.txt"
    path.write_text("image,xmin,ymin,xmax,ymax\na.png,0,0,1,1\n")
    assert read_annotations(path, fmt="csv").boxes == {"a.png": [Box(0.0, 0.0, 1.0, 1.0)]}
    with pytest.raises(CamlensError, match=r"boxes\.txt: unknown annotation suffix '\.txt'"):
        read_annotations(path)


def test_missing_source_unknown_format_and_folder_for_a_file_format_raise(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CamlensError, match=r"nope\.json: no such annotation file or folder"):
        read_annotations(missing)
    path = tmp_path / "boxes.csv"
    path.write_text("image,xmin,ymin,xmax,ymax\n")
    with pytest.raises(CamlensError, match=r"boxes\.csv: unknown annotation format 'yolo'"):
        read_annotations(path, fmt="yolo")
    with pytest.raises(CamlensError, match=r"is a folder, expected a COCO file"):
        read_annotations(tmp_path, fmt="coco")
