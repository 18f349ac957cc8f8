"""A ``camlens evaluate`` output folder as the web app shows it: the summary from
``metrics.json``, and the rows of ``per_image.csv`` gathered per image (every method's scores
and boxes side by side), filtered, sorted by any score and paged.

Rows are read once per run and kept while ``per_image.csv`` is unchanged (its size and
modification time), for the few runs opened last.
"""

from __future__ import annotations

import csv
import json
import math
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlens.errors import CamlensError
from camlens.evaluation.report import COLUMNS

SCORES: dict[str, str] = {
    "iou": "up", "pointing_hit": "up", "average_drop": "down", "increase": "up", "deletion_auc": "down",
    "insertion_auc": "up",
}
"""The per-image scores of ``per_image.csv`` (per method), and whether higher or lower is better."""
SORTS = ("", "image", "probability", *SCORES)
"""What rows sort by: file order, image path, predicted-class probability, or a method's score."""
SHOWS = ("all", "correct", "wrong")
PICTURES = ("curves.png", "examples.png")
MAX_METRICS = 64 * 2**20
MAX_ROWS = 256 * 2**20
"""The largest ``metrics.json`` and ``per_image.csv`` this server reads, in bytes."""


class RunError(CamlensError):
    """A folder that is not a readable ``camlens evaluate`` output."""


@dataclass
class ImageRow:
    """One image of a run: its classes, size, true boxes, and per method its scores and the box
    found at the localization threshold (boxes as ``[xmin, ymin, xmax, ymax]`` in the pixels of
    the image as it was read, ``width`` x ``height``)."""

    image: str
    label: str
    predicted: str
    probability: float | None
    width: int | None = None
    height: int | None = None
    true_boxes: list[list[float]] = field(default_factory=list)
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    boxes: dict[str, list[float] | None] = field(default_factory=dict)

    @property
    def correct(self) -> bool | None:
        """Whether the top class is the true one (None when the image has no class)."""
        return None if not self.label else self.label == self.predicted

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "label": self.label, "predicted": self.predicted, "probability": self.probability,
                "correct": self.correct, "width": self.width, "height": self.height, "true_boxes": self.true_boxes,
                "scores": self.scores, "boxes": self.boxes}


def summary(folder: Path, name: str) -> dict[str, Any]:
    """The run's summary: what ``metrics.json`` says, the title of ``report.md``, the table's
    columns (key, heading, higher or lower better) and which pictures exist."""
    metrics = _metrics(folder, name)
    scores = metrics["scores"]
    columns = [{"key": k, "heading": h, "better": b} for k, h, _, b in COLUMNS if any(k in s for s in scores.values())]
    title = ""
    report = folder / "report.md"
    if report.is_file() and report.stat().st_size < MAX_METRICS:
        first = report.read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        title = first.removeprefix("# ").strip() if first.startswith("# ") else ""
    keys = ("methods", "layer", "images", "localized_images", "classification_accuracy", "scores", "protocol", "failed")
    return {"path": name, "title": title or name, **{k: metrics.get(k) for k in keys},
            "source": metrics.get("source") or {}, "columns": columns,
            "scores_per_image": [{"key": k, "better": b} for k, b in SCORES.items()],
            "pictures": [p for p in PICTURES if (folder / p).is_file()]}


def source_of(folder: Path, name: str) -> dict[str, Any]:
    """What the run evaluated (``metrics.json``'s ``source``; empty for runs that predate it)."""
    return _metrics(folder, name).get("source") or {}


def _metrics(folder: Path, name: str) -> dict[str, Any]:
    file = folder / "metrics.json"
    if not file.is_file():
        raise RunError(f"{name}: not a camlens evaluate folder (no metrics.json)")
    if file.stat().st_size > MAX_METRICS:
        raise RunError(f"{name}/metrics.json: over the {MAX_METRICS} bytes this server reads")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{name}/metrics.json: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not (isinstance(metrics, dict) and isinstance(metrics.get("methods"), list)
            and isinstance(metrics.get("scores"), dict)):
        raise RunError(f"{name}/metrics.json: not written by camlens evaluate (no methods and scores)")
    return metrics


class Runs:
    """The per-image rows of the ``keep`` runs opened last, read again when their file changes;
    safe to use from several threads."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._rows: OrderedDict[Path, tuple[tuple[int, int], list[ImageRow]]] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, folder: Path, name: str) -> list[ImageRow]:
        file = folder / "per_image.csv"
        try:
            info = file.stat()
            if not stat.S_ISREG(info.st_mode):
                raise OSError
        except OSError:
            raise RunError(f"{name}: not a camlens evaluate folder (no per_image.csv)") from None
        if info.st_size > MAX_ROWS:
            raise RunError(f"{name}/per_image.csv: {info.st_size} bytes, over the {MAX_ROWS} this server reads")
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._rows.get(file)
            if cached is not None and cached[0] == stamp:
                self._rows.move_to_end(file)
                return cached[1]
        rows = read_rows(file, name)
        with self._lock:
            self._rows[file] = (stamp, rows)
            self._rows.move_to_end(file)
            while len(self._rows) > self.keep:
                self._rows.popitem(last=False)
        return rows


def read_rows(file: Path, name: str) -> list[ImageRow]:
    """``per_image.csv`` gathered per image, in file order (files written before the ``box``,
    ``true_boxes``, ``width`` and ``height`` columns existed have no boxes)."""
    by_image: dict[str, ImageRow] = {}
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"image", "label", "predicted", "probability", "method"} - set(reader.fieldnames or ())
            if missing:
                raise RunError(f"{name}/per_image.csv: no {', '.join(sorted(missing))} column")
            for record in reader:
                image, method = record["image"] or "", record["method"] or ""
                row = by_image.get(image)
                if row is None:
                    row = by_image[image] = ImageRow(
                        image, record["label"] or "", record["predicted"] or "", _number(record["probability"]),
                        _integer(record.get("width")), _integer(record.get("height")), _boxes(record.get("true_boxes")))
                row.scores[method] = {k: _number(record.get(k)) for k in SCORES}
                found = _boxes(record.get("box"))
                row.boxes[method] = found[0] if found else None
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        where = f" line {reader.line_num}" if "reader" in locals() else ""
        raise RunError(f"{name}/per_image.csv{where}: {str(exc).splitlines()[0] or type(exc).__name__}") from None
    return list(by_image.values())


def _number(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    value = float(text)
    return None if math.isnan(value) else value


def _integer(text: str | None) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


def _boxes(text: str | None) -> list[list[float]]:
    if not text or not text.strip():
        return []
    boxes = [[float(v) for v in part.split()] for part in text.split(";")]
    if any(len(b) != 4 for b in boxes):
        raise ValueError(f"a box is not 'xmin ymin xmax ymax': {text[:60]!r}")
    return boxes


def page(rows: list[ImageRow], *, sort: str = "", method: str | None = None, descending: bool = False,
         show: str = "all", query: str = "", offset: int = 0, limit: int = 50) -> tuple[int, list[ImageRow]]:
    """The rows to show and how many there are in all: those that ``show`` (all, correct or wrong
    top-1) and whose image path, class or predicted class contains ``query`` (any case), sorted by
    ``sort`` (:data:`SORTS`; a score is ``method``'s), rows without that value last either way."""
    if sort not in SORTS:
        raise RunError(f"sort: {sort!r} is not one of {', '.join(s for s in SORTS if s)}")
    if show not in SHOWS:
        raise RunError(f"show: {show!r} is not one of {', '.join(SHOWS)}")
    needle = query.strip().lower()
    chosen = [r for r in rows
              if (show == "all" or r.correct is (show == "correct"))
              and (not needle or any(needle in text.lower() for text in (r.image, r.label, r.predicted)))]
    if sort in SCORES:
        if not method or (rows and method not in rows[0].scores):
            names = ", ".join(rows[0].scores) if rows else "none"
            raise RunError(f"method: {method!r} is not a method of this run ({names})")
        value: Any = lambda r: r.scores.get(method, {}).get(sort)  # noqa: E731
    elif sort == "probability":
        value = lambda r: r.probability  # noqa: E731
    elif sort == "image":
        value = lambda r: r.image  # noqa: E731
    else:
        value = None
    if value is not None:
        valued = sorted((r for r in chosen if value(r) is not None), key=value, reverse=descending)
        chosen = valued + [r for r in chosen if value(r) is None]
    return len(chosen), chosen[offset : offset + limit]
