"""Evaluating methods on a labelled, boxed dataset: one forward pass per batch for all methods,
scores accumulated in constant memory, per-image rows streamed to a CSV file."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from camlens.core.maps import normalize, upsample
from camlens.core.methods import Method, methods_from
from camlens.errors import CamlensError, ImageError, TargetError
from camlens.evaluation import faithfulness
from camlens.evaluation.annotations import Annotations
from camlens.evaluation.boxes import Box
from camlens.evaluation.localization import LocalizationMeter, LocalizationProtocol, localize
from camlens.imageio import ORIGINAL_SIZE, find_images, read_image
from camlens.lens import Lens


@dataclass(frozen=True)
class FaithfulnessProtocol:
    """Every knob of the faithfulness scores (see :mod:`camlens.evaluation.faithfulness`).

    Attributes:
        steps: deletion/insertion intervals; ``None`` = input height, RISE's one row of pixels
            per step (Petsiuk et al. 2018).
        deletion_baseline: ``"zero"`` (zeros after normalisation, RISE's deletion substrate).
        insertion_baseline: ``"blur"`` (RISE's blurred copy, 11x11 kernel, sigma 5) or ``"zero"``.
        batch_size: perturbed inputs per forward pass.
    """

    steps: int | None = None
    deletion_baseline: str = "zero"
    insertion_baseline: str = "blur"
    batch_size: int = 64


PER_IMAGE_COLUMNS = ("image", "label", "predicted", "probability", "method", "iou", "pointing_hit", "average_drop",
                     "increase", "deletion_auc", "insertion_auc", "box", "true_boxes", "width", "height")
"""``per_image.csv``'s columns: one row per image x method. ``box`` is the CAM box found at the
localization threshold, ``true_boxes`` the image's true boxes (``;``-separated), each as
``xmin ymin xmax ymax`` in the pixels of the image as read (``width`` x ``height``)."""

DEFAULT_LOCALIZATION = LocalizationProtocol()
DEFAULT_FAITHFULNESS = FaithfulnessProtocol()


@dataclass(frozen=True)
class Item:
    """One image to evaluate: its true class (None if unknown), true boxes (None if none), and
    the ``(width, height)`` the boxes were drawn on, when the annotation states it (boxes are
    rescaled if the image file has another size)."""

    path: Path
    label: int | None
    boxes: list[Box] | None
    size: tuple[int, int] | None = None

    def boxes_on(self, image: Image.Image) -> list[Box]:
        """The true boxes in ``image``'s pixel coordinates (drawn on ``size``, else on the
        file's own size, which a downscaled read keeps in ``image.info``)."""
        boxes = self.boxes or []
        drawn = self.size or image.info.get(ORIGINAL_SIZE)
        if drawn is None or tuple(drawn) == image.size:
            return boxes
        return [b.scaled(image.width / drawn[0], image.height / drawn[1]) for b in boxes]


@dataclass
class Example:
    """A few images kept for the report: maps at image size and boxes per method."""

    image: Image.Image
    truth: str
    predicted: str
    boxes: list[Box]
    heatmaps: dict[str, np.ndarray]
    found: dict[str, Box | None]


class _MethodScores:
    """Everything accumulated for one method."""

    def __init__(self, protocol: LocalizationProtocol) -> None:
        self.localization = LocalizationMeter(protocol)
        self.faithful = 0
        self.drop = 0.0
        self.increase = 0
        self.deletion = 0.0
        self.insertion = 0.0
        self.deletion_curve: np.ndarray | None = None
        self.insertion_curve: np.ndarray | None = None

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.localization.count:
            out.update(self.localization.summary())
        if self.faithful:
            n = self.faithful
            out.update(
                average_drop=100.0 * self.drop / n,
                increase_in_confidence=100.0 * self.increase / n,
                deletion_auc=self.deletion / n,
                insertion_auc=self.insertion / n,
            )
        return out


@dataclass
class EvalResult:
    """Per-method summaries, mean deletion/insertion curves, examples, and what failed;
    ``accuracy`` is the top-1 accuracy in % over the images with a known class (None if none)."""

    methods: list[str]
    layer: str
    images: int
    accuracy: float | None
    localized: int
    scores: dict[str, dict[str, float]]
    fractions: np.ndarray | None
    curves: dict[str, dict[str, np.ndarray]]
    examples: list[Example]
    protocol: dict[str, Any]
    failed: list[str] = field(default_factory=list)
    source: dict[str, str | None] = field(default_factory=dict)
    """What was evaluated (model, weights, labels, data and boxes files, working folder), as the
    web app needs it to reopen the run's images with the run's model; set by the caller."""


def dataset(
    root: str | Path, lens: Lens, annotations: Annotations | None, limit: int | None = None
) -> tuple[list[Item], list[str]]:
    """The images under ``root`` with their classes and boxes, and one line per problem.

    The class of an image is its folder's name when ``root`` has one sub-folder per class (as
    written by ``camlens data digits-canvas`` or torchvision's ImageFolder), otherwise the label
    of its first annotated box; names are matched to the model's labels exactly, then as
    :meth:`~camlens.models.labels.Labels.index` does (index, any synonym, any case). Boxes are
    looked up relative to the annotation file's folder, then to ``root``.
    """
    base = Path(root)
    if not base.is_dir():
        raise CamlensError(f"{base}: no such folder")
    files = find_images(base, recursive=True)
    if not files:
        raise CamlensError(f"{base}: no image files")
    items: list[Item] = []
    problems: list[str] = []
    for path in files[: limit or None]:
        boxes, size = _boxes(annotations, path, base) if annotations is not None else (None, None)
        name = path.parent.name if path.parent != base else (boxes[0].label if boxes else None)
        label = None
        if name is not None:
            try:
                label = _class_index(lens, name)
            except TargetError as exc:
                problems.append(f"{path}: class {name!r} from its {'folder' if path.parent != base else 'boxes'}: {exc}")
                continue
        if boxes is not None and label is not None and any(b.label is not None for b in boxes):
            own = [b for b in boxes if b.label is not None and _same_class(lens, b.label, label)]
            boxes = own or boxes
        items.append(Item(path, label, boxes, size))
    return items, problems


def _boxes(annotations: Annotations, path: Path, base: Path) -> tuple[list[Box] | None, tuple[int, int] | None]:
    """The image's boxes, and the ``(width, height)`` the annotation states for it if any."""
    key = None
    if annotations.root is not None and path.is_relative_to(annotations.root):
        key = annotations.key_for(path, annotations.root)
    key = key or annotations.key_for(path, base)
    return (None, None) if key is None else (annotations.boxes[key], annotations.sizes.get(key))


def _class_index(lens: Lens, name: str) -> int:
    names = list(lens.labels.names)
    return names.index(name) if name in names else lens.labels.index(name)


def _same_class(lens: Lens, name: str, label: int) -> bool:
    try:
        return _class_index(lens, name) == label
    except TargetError:
        return False


def evaluate(
    lens: Lens,
    items: Sequence[Item],
    methods: str | Method | Sequence[str | Method],
    layer: str | None = None,
    *,
    localization: LocalizationProtocol | None = DEFAULT_LOCALIZATION,
    faithful: FaithfulnessProtocol | None = DEFAULT_FAITHFULNESS,
    batch_size: int = 16,
    examples: int = 6,
    per_image: IO[str] | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> EvalResult:
    """Score ``methods`` (names, any alias, or :class:`~camlens.core.methods.Method` objects;
    results are keyed by canonical name) on ``items``, ``batch_size`` images at a time; keep
    ``examples`` images, spread evenly over ``items``, for the report.

    Localization uses each image's true-class map (images without a class or boxes are skipped
    for it); faithfulness uses the predicted class's map (Grad-CAM++ and RISE papers), at the
    model's input resolution. Unreadable images are listed in ``failed`` and skipped.
    """
    if not methods:
        raise CamlensError("no method to evaluate")
    if batch_size < 1:
        raise CamlensError("batch size must be at least 1")
    resolved = methods_from(methods)
    names = [m.name for m in resolved]
    explainer = lens.explainer(resolved, layer)
    prep = lens.loaded.preprocessing
    scores = {m: _MethodScores(localization or LocalizationProtocol()) for m in names}
    writer = csv.writer(per_image) if per_image is not None else None
    if writer is not None:
        writer.writerow(PER_IMAGE_COLUMNS)
    chosen = {int(k) for k in np.linspace(0, len(items) - 1, examples).round()} if examples > 0 and items else set()
    position = {id(item): k for k, item in enumerate(items)}
    kept: dict[int, Example] = {}
    failed: list[str] = []
    seen = correct = labelled = localized = 0
    fractions: np.ndarray | None = None
    layer_name = ""

    def predict(batch: np.ndarray) -> np.ndarray:
        return lens.backend.output(lens.loaded, lens.backend.to_input(lens.loaded, batch)).probabilities

    for chunk in _batches(items, batch_size):
        loaded: list[tuple[Item, Image.Image]] = []
        for item in chunk:
            try:
                loaded.append((item, read_image(item.path)))
            except ImageError as exc:
                failed.append(str(exc))
        if loaded:
            x = prep([img for _, img in loaded])
            truth = [it.label for it, _ in loaded]

            def choose(logits: np.ndarray, truth: list[int | None] = truth) -> np.ndarray:
                top = logits.argmax(axis=1)
                return np.stack([[t if t is not None else p for t, p in zip(truth, top, strict=True)], top], axis=1)

            result = explainer(lens.backend.to_input(lens.loaded, x), choose)
            probs = result.probabilities
            pred = result.targets[:, 1]
            seen += len(loaded)
            correct += sum(int(t == p) for t, p in zip(truth, pred, strict=True) if t is not None)
            labelled += sum(t is not None for t in truth)
            rows: dict[tuple[int, str], list[object]] = {}
            for m in names:
                maps = result.maps[m]
                layer_name = next(iter(maps))
                raw = maps[layer_name]
                for i, (item, img) in enumerate(loaded):
                    rows[i, m] = [""] * 7
                    scored = localization is not None and item.label is not None and bool(item.boxes)
                    shown = position[id(item)] in chosen
                    if not (scored or shown):
                        continue
                    heat = normalize(upsample(raw[i, 0], (img.height, img.width)))
                    box = None
                    if scored:
                        assert localization is not None
                        outcome = localize(heat, item.boxes_on(img), localization)
                        scores[m].localization.update(outcome, bool(pred[i] == item.label))
                        rows[i, m][:2] = [f"{outcome.iou:.4f}", int(outcome.pointing_hit)]
                        rows[i, m][6] = box_text([outcome.box] if outcome.box else [])
                        box = outcome.box
                    if shown:
                        _keep(kept, position[id(item)], item, img, lens, int(pred[i]), m, heat, box)
                if faithful is not None:
                    fractions = _faithfulness(predict, x, raw[:, 1], pred, prep.layout, faithful, scores[m], rows, m)
            for i, (item, img) in enumerate(loaded):
                truth_boxes = box_text(item.boxes_on(img)) if item.boxes else ""
                for m in names:
                    if writer is not None:
                        label = "" if item.label is None else lens.labels[item.label]
                        top = lens.labels[int(pred[i])]
                        writer.writerow([str(item.path), label, top, f"{probs[i, pred[i]]:.6f}", m, *rows[i, m],
                                         truth_boxes, img.width, img.height])
            localized += sum(1 for it, _ in loaded if localization is not None and it.label is not None and it.boxes)
        progress(len(chunk))
    if not seen:
        raise CamlensError("no image could be read")
    return EvalResult(
        methods=names,
        layer=layer_name,
        images=seen,
        accuracy=100.0 * correct / labelled if labelled else None,
        localized=localized,
        scores={m: s.summary() for m, s in scores.items()},
        fractions=fractions,
        curves={m: _mean_curves(s) for m, s in scores.items() if s.faithful},
        examples=[kept[k] for k in sorted(kept)],
        protocol={
            "localization": asdict(localization) if localization else None,
            "faithfulness": asdict(faithful) if faithful else None,
            "input_size": list(prep.input_size),
            "localization_target": "true class",
            "faithfulness_target": "predicted class",
        },
        failed=failed,
    )


def box_text(boxes: Sequence[Box]) -> str:
    """Boxes as ``per_image.csv`` writes them: ``xmin ymin xmax ymax``, ``;``-separated."""
    return ";".join(" ".join(f"{v:.1f}" for v in (b.xmin, b.ymin, b.xmax, b.ymax)) for b in boxes)


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _keep(kept: dict[int, Example], k: int, item: Item, img: Image.Image, lens: Lens, pred: int, method: str,
          heat: np.ndarray, box: Box | None) -> None:
    if k not in kept:
        truth = lens.labels[item.label] if item.label is not None else "?"
        kept[k] = Example(img, truth, lens.labels[pred], item.boxes_on(img), {}, {})
    kept[k].heatmaps[method] = heat
    kept[k].found[method] = box


def _faithfulness(
    predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, raw: np.ndarray, pred: np.ndarray, layout: str,
    protocol: FaithfulnessProtocol, scores: _MethodScores, rows: dict[tuple[int, str], list[object]], method: str,
) -> np.ndarray:
    h, w = x.shape[2:] if layout == "NCHW" else x.shape[1:3]
    maps = normalize(upsample(raw, (h, w)))
    drop, increase = faithfulness.confidence_change(predict, x, maps, pred, layout, protocol.batch_size)
    curves = faithfulness.deletion_insertion(
        predict, x, maps, pred, layout, steps=protocol.steps, deletion_baseline=protocol.deletion_baseline,
        insertion_baseline=protocol.insertion_baseline, batch_size=protocol.batch_size,
    )
    scores.faithful += len(x)
    scores.drop += float(drop.sum())
    scores.increase += int(increase.sum())
    scores.deletion += float(curves.deletion_auc.sum())
    scores.insertion += float(curves.insertion_auc.sum())
    d, ins = curves.deletion.sum(axis=0), curves.insertion.sum(axis=0)
    scores.deletion_curve = d if scores.deletion_curve is None else scores.deletion_curve + d
    scores.insertion_curve = ins if scores.insertion_curve is None else scores.insertion_curve + ins
    for i in range(len(x)):
        rows[i, method][2:6] = [f"{drop[i]:.6f}", int(increase[i]), f"{curves.deletion_auc[i]:.6f}",
                               f"{curves.insertion_auc[i]:.6f}"]
    return curves.fractions


def _mean_curves(s: _MethodScores) -> dict[str, np.ndarray]:
    assert s.deletion_curve is not None and s.insertion_curve is not None
    return {"deletion": s.deletion_curve / s.faithful, "insertion": s.insertion_curve / s.faithful}
