"""Evaluating methods on a labelled, boxed dataset: one forward pass per batch for all methods,
scores accumulated in constant memory, per-image rows streamed to a CSV file."""

from __future__ import annotations

import csv
import hashlib
import io
import tempfile
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, overload

import numpy as np
from PIL import Image

from camlens.core.maps import normalize, upsample
from camlens.core.methods import Method, methods_from
from camlens.distributed import ALONE, World
from camlens.errors import CamlensError, TargetError
from camlens.evaluation import faithfulness
from camlens.evaluation.annotations import Annotations
from camlens.evaluation.boxes import Box
from camlens.evaluation.localization import LocalizationProtocol, localize
from camlens.evaluation.meters import MethodMeter
from camlens.imageio import ORIGINAL_SIZE, find_images
from camlens.lens import Lens
from camlens.pipeline import default_workers, loaded_batches, readable


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


@overload
def evaluate(
    lens: Lens, items: Sequence[Item], methods: str | Method | Sequence[str | Method], layer: str | None = None, *,
    localization: LocalizationProtocol | None = ..., faithful: FaithfulnessProtocol | None = ..., batch_size: int = ...,
    examples: int = ..., per_image: IO[str] | None = ..., progress: Callable[[int], None] = ...,
    workers: int | None = ..., world: None = None,
) -> EvalResult: ...


@overload
def evaluate(
    lens: Lens, items: Sequence[Item], methods: str | Method | Sequence[str | Method], layer: str | None = None, *,
    localization: LocalizationProtocol | None = ..., faithful: FaithfulnessProtocol | None = ..., batch_size: int = ...,
    examples: int = ..., per_image: IO[str] | None = ..., progress: Callable[[int], None] = ...,
    workers: int | None = ..., world: World,
) -> EvalResult | None: ...


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
    workers: int | None = None,
    world: World | None = None,
) -> EvalResult | None:
    """Score ``methods`` (names, any alias, or :class:`~camlens.core.methods.Method` objects;
    results are keyed by canonical name) on ``items``, ``batch_size`` images at a time; keep
    ``examples`` images, spread evenly over ``items``, for the report; write one
    :data:`PER_IMAGE_COLUMNS` row per image and method to ``per_image``, header first.

    Localization uses each image's true-class map (images without a class or boxes are skipped
    for it); faithfulness uses the predicted class's map (Grad-CAM++ and RISE papers), at the
    model's input resolution. Unreadable images are listed in ``failed`` and skipped. Images
    are read by ``workers`` processes ahead of the model (see :mod:`camlens.pipeline`; default
    :func:`~camlens.pipeline.default_workers`, none on the CPU).

    With a ``world`` of several processes (``torchrun``, see :mod:`camlens.distributed`) every
    rank calls this with the same ``items`` and settings and scores its share of the batches
    (:meth:`World.share <camlens.distributed.World.share>`, one block per batch, so that every
    batch is one of a one-process run); rank 0 merges the ranks' scores and rows and returns the
    result, equal to one process's exactly (scores are summed exactly, see
    :mod:`camlens.evaluation.meters`; rows in image order), the other ranks return None.
    ``per_image`` is rank 0's (the others' is not used); each rank buffers its own rows in a
    temporary file on its machine until rank 0 takes them in image order, a bounded amount at
    a time. ``progress`` counts this rank's images.
    """
    world = ALONE if world is None else world
    _explainer(lens, methods, layer, batch_size)  # bad requests fail here, before any row
    if world.size > 1:
        _check_same_items(world, items)
    wanted = world.broadcast(per_image is not None)
    if world.main and per_image is not None:
        csv.writer(per_image).writerow(PER_IMAGE_COLUMNS)
    kwargs: dict[str, Any] = dict(localization=localization, faithful=faithful, batch_size=batch_size,
                                  examples=examples, progress=progress, workers=workers, world=world)
    if world.size == 1:
        return evaluate_share(lens, items, methods, layer, rows=per_image, **kwargs).result()
    with _spool() if wanted else nullcontext() as rows:
        tally = evaluate_share(lens, items, methods, layer, rows=rows, **kwargs)
        blocks, tally.row_blocks = tally.row_blocks, []
        tallies = world.gather(tally)
        if rows is not None:
            _gather_rows(world, rows, blocks, -(-len(items) // batch_size), batch_size, per_image)
    if tallies is None:
        return None
    merged, *others = tallies
    for other in others:
        merged.merge(other)
    return merged.result()


@dataclass
class EvalTally:
    """What one rank scored of an evaluation (see :func:`evaluate_share`): counts, per-method
    meters, examples and failures by global image index. Tallies of disjoint shares
    :meth:`merge` into the tally of the whole, exactly; :meth:`result` is the evaluation."""

    methods: list[str]
    protocol: dict[str, Any]
    meters: dict[str, MethodMeter]
    images: int = 0
    labelled: int = 0
    correct: int = 0
    localized: int = 0
    layer: str = ""
    failed: list[tuple[int, str]] = field(default_factory=list)
    examples: dict[int, Example] = field(default_factory=dict)
    row_blocks: list[int] = field(default_factory=list)
    """Characters of this rank's per-image rows, batch by batch, as written to ``rows`` (not
    merged: what :func:`merge_rows` needs to put the ranks' rows back in image order)."""

    def merge(self, other: EvalTally) -> None:
        """Add ``other``'s images (another share of the same evaluation) to these."""
        if other.methods != self.methods or other.protocol != self.protocol:
            raise CamlensError("cannot merge evaluations of different methods or protocols")
        for name, meter in self.meters.items():
            meter.merge(other.meters[name])
        self.images += other.images
        self.labelled += other.labelled
        self.correct += other.correct
        self.localized += other.localized
        self.layer = self.layer or other.layer
        self.failed += other.failed
        self.examples.update(other.examples)

    def result(self) -> EvalResult:
        """The evaluation of the images tallied, failures and examples in image order.

        Raises:
            CamlensError: no image could be read.
        """
        if not self.images:
            raise CamlensError("no image could be read")
        fractions = next((m.faithfulness.fractions for m in self.meters.values() if m.faithfulness.count), None)
        return EvalResult(
            methods=list(self.methods),
            layer=self.layer,
            images=self.images,
            accuracy=100.0 * self.correct / self.labelled if self.labelled else None,
            localized=self.localized,
            scores={m: meter.summary() for m, meter in self.meters.items()},
            fractions=fractions,
            curves={m: meter.faithfulness.mean_curves() for m, meter in self.meters.items() if meter.faithfulness.count},
            examples=[self.examples[k] for k in sorted(self.examples)],
            protocol=self.protocol,
            failed=[text for _, text in sorted(self.failed, key=lambda f: f[0])],
        )


def evaluate_share(
    lens: Lens,
    items: Sequence[Item],
    methods: str | Method | Sequence[str | Method],
    layer: str | None = None,
    *,
    localization: LocalizationProtocol | None = DEFAULT_LOCALIZATION,
    faithful: FaithfulnessProtocol | None = DEFAULT_FAITHFULNESS,
    batch_size: int = 16,
    examples: int = 6,
    rows: IO[str] | None = None,
    progress: Callable[[int], None] = lambda n: None,
    workers: int | None = None,
    world: World = ALONE,
) -> EvalTally:
    """The part of :func:`evaluate` that rank ``world.rank`` does: score its share of ``items``
    (the whole for one process) and write its per-image rows, without the header, to ``rows``,
    in its order (blocks of ``batch_size`` images; ``EvalTally.row_blocks`` says how long each
    block's rows are). Merging the tallies of every rank gives :func:`evaluate`'s result."""
    names, explainer = _explainer(lens, methods, layer, batch_size)
    prep = lens.loaded.preprocessing
    tally = EvalTally(names, {
        "localization": asdict(localization) if localization else None,
        "faithfulness": asdict(faithful) if faithful else None,
        "input_size": list(prep.input_size),
        "localization_target": "true class",
        "faithfulness_target": "predicted class",
    }, {m: MethodMeter(localization or LocalizationProtocol()) for m in names})
    chosen = {int(k) for k in np.linspace(0, len(items) - 1, examples).round()} if examples > 0 and items else set()
    share = world.share(len(items), batch_size)
    workers = default_workers(lens.loaded.device) if workers is None else workers
    batches = loaded_batches([items[i].path for i in share], batch_size, prepare=prep, workers=workers)

    def predict(batch: np.ndarray) -> np.ndarray:
        return lens.backend.output(lens.loaded, lens.backend.to_input(lens.loaded, batch)).probabilities

    with closing(batches):
        for batch in batches:
            tally.failed += [(share[entry.index], entry.error) for entry in batch if entry.error is not None]
            loaded, pictures, prepared = readable(batch)
            text = ""
            if loaded:
                assert prepared is not None
                scored = [(share[entry.index], items[share[entry.index]], picture)
                          for entry, picture in zip(loaded, pictures, strict=True)]
                text = _score_batch(lens, explainer, predict, scored, prepared, localization, faithful, tally, chosen,
                                    rows is not None)
            if rows is not None:
                rows.write(text)
                tally.row_blocks.append(len(text))
            progress(len(batch))
    return tally


def _explainer(lens: Lens, methods: str | Method | Sequence[str | Method], layer: str | None,
               batch_size: int) -> tuple[list[str], Callable[..., Any]]:
    """The methods' canonical names and their (cached) explainer; bad requests raise."""
    if not methods:
        raise CamlensError("no method to evaluate")
    if batch_size < 1:
        raise CamlensError("batch size must be at least 1")
    resolved = methods_from(methods)
    return [m.name for m in resolved], lens.explainer(resolved, layer)


def _score_batch(
    lens: Lens, explainer: Callable[..., Any], predict: Callable[[np.ndarray], np.ndarray],
    batch: list[tuple[int, Item, Image.Image]], x: np.ndarray, localization: LocalizationProtocol | None,
    faithful: FaithfulnessProtocol | None, tally: EvalTally, chosen: set[int], want_rows: bool,
) -> str:
    """Score one batch (``(global index, item, picture)``, ``x`` their inputs) into ``tally``;
    its per-image rows as CSV text (empty unless ``want_rows``)."""
    truth = [item.label for _, item, _ in batch]

    def choose(logits: np.ndarray) -> np.ndarray:
        top = logits.argmax(axis=1)
        return np.stack([[t if t is not None else p for t, p in zip(truth, top, strict=True)], top], axis=1)

    result = explainer(lens.backend.to_input(lens.loaded, x), choose)
    probs = result.probabilities
    pred = result.targets[:, 1]
    tally.images += len(batch)
    tally.correct += sum(int(t == p) for t, p in zip(truth, pred, strict=True) if t is not None)
    tally.labelled += sum(t is not None for t in truth)
    tally.localized += sum(1 for _, item, _ in batch if localization is not None and item.label is not None and item.boxes)
    cells: dict[tuple[int, str], list[object]] = {}
    for m in tally.methods:
        maps = result.maps[m]
        tally.layer = next(iter(maps))
        raw = maps[tally.layer]
        meter = tally.meters[m]
        for i, (k, item, img) in enumerate(batch):
            cells[i, m] = [""] * 7
            scored = localization is not None and item.label is not None and bool(item.boxes)
            shown = k in chosen
            if not (scored or shown):
                continue
            heat = normalize(upsample(raw[i, 0], (img.height, img.width)))
            box = None
            if scored:
                assert localization is not None
                outcome = localize(heat, item.boxes_on(img), localization)
                meter.localization.update(outcome, bool(pred[i] == item.label))
                cells[i, m][:2] = [f"{outcome.iou:.4f}", int(outcome.pointing_hit)]
                cells[i, m][6] = box_text([outcome.box] if outcome.box else [])
                box = outcome.box
            if shown:
                _keep(tally.examples, k, item, img, lens, int(pred[i]), m, heat, box)
        if faithful is not None:
            _faithfulness(predict, x, raw[:, 1], pred, lens.loaded.preprocessing.layout, faithful, meter, cells, m)
    if not want_rows:
        return ""
    text = io.StringIO()
    writer = csv.writer(text)
    for i, (_, item, img) in enumerate(batch):
        truth_boxes = box_text(item.boxes_on(img)) if item.boxes else ""
        label = "" if item.label is None else lens.labels[item.label]
        top = lens.labels[int(pred[i])]
        for m in tally.methods:
            writer.writerow([str(item.path), label, top, f"{probs[i, pred[i]]:.6f}", m, *cells[i, m], truth_boxes,
                             img.width, img.height])
    return text.getvalue()


def merge_rows(parts: Sequence[tuple[IO[str], Sequence[int]]], out: IO[str]) -> None:
    """The per-image CSV of an evaluation whose shares were scored one by one (each rank's
    ``rows`` and ``EvalTally.row_blocks``, in rank order), header first, rows in image order;
    read a block at a time. (:func:`evaluate` does this itself across processes.)"""
    csv.writer(out).writerow(PER_IMAGE_COLUMNS)
    for rows, _ in parts:
        rows.seek(0)
    for block in range(max((len(blocks) for _, blocks in parts), default=0)):
        for rows, blocks in parts:
            if block < len(blocks):
                out.write(rows.read(blocks[block]))


ROUND_IMAGES = 1024
"""Images whose rows each rank sends to rank 0 per exchange, at the end of a run of several
processes: bounds rank 0's memory to about ``ranks x ROUND_IMAGES x methods`` rows."""


def _gather_rows(world: World, rows: IO[str], blocks: list[int], total: int, batch_size: int,
                 out: IO[str] | None) -> None:
    """Every rank's rows to rank 0's ``out`` in image order: in rounds of ``ROUND_IMAGES``
    images per rank, each rank's next blocks (its blocks are global blocks ``rank``,
    ``rank + size``...), written block by block across the ranks."""
    per_round = max(1, ROUND_IMAGES // batch_size)
    rounds = -(-len(range(0, total, world.size)) // per_round)  # rank 0 has the most blocks
    rows.seek(0)
    for r in range(rounds):
        mine = [rows.read(n) for n in blocks[r * per_round : (r + 1) * per_round]]
        got = world.gather(mine)
        if got is None or out is None:
            continue
        for block in range(per_round):
            for theirs in got:
                if block < len(theirs):
                    out.write(theirs[block])


def _spool() -> IO[str]:
    """A temporary file for a rank's rows: in memory up to 16 MB, then on this machine's disk
    (already unlinked there: nothing is left behind, even if the process is killed)."""
    return tempfile.SpooledTemporaryFile(max_size=1 << 24, mode="w+", newline="", encoding="utf-8",  # type: ignore[return-value]
                                         errors="surrogateescape")


def _check_same_items(world: World, items: Sequence[Item]) -> None:
    """Refuse to start when the ranks' lists of images differ (another folder or --limit, files
    added while the ranks were listing them): their shares would not make up the dataset."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.path}\0{item.label}\0{len(item.boxes or [])}\n".encode(errors="surrogateescape"))
    seen = world.gather((len(items), digest.hexdigest()))
    odd = world.broadcast([r for r, value in enumerate(seen) if value != seen[0]] if seen is not None else [])
    if odd:
        raise CamlensError(f"rank {world.rank}: the ranks' image lists differ (rank{'s' if len(odd) > 1 else ''} "
                           f"{', '.join(map(str, odd))} found others than rank 0's); give every rank the same data, "
                           "boxes and limit")


def box_text(boxes: Sequence[Box]) -> str:
    """Boxes as ``per_image.csv`` writes them: ``xmin ymin xmax ymax``, ``;``-separated."""
    return ";".join(" ".join(f"{v:.1f}" for v in (b.xmin, b.ymin, b.xmax, b.ymax)) for b in boxes)


def _keep(kept: dict[int, Example], k: int, item: Item, img: Image.Image, lens: Lens, pred: int, method: str,
          heat: np.ndarray, box: Box | None) -> None:
    if k not in kept:
        truth = lens.labels[item.label] if item.label is not None else "?"
        kept[k] = Example(img, truth, lens.labels[pred], item.boxes_on(img), {}, {})
    kept[k].heatmaps[method] = heat
    kept[k].found[method] = box


def _faithfulness(
    predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, raw: np.ndarray, pred: np.ndarray, layout: str,
    protocol: FaithfulnessProtocol, meter: MethodMeter, cells: dict[tuple[int, str], list[object]], method: str,
) -> None:
    h, w = x.shape[2:] if layout == "NCHW" else x.shape[1:3]
    maps = normalize(upsample(raw, (h, w)))
    drop, increase = faithfulness.confidence_change(predict, x, maps, pred, layout, protocol.batch_size)
    curves = faithfulness.deletion_insertion(
        predict, x, maps, pred, layout, steps=protocol.steps, deletion_baseline=protocol.deletion_baseline,
        insertion_baseline=protocol.insertion_baseline, batch_size=protocol.batch_size,
    )
    meter.faithfulness.update(drop, increase, curves)
    deletion, insertion = curves.deletion_auc, curves.insertion_auc
    for i in range(len(x)):
        cells[i, method][2:6] = [f"{drop[i]:.6f}", int(increase[i]), f"{deletion[i]:.6f}", f"{insertion[i]:.6f}"]
