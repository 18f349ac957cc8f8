"""Ground-truth boxes for a localization benchmark, read from Pascal VOC XML, COCO JSON or CSV.

Every box is returned in camlens' convention (see :mod:`camlens.evaluation.boxes`): pixel edges,
0-based, exclusive maxima. Coordinates may be fractional and are not clipped to the image.

* **Pascal VOC XML** (ImageNet's format), one ``<annotation>`` per file, a single ``.xml`` file or
  a folder searched recursively for ``*.xml``. VOC's ``<bndbox>`` holds 1-based, inclusive pixel
  indices, so a box is converted as ``(xmin - 1, ymin - 1, xmax, ymax)``: VOC's ``xmin = xmax = 1``
  is the single first column, camlens' ``(0, 1)``. Float values (found in ImageNet and VOC) are
  accepted and converted the same way. The label is the object's ``<name>``.
* **COCO JSON**, one file with ``images`` (``id``, ``file_name``, optional ``width``/``height``),
  ``annotations`` (``image_id``, ``bbox = [x, y, w, h]``, optional ``category_id``) and optional
  ``categories`` (``id``, ``name``). A box is ``(x, y, x + w, y + h)``, labelled with its category's
  name (``None`` when the annotation has no ``category_id``). Crowd annotations (``iscrowd = 1``) are
  kept: their box still bounds real objects of the class. Annotations without a ``bbox`` are ignored.
* **CSV** with a header naming at least ``image,xmin,ymin,xmax,ymax`` (any order and case), and
  optionally ``label`` and ``width,height``; one box per row, several rows per image. Coordinates
  are already in camlens' convention.

An image's key is its path as the file writes it (VOC ``<filename>``, or the XML file's stem when
that is empty; COCO ``file_name``; the CSV ``image`` column), with backslashes turned into ``/``.
Every image a source names is a key, even when none of its boxes could be read (an empty list).

A malformed record (or one bad file in a VOC folder) does not stop the reading: it is skipped and
described by one line in :attr:`Annotations.errors`. Only a missing source, an unknown format, or a
file that cannot be read at all when it is the whole source raises :class:`~camlens.errors.CamlensError`.
"""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

from camlens.errors import CamlensError
from camlens.evaluation.boxes import Box

__all__ = ["FORMATS", "Annotations", "read_annotations"]

FORMATS = ("auto", "voc", "coco", "csv")
"""The values of ``read_annotations``'s ``fmt``."""

_CSV_REQUIRED = ("image", "xmin", "ymin", "xmax", "ymax")


@dataclass
class Annotations:
    """Ground-truth boxes per image, with what could not be read.

    Attributes:
        boxes: image key -> its boxes, in pixel-edge coordinates. :meth:`for_image` indexes the
            keys present when the object is created.
        sizes: image key -> ``(width, height)``, for the images whose file states it.
        root: the folder the keys are relative to: the annotation file's folder, or the VOC folder.
        errors: one line per malformed file or record, ``"<file>[:<where>]: <cause>"``, where
            ``<where>`` is a CSV record's first line number, a VOC ``object <n>`` (from 1), or a
            COCO ``image <id>``, ``annotation <id>``, or ``images[<i>]``/``annotations[<i>]``/
            ``categories[<i>]`` (from 0) for an entry without a usable id.
    """

    boxes: dict[str, list[Box]]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    root: Path | None = None
    _by_name: dict[str, list[str]] = field(init=False, repr=False, compare=False)
    _by_stem: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {}
        self._by_stem = {}
        for key in self.boxes:
            path = PurePosixPath(key)
            self._by_name.setdefault(path.name, []).append(key)
            self._by_stem.setdefault(path.stem, []).append(key)

    def for_image(self, path: str | Path, root: str | Path | None = None) -> list[Box] | None:
        """The boxes of the image at ``path``, or ``None`` when it is not annotated (see :meth:`key_for`)."""
        key = self.key_for(path, root)
        return None if key is None else self.boxes[key]

    def key_for(self, path: str | Path, root: str | Path | None = None) -> str | None:
        """The key under which the image at ``path`` is annotated, or ``None``.

        Keys are tried in order: ``path`` relative to ``root`` (as given when ``root`` is None) in
        posix form, then its file name, then its stem, so ``train/3/00012.png`` finds a key written
        ``train/3/00012.png``, ``00012.png`` or ``00012``. A name or stem shared by several keys is
        ambiguous and matches nothing: only the relative path can find such an image.
        """
        path = Path(path)
        if root is None:
            relative: Path | None = path
        else:
            try:
                relative = path.relative_to(root)
            except ValueError:
                relative = None
        if relative is not None and relative.as_posix() in self.boxes:
            return relative.as_posix()
        for index, part in ((self._by_name, path.name), (self._by_stem, path.stem)):
            keys = index.get(part)
            if keys is not None:
                return keys[0] if len(keys) == 1 else None
        return None


def read_annotations(source: str | Path, fmt: str = "auto") -> Annotations:
    """Read the ground-truth boxes of ``source``, a VOC XML file or folder, a COCO JSON or a CSV file.

    Args:
        source: the file, or for VOC a folder of ``.xml`` files (searched recursively).
        fmt: one of :data:`FORMATS`; ``"auto"`` picks VOC for a folder or ``.xml``, COCO for
            ``.json`` and CSV for ``.csv``.

    Raises:
        CamlensError: ``source`` does not exist, its format is unknown, or it is a single file that
            cannot be read at all (not XML, not JSON, a CSV without the required header...).
    """
    path = Path(source)
    if fmt not in FORMATS:
        raise CamlensError(f"{path}: unknown annotation format {fmt!r}, expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise CamlensError(f"{path}: no such annotation file or folder")
    if fmt == "auto":
        fmt = _guess_format(path)
    if fmt != "voc" and path.is_dir():
        raise CamlensError(f"{path}: is a folder, expected a {fmt.upper()} file")
    builder = _Builder()
    if fmt == "voc":
        _read_voc(path, builder)
    elif fmt == "coco":
        _read_coco(path, builder)
    else:
        _read_csv(path, builder)
    return Annotations(builder.boxes, builder.sizes, builder.errors, path if path.is_dir() else path.parent)


def _guess_format(path: Path) -> str:
    if path.is_dir():
        return "voc"
    formats = {".xml": "voc", ".json": "coco", ".csv": "csv"}
    suffix = path.suffix.lower()
    if suffix not in formats:
        raise CamlensError(f"{path}: unknown annotation suffix {suffix!r}; pass fmt='voc', 'coco' or 'csv'")
    return formats[suffix]


class _Builder:
    """Collects boxes, sizes and error lines while a source is read."""

    def __init__(self) -> None:
        self.boxes: dict[str, list[Box]] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self.errors: list[str] = []

    def add_image(self, key: str) -> None:
        self.boxes.setdefault(key, [])

    def add_box(self, key: str, box: Box) -> None:
        self.boxes.setdefault(key, []).append(box)

    def set_size(self, key: str, size: tuple[int, int], where: str) -> None:
        """Record an image's size; one that contradicts an earlier one is an error and is dropped."""
        known = self.sizes.setdefault(key, size)
        if known != size:
            self.errors.append(f"{where}: size {size[0]}x{size[1]} differs from {known[0]}x{known[1]} stated before for {key}")


def _key(value: object) -> str:
    """An image key from a file's text; ValueError if there is none."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"no image name (got {value!r})")
    return value.strip().replace("\\", "/")


def _number(name: str, value: object) -> float:
    """A finite number from a JSON number or a text; ValueError naming ``name`` otherwise."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{name} is not a number: {value!r}")
    return number


def _size(width: object, height: object) -> tuple[int, int]:
    """A ``(width, height)`` of positive whole numbers; ValueError otherwise."""
    size = (_number("width", width), _number("height", height))
    for name, value in zip(("width", "height"), size, strict=True):
        if value <= 0 or not value.is_integer():
            raise ValueError(f"{name} {value:g} is not a positive whole number")
    return int(size[0]), int(size[1])


def _read_voc(path: Path, builder: _Builder) -> None:
    if path.is_file():
        _read_voc_file(path, builder)
        return
    files = sorted(path.rglob("*.xml"))
    if not files:
        raise CamlensError(f"{path}: no .xml annotation files in this folder")
    for file in files:
        try:
            _read_voc_file(file, builder)
        except CamlensError as exc:
            builder.errors.append(str(exc))


def _read_voc_file(path: Path, builder: _Builder) -> None:
    """Read one VOC file into ``builder``; CamlensError if the file as a whole cannot be read."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise CamlensError(f"{path}: not readable VOC XML: {exc}") from exc
    if root.tag != "annotation":
        raise CamlensError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    filename = root.findtext("filename")
    key = _key(filename) if filename and filename.strip() else path.stem
    builder.add_image(key)
    size = root.find("size")
    if size is not None:
        try:
            builder.set_size(key, _size(size.findtext("width"), size.findtext("height")), str(path))
        except ValueError as exc:
            builder.errors.append(f"{path}: <size>: {exc}")
    for index, obj in enumerate(root.findall("object"), start=1):
        try:
            builder.add_box(key, _voc_box(obj))
        except ValueError as exc:
            builder.errors.append(f"{path}:object {index}: {exc}")


def _voc_box(obj: ET.Element) -> Box:
    """The box of a VOC ``<object>``, converted from 1-based inclusive indices to pixel edges."""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise ValueError("no <bndbox>")
    values = []
    for name in ("xmin", "ymin", "xmax", "ymax"):
        text = bndbox.findtext(name)
        if text is None:
            raise ValueError(f"<bndbox> has no <{name}>")
        values.append(_number(f"<{name}>", text))
    xmin, ymin, xmax, ymax = values
    if xmax < xmin or ymax < ymin:
        raise ValueError(f"empty box: <bndbox> ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has a maximum below its minimum")
    label = (obj.findtext("name") or "").strip() or None
    return Box(xmin - 1.0, ymin - 1.0, xmax, ymax, label)


def _read_coco(path: Path, builder: _Builder) -> None:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise CamlensError(f"{path}: not readable COCO JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CamlensError(f"{path}: expected a COCO JSON object, got {type(data).__name__}")
    for name in ("images", "annotations"):
        if not isinstance(data.get(name), list):
            raise CamlensError(f"{path}: COCO JSON needs an {name!r} list")
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise CamlensError(f"{path}: COCO 'categories' is not a list")

    names: dict[int | str, str] = {}
    for index, category in enumerate(categories):
        if isinstance(category, dict) and _is_id(category.get("id")) and isinstance(category.get("name"), str):
            names[category["id"]] = category["name"]
        else:
            builder.errors.append(f"{path}:categories[{index}]: needs an id and a name")

    keys: dict[int | str, str] = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_id(image.get("id")):
            builder.errors.append(f"{path}:images[{index}]: needs an id (a number or a string)")
            continue
        where = f"{path}:image {image['id']}"
        try:
            if image["id"] in keys:
                raise ValueError("duplicate image id")
            key = _key(image.get("file_name"))
            width, height = image.get("width"), image.get("height")
            size = None if width is None and height is None else _size(width, height)
        except ValueError as exc:
            builder.errors.append(f"{where}: {exc}")
            continue
        keys[image["id"]] = key
        builder.add_image(key)
        if size is not None:
            builder.set_size(key, size, where)

    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            builder.errors.append(f"{path}:annotations[{index}]: not an object")
            continue
        where = f"{path}:annotation {ann['id']}" if _is_id(ann.get("id")) else f"{path}:annotations[{index}]"
        bbox = ann.get("bbox")
        if bbox is None or bbox == []:
            continue
        try:
            image_id = ann.get("image_id")
            if not _is_id(image_id) or image_id not in keys:
                raise ValueError(f"unknown image_id {image_id!r}")
            category = ann.get("category_id")
            if category is not None and (not _is_id(category) or category not in names):
                raise ValueError(f"unknown category_id {category!r}")
            builder.add_box(keys[image_id], _coco_box(bbox, None if category is None else names[category]))
        except ValueError as exc:
            builder.errors.append(f"{where}: {exc}")


def _is_id(value: object) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _coco_box(bbox: object, label: str | None) -> Box:
    """The box of a COCO ``[x, y, w, h]``."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (_number(name, value) for name, value in zip(("bbox x", "bbox y", "bbox w", "bbox h"), bbox, strict=True))
    if w <= 0 or h <= 0:
        raise ValueError(f"empty box: bbox width {w:g} and height {h:g} must be positive")
    return Box(x, y, x + w, y + h, label)


def _read_csv(path: Path, builder: _Builder) -> None:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            _read_csv_rows(path, handle, builder)
    except (OSError, UnicodeDecodeError) as exc:
        raise CamlensError(f"{path}: not readable CSV text: {exc}") from exc


def _read_csv_rows(path: Path, handle: TextIO, builder: _Builder) -> None:
    rows = csv.reader(handle)
    header = next(rows, None)
    columns = [name.strip().lower() for name in header or []]
    missing = [name for name in _CSV_REQUIRED if name not in columns]
    if missing:
        raise CamlensError(f"{path}: the CSV header lacks {', '.join(missing)} (it needs {','.join(_CSV_REQUIRED)})")
    has_size = "width" in columns and "height" in columns
    while True:
        line = rows.line_num + 1  # where the next record starts, even if it spans several lines
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            builder.errors.append(f"{path}:{line}: {exc}")
            continue
        if not row:
            continue
        try:
            if len(row) != len(columns):
                raise ValueError(f"{len(row)} fields, the header has {len(columns)}")
            record = dict(zip(columns, row, strict=True))
            key = _key(record["image"])
            xmin, ymin, xmax, ymax = (_number(name, record[name]) for name in _CSV_REQUIRED[1:])
            if xmax <= xmin or ymax <= ymin:
                raise ValueError(f"empty box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}): a maximum is not above its minimum")
        except ValueError as exc:
            builder.errors.append(f"{path}:{line}: {exc}")
            continue
        builder.add_box(key, Box(xmin, ymin, xmax, ymax, record.get("label", "").strip() or None))
        if has_size and (record["width"].strip() or record["height"].strip()):
            try:
                builder.set_size(key, _size(record["width"], record["height"]), f"{path}:{line}")
            except ValueError as exc:
                builder.errors.append(f"{path}:{line}: {exc}")
