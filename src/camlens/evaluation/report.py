"""Writing an evaluation: metrics as CSV and JSON, curves and examples as PNG, a Markdown report."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
from PIL import Image

from camlens import render
from camlens.errors import CamlensError
from camlens.evaluation.run import EvalResult
from camlens.imageio import image_writer, write_group

FILES = ("metrics.csv", "metrics.json", "per_image.csv", "curves.png", "examples.png", "report.md")

COLUMNS = (
    ("top1_loc", "Top-1 Loc", "Top1", "up"),
    ("gt_known_loc", "GT-known Loc", "GTLoc", "up"),
    ("maxboxacc_v2", "MaxBoxAccV2", "MaxBox", "up"),
    ("pointing_game", "Pointing", "Point", "up"),
    ("average_drop", "Avg Drop", "Drop", "down"),
    ("increase_in_confidence", "Inc Conf", "Incr", "up"),
    ("deletion_auc", "Deletion AUC", "Del", "down"),
    ("insertion_auc", "Insertion AUC", "Ins", "up"),
)
"""``(key, heading, short heading, better)``: the summary table's columns, and whether higher or
lower is better."""

PROTOCOLS = """\
- **Top-1 / GT-known Loc** (Zhou et al., CVPR 2016, Sec. 3; ILSVRC): the map of the true class, resized to the
  image and min-max normalised, is thresholded at `threshold` of its range; the box around the largest 8-connected
  region must reach IoU >= `iou` with a true box of that class (GT-known); Top-1 also needs the right top-1 class.
- **MaxBoxAccV2** (Choe et al., CVPR 2020): for every map threshold in [0, 1) by `maxbox_step`, boxes around all
  regions; an image counts at IoU threshold d when its best box-to-true-box IoU >= d; the best accuracy over map
  thresholds, averaged over d in `maxbox_ious`.
- **Pointing game** (Zhang et al., ECCV 2016): the map's maximum lies within `pointing_tolerance` pixels of a true box.
- **Average Drop / Increase in Confidence** (Chattopadhyay et al., WACV 2018, Sec. 6.1): with Y the probability of
  the predicted class and O its probability on the input multiplied by the map (in the normalised input space),
  mean of max(0, Y - O) / Y, and the share of images with O > Y, in percent.
- **Deletion / Insertion AUC** (Petsiuk et al., BMVC 2018): pixels ranked by the predicted class's map at the input
  resolution; deletion replaces the top ones by `deletion_baseline`, insertion restores them onto
  `insertion_baseline`, `steps` intervals (None: one row of pixels per step, as RISE); trapezoidal area under the
  probability curve over the perturbed fraction.
"""


def check_free(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace an earlier evaluation's files."""
    if overwrite:
        return
    taken = [out / f for f in FILES if (out / f).exists()]
    if taken:
        raise CamlensError(f"{taken[0]}: exists; pass overwrite=True to replace it (or write to another folder)")


def write(result: EvalResult, out: Path, per_image: IO[str], *, title: str, overwrite: bool) -> list[Path]:
    """Write every file of :data:`FILES` into ``out``, all of them or none (see
    :func:`camlens.imageio.write_group`); ``per_image`` holds the per-image CSV rows (a
    temporary file, copied from its start)."""

    def copy_rows(fh: BinaryIO) -> None:
        per_image.seek(0)
        while chunk := per_image.read(1 << 20):
            fh.write(chunk.encode())

    data = json.dumps(_metrics_json(result), indent=2).encode()
    files: list[tuple[Path, Callable[[BinaryIO], object]]] = [
        (out / "metrics.csv", lambda fh: fh.write(_metrics_csv(result).encode())),
        (out / "metrics.json", lambda fh: fh.write(data)),
        (out / "per_image.csv", copy_rows),
    ]
    pictures = []
    if result.curves and result.fractions is not None:
        files.append((out / "curves.png", image_writer(out / "curves.png", lambda: curves_figure(result))))
        pictures.append(("Deletion and insertion curves (mean over images)", "curves.png"))
    if result.examples:
        files.append((out / "examples.png", image_writer(out / "examples.png", lambda: examples_figure(result))))
        pictures.append(("Examples: true boxes green, boxes from the maps red", "examples.png"))
    markdown = markdown_report(result, title, pictures).encode()
    files.append((out / "report.md", lambda fh: fh.write(markdown)))
    return write_group(files, overwrite)


def table_rows(result: EvalResult, short: bool = False) -> list[list[str]]:
    """The summary table: one row per method, the columns of :data:`COLUMNS` that were measured,
    headed by their names and arrows (or by short names, for a terminal); the full table also
    has MaxBoxAcc at each IoU threshold with the map threshold that reached it, after MaxBoxAccV2."""
    keys = [k for k, *_ in COLUMNS if any(k in s for s in result.scores.values())]
    arrows = {"up": "↑", "down": "↓"}
    heads = [sh if short else f"{h} {arrows[b]}" for k, h, sh, b in COLUMNS if k in keys]
    ious = [k.removeprefix("maxboxacc@") for k in next(iter(result.scores.values()), {}) if k.startswith("maxboxacc@")]
    split = keys.index("maxboxacc_v2") + 1 if ious and not short and "maxboxacc_v2" in keys else None
    if split is not None:
        heads.insert(split, f"MaxBoxAcc IoU {' / '.join(ious)} (best threshold)")
    rows = [["method", *heads]]
    for m in result.methods:
        s = result.scores[m]
        cells = [_fmt(k, s.get(k)) for k in keys]
        if split is not None:
            accuracies = " / ".join(f"{s['maxboxacc@' + d]:.1f}" for d in ious)
            thresholds = " / ".join(f"{s['best_threshold@' + d]:.2f}" for d in ious)
            cells.insert(split, f"{accuracies} ({thresholds})")
        rows.append([m, *cells])
    return rows


def accuracy_text(result: EvalResult) -> str:
    return "-" if result.accuracy is None else f"{result.accuracy:.1f}%"


def _fmt(key: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3f}" if key.endswith("_auc") else f"{value:.1f}"


def _metrics_csv(result: EvalResult) -> str:
    keys = sorted({k for s in result.scores.values() for k in s})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "layer", *keys])
    for m in result.methods:
        w.writerow([m, result.layer, *[f"{result.scores[m][k]:.6g}" if k in result.scores[m] else "" for k in keys]])
    return buf.getvalue()


def _metrics_json(result: EvalResult) -> dict[str, object]:
    return {
        "methods": result.methods,
        "layer": result.layer,
        "images": result.images,
        "localized_images": result.localized,
        "classification_accuracy": result.accuracy,
        "scores": result.scores,
        "protocol": result.protocol,
        "curves": {
            "fractions": result.fractions.tolist() if result.fractions is not None else None,
            **{m: {k: v.tolist() for k, v in c.items()} for m, c in result.curves.items()},
        },
        "failed": result.failed,
        "source": result.source,
    }


def curves_figure(result: EvalResult) -> Image.Image:
    """Mean deletion and insertion curves, one line per method, AUC in the legend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for m, curves in result.curves.items():
            ax.plot(result.fractions, curves[kind], label=f"{m} (AUC {result.scores[m][kind + '_auc']:.3f})")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} is better)", fontsize=10)
        ax.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_ylabel("probability of the predicted class")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return render.figure_to_image(fig)


def examples_figure(result: EvalResult) -> Image.Image:
    """One row per example: the image with its true boxes, then each method's overlay with the
    box found at the protocol's threshold (red) and the true boxes (green)."""
    from matplotlib.figure import Figure

    n, cols = len(result.examples), 1 + len(result.methods)
    fig = Figure(figsize=(2.4 * cols, 2.5 * n + 0.3), dpi=100)
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    for r, ex in enumerate(result.examples):
        views = [(render.draw_boxes(ex.image, ex.boxes, (0, 220, 0)), f"{ex.truth} -> {ex.predicted}")]
        for m in result.methods:
            if m in ex.heatmaps:
                picture = render.overlay(ex.image, ex.heatmaps[m])
                found = ex.found.get(m)
                picture = render.draw_boxes(picture, ex.boxes, (0, 220, 0))
                picture = render.draw_boxes(picture, [found] if found else [], (255, 0, 0))
                views.append((picture, m))
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(views):
                ax.imshow(views[c][0])
                ax.set_title(views[c][1], fontsize=8)
    fig.tight_layout()
    return render.figure_to_image(fig)


def markdown_report(result: EvalResult, title: str, pictures: list[tuple[str, str]]) -> str:
    """The report: the table, the protocol with its settings, the pictures, what failed."""
    rows = table_rows(result)
    head = rows[0]
    lines = [f"# {title}", "",
             f"{result.images} images, classification accuracy {accuracy_text(result)}, "
             f"{result.localized} with boxes; layer `{result.layer}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", "Localization and pointing scores and Average Drop / Increase in Confidence are percentages.", "",
              "## Protocol", "", PROTOCOLS, "Settings:", "", "```json", json.dumps(result.protocol, indent=2), "```", ""]
    for caption, name in pictures:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    if result.failed:
        lines += ["## Not evaluated", ""] + [f"- {f}" for f in result.failed] + [""]
    return "\n".join(lines)
