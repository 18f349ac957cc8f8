"""Evaluating methods on a labelled, boxed dataset: one forward pass per batch for all methods,
scores accumulated in constant memory, per-image rows streamed to a CSV file.

An evaluation given a ``state`` folder records each batch (block) as it is scored, so that a
run stopped or killed at any point (Ctrl-C, SIGKILL, a ``torchrun`` rank that died) is finished
by ``resume``, which scores only the blocks missing and ends with an uninterrupted run's result:

- ``settings.json``: what the scores depend on (model, methods, layer, protocols, batch size, a
  fingerprint of the images with their classes and boxes); written atomically by rank 0 when a
  new evaluation starts (the last one's rank files go), checked on resume.
- ``rank-R.jsonl``: one line per block rank ``R`` scored, appended once the block is scored: its
  number, its per-image rows and its tally (counts and exact sums as JSON, see
  :meth:`EvalTally.to_json`; no pickle). A line cut short by a kill, or that does not read back
  as a tally of its block, is ignored: the block is scored again.

Examples (pictures and maps for the report) are not recorded: a resumed run scores the blocks
that hold them again. Ranks read every rank's lines, so a run may be resumed with another
number of processes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, overload

import numpy as np
from PIL import Image

from camlens.arguments import count as whole
from camlens.core.maps import normalize, upsample
from camlens.core.methods import Method, methods_from
from camlens.distributed import ALONE, World
from camlens.errors import CamlensError, Interrupted, TargetError
from camlens.evaluation import faithfulness
from camlens.evaluation.annotations import Annotations
from camlens.evaluation.boxes import Box
from camlens.evaluation.localization import LocalizationProtocol, localize
from camlens.evaluation.meters import MethodMeter
from camlens.imageio import ORIGINAL_SIZE, find_images, write_atomic
from camlens.ledger import clear_ranks
from camlens.lens import Lens
from camlens.pipeline import default_workers, loaded_batches, readable

if TYPE_CHECKING:
    from camlens.runner import StopRequest


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


class EvaluationInterrupted(Interrupted):
    """A stop request (see :func:`camlens.runner.stop_on_signals`) ended :func:`evaluate`
    before every image was scored: ``done`` of its ``total`` images were (scored or found
    unreadable, over all ranks). With a ``state`` folder, ``resume=True`` finishes it."""

    def __init__(self, signum: int, done: int, total: int) -> None:
        super().__init__(signum)
        self.args = (signum, done, total)  # as it is made again (a copy, a pickle)
        self.done, self.total = done, total

    def __str__(self) -> str:
        try:
            name = signal.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        return f"{name} stopped the evaluation after {self.done} of {self.total} images"


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
    workers: int | None = ..., world: None = None, state: Path | None = ..., resume: bool = ...,
    stop: StopRequest | None = ...,
) -> EvalResult: ...


@overload
def evaluate(
    lens: Lens, items: Sequence[Item], methods: str | Method | Sequence[str | Method], layer: str | None = None, *,
    localization: LocalizationProtocol | None = ..., faithful: FaithfulnessProtocol | None = ..., batch_size: int = ...,
    examples: int = ..., per_image: IO[str] | None = ..., progress: Callable[[int], None] = ...,
    workers: int | None = ..., world: World, state: Path | None = ..., resume: bool = ...,
    stop: StopRequest | None = ...,
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
    state: Path | None = None,
    resume: bool = False,
    stop: StopRequest | None = None,
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

    With a ``state`` folder (the CLI's is ``OUT/``:data:`STATE_FOLDER`; on a file system every rank
    sees) each rank records every block it scores there (see :mod:`camlens.evaluation.run`);
    with ``resume`` the last evaluation recorded there is continued (a new one starts when
    there is none): only the blocks it had not recorded are scored, and those that hold
    examples, and the result is the one of an uninterrupted run. ``stop`` is polled between
    batches (see :func:`camlens.runner.stop_on_signals`): once it is set the rank scores no
    further block, and if any rank had blocks left every rank raises
    :class:`EvaluationInterrupted` (a stopped rank waits for the others at the end of their
    shares).

    Raises:
        CamlensError: bad methods, layer or batch size; ``resume`` of an evaluation with other
            settings or images (one line, naming what differs); the state cannot be written;
            no image could be read.
        EvaluationInterrupted: ``stop`` was set before every block was scored.
    """
    world = ALONE if world is None else world
    names, _ = _explainer(lens, methods, layer, batch_size)  # bad requests fail here, before any row
    if world.size > 1:
        _check_same_items(world, items)
    if state is not None:
        refused = None
        if world.main:  # rank 0 decides, before any rank reads or writes there
            try:
                _begin_state(state, _settings(lens, items, names, layer, localization, faithful, batch_size), resume)
            except CamlensError as exc:
                refused = str(exc)
        refused = world.broadcast(refused)
        if refused is not None:
            raise CamlensError(refused)
    wanted = world.broadcast(per_image is not None)
    if world.main and per_image is not None:
        csv.writer(per_image).writerow(PER_IMAGE_COLUMNS)
    kwargs: dict[str, Any] = dict(localization=localization, faithful=faithful, batch_size=batch_size,
                                  examples=examples, progress=progress, workers=workers, world=world, stop=stop,
                                  state=state, resume=True)  # the state is decided: every rank continues it
    if world.size == 1:
        tally = evaluate_share(lens, items, methods, layer, rows=per_image, **kwargs)
        _raise_if_stopped([(tally.interrupted, tally.images + len(tally.failed))], len(items))
        return tally.result()
    with _spool() if wanted else nullcontext() as rows:
        tally = evaluate_share(lens, items, methods, layer, rows=rows, **kwargs)
        # every rank learns whether any stopped before the scores are exchanged: all raise, or none
        stopped = world.broadcast(world.gather((tally.interrupted, tally.images + len(tally.failed))))
        _raise_if_stopped(stopped or [], len(items))
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
    interrupted: int | None = None
    """The signal of the stop request that ended this share before its last block (not merged)."""

    def empty(self) -> EvalTally:
        """A tally of no image of the same evaluation (methods, protocols)."""
        return EvalTally(list(self.methods), self.protocol,
                         {m: MethodMeter(meter.localization.protocol) for m, meter in self.meters.items()})

    def merge(self, other: EvalTally) -> None:
        """Add ``other``'s images (another share of the same evaluation) to these: all of them,
        or (raising) none."""
        if other.methods != self.methods or other.protocol != self.protocol:
            raise CamlensError("cannot merge evaluations of different methods or protocols")
        for name, meter in self.meters.items():
            mine, theirs = meter.faithfulness.fractions, other.meters[name].faithfulness.fractions
            if mine is not None and theirs is not None and not np.array_equal(mine, theirs):
                raise CamlensError("cannot merge deletion/insertion curves sampled at different fractions")
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

    def to_json(self) -> dict[str, Any]:
        """The counts, failures and meters as JSON values, exactly (see
        :meth:`MethodMeter.to_json <camlens.evaluation.meters.MethodMeter.to_json>`); not the
        examples, the methods or the protocol (those of the evaluation it belongs to)."""
        return {"images": self.images, "labelled": self.labelled, "correct": self.correct, "localized": self.localized,
                "layer": self.layer, "failed": [[k, text] for k, text in self.failed],
                "meters": {m: meter.to_json() for m, meter in self.meters.items()}}

    @classmethod
    def from_json(cls, data: Any, like: EvalTally) -> EvalTally:
        """The tally :meth:`to_json` wrote, of the evaluation ``like`` is a tally of.

        Raises:
            CamlensError: ``data`` is not a tally of that evaluation.
        """
        out = like.empty()
        try:
            for name in ("images", "labelled", "correct", "localized"):
                setattr(out, name, whole(data[name], name, 0))
            if not isinstance(data["layer"], str) or set(data["meters"]) != set(out.methods):
                raise CamlensError("a tally of another layer or other methods")
            out.layer = data["layer"]
            out.failed = [(whole(k, "index", 0), text) for k, text in data["failed"]]
            if not all(isinstance(text, str) for _, text in out.failed):
                raise CamlensError("failures that are not text")
            protocol = next(iter(like.meters.values())).localization.protocol
            out.meters = {m: MethodMeter.from_json(data["meters"][m], protocol) for m in out.methods}
        except (KeyError, TypeError, ValueError) as exc:
            raise CamlensError(f"not a stored tally ({type(exc).__name__}: {exc})") from None
        return out


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
    state: Path | None = None,
    resume: bool = False,
    stop: StopRequest | None = None,
) -> EvalTally:
    """The part of :func:`evaluate` that rank ``world.rank`` does: score its share of ``items``
    (the whole for one process) and write its per-image rows, without the header, to ``rows``,
    in its order (blocks of ``batch_size`` images; ``EvalTally.row_blocks`` says how long each
    block's rows are). Merging the tallies of every rank gives :func:`evaluate`'s result.

    With ``state``, each block scored is recorded in its ``rank-R.jsonl``; rank 0 starts a new
    state there first (with ``resume``: unless one of the same settings is there), the other
    ranks must come after it. With ``resume``, blocks recorded there by any rank (and not
    holding an example) are taken from it, not scored. Once ``stop`` is set no further block is
    scored: the tally returned has ``interrupted`` set when blocks were left.

    Raises:
        CamlensError: as :func:`evaluate`.
    """
    names, explainer = _explainer(lens, methods, layer, batch_size)
    tally = EvalTally(names, _protocol(lens, localization, faithful),
                      {m: MethodMeter(localization or LocalizationProtocol()) for m in names})
    chosen = {int(k) for k in np.linspace(0, len(items) - 1, examples).round()} if examples > 0 and items else set()
    share = world.share(len(items), batch_size)
    blocks = [share[start : start + batch_size] for start in range(0, len(share), batch_size)]
    found: dict[int, tuple[Path, int]] = {}
    if state is not None:
        settings = _settings(lens, items, names, layer, localization, faithful, batch_size)
        if world.main:
            _begin_state(state, settings, resume)
        if resume and _same_state(state, settings):
            redo = {k // batch_size for k in chosen}  # examples are not recorded: their blocks are scored again
            found = _recorded(state, {b[0] // batch_size: b for b in blocks if b[0] // batch_size not in redo}, tally)
            if found:
                progress(tally.images + len(tally.failed))
    todo = [i for b in blocks if b[0] // batch_size not in found for i in b]
    workers = default_workers(lens.loaded.device) if workers is None else workers
    prep = lens.loaded.preprocessing
    batches = loaded_batches([items[i].path for i in todo], batch_size, prepare=prep, workers=workers)

    def predict(batch: np.ndarray) -> np.ndarray:
        return lens.backend.output(lens.loaded, lens.backend.to_input(lens.loaded, batch)).probabilities

    journal = _Journal(state / f"rank-{world.rank}.jsonl") if state is not None else None
    with closing(batches), closing(journal) if journal is not None else nullcontext(), closing(_Lines()) as lines:
        pending = iter(batches)
        for block in blocks:
            number = block[0] // batch_size
            if number in found:
                text = lines.rows(*found[number]) if rows is not None else ""
            else:
                if stop is not None and stop.signal is not None:
                    tally.interrupted = stop.signal
                    break
                batch = next(pending)
                delta = tally.empty()
                text = _score_block(lens, explainer, predict, items, block, batch, localization, faithful, delta, chosen,
                                    rows is not None or journal is not None)
                if journal is not None:
                    journal.append(number, delta, text)
                tally.merge(delta)
                progress(len(batch))
            if rows is not None:
                rows.write(text)
                tally.row_blocks.append(len(text))
    return tally


def _score_block(
    lens: Lens, explainer: Callable[..., Any], predict: Callable[[np.ndarray], np.ndarray], items: Sequence[Item],
    block: list[int], batch: list[Any], localization: LocalizationProtocol | None,
    faithful: FaithfulnessProtocol | None, tally: EvalTally, chosen: set[int], want_rows: bool,
) -> str:
    """Score the block of images ``block`` (global indices), read as ``batch``, into ``tally``;
    its per-image rows (see :func:`_score_batch`)."""
    assert len(batch) == len(block)
    start = batch[0].index
    tally.failed += [(block[entry.index - start], entry.error) for entry in batch if entry.error is not None]
    loaded, pictures, prepared = readable(batch)
    if not loaded:
        return ""
    assert prepared is not None
    scored = [(block[entry.index - start], items[block[entry.index - start]], picture)
              for entry, picture in zip(loaded, pictures, strict=True)]
    return _score_batch(lens, explainer, predict, scored, prepared, localization, faithful, tally, chosen, want_rows)


def _protocol(lens: Lens, localization: LocalizationProtocol | None,
              faithful: FaithfulnessProtocol | None) -> dict[str, Any]:
    """What the scores of an evaluation mean: :attr:`EvalResult.protocol`."""
    return {
        "localization": asdict(localization) if localization else None,
        "faithfulness": asdict(faithful) if faithful else None,
        "input_size": list(lens.loaded.preprocessing.input_size),
        "localization_target": "true class",
        "faithfulness_target": "predicted class",
    }


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


STATE_FOLDER = ".camlens-eval"
"""The ``state`` folder the CLI keeps in an evaluation's output folder."""

STATE_SETTINGS = "settings.json"
"""The file of an evaluation's ``state`` folder that says what its scores depend on."""

_SETTING_NAMES = {"model": "model", "classes": "list of classes", "methods": "list of methods", "layer": "layer",
                  "batch_size": "batch size", "localization": "localization protocol",
                  "faithfulness": "faithfulness protocol", "input_size": "input size", "images": "count of images",
                  "items": "list of images (or their classes or boxes)"}
"""What each setting is called when a resumed evaluation refuses another one."""


def _settings(lens: Lens, items: Sequence[Item], methods: list[str], layer: str | None,
              localization: LocalizationProtocol | None, faithful: FaithfulnessProtocol | None,
              batch_size: int) -> dict[str, Any]:
    """What the recorded blocks of an evaluation depend on, as JSON values (as read back)."""
    protocol = _protocol(lens, localization, faithful)
    classes = hashlib.sha256("\0".join(lens.labels.names).encode(errors="surrogateescape")).hexdigest()[:16]
    settings = {"model": lens.loaded.name, "classes": classes, "methods": methods,
                "layer": None if layer is None else str(layer), "batch_size": batch_size,
                **{k: protocol[k] for k in ("localization", "faithfulness", "input_size")},
                "images": len(items), "items": _fingerprint(items)}
    return json.loads(json.dumps(settings))  # type: ignore[no-any-return]


def _begin_state(folder: Path, settings: dict[str, Any], resume: bool) -> None:
    """Rank 0, before any rank reads or writes ``folder``: with ``resume`` and an evaluation of
    the same ``settings`` recorded there, nothing; else a new state (the old rank files go
    before the new settings are in place, so that no kill leaves old blocks under new settings).

    Raises:
        CamlensError: ``resume`` of an evaluation of other settings, or ``folder`` cannot be written.
    """
    if resume and _same_state(folder, settings):
        return
    clear_ranks(folder, "the evaluation's state")
    data = json.dumps(settings, indent=1).encode()
    write_atomic(folder / STATE_SETTINGS, lambda fh: fh.write(data), overwrite=True)


def _same_state(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether an evaluation is recorded in ``folder`` (False: none, or unreadable settings).

    Raises:
        CamlensError: it had other settings than ``settings`` (one line: the first that differs).
    """
    try:
        last = json.loads((folder / STATE_SETTINGS).read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(last, dict):
        return False
    for key in sorted(set(settings) | set(last)):
        if last.get(key) != settings.get(key):
            shown = "" if key == "items" else f" ({_short(last.get(key))}, now {_short(settings.get(key))})"
            raise CamlensError(f"{folder}: its last evaluation had another {_SETTING_NAMES.get(key, key)}{shown}; "
                               "resume it with the same settings, or leave out --resume")
    return True


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


_LINE = re.compile(rb'\{"block":(\d{1,18}),"rows":')
"""How every line of a rank file starts (:meth:`_Journal.append`): its block's number is read
without decoding the rest."""


class _Journal:
    """A rank's file of the blocks it scored, one line each, appended with one ``os.write`` on
    an ``O_APPEND`` file (more only if the system writes less): a kill leaves the lines before
    whole, the last one whole or cut; the next line written after a cut one starts a new line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, block: int, tally: EvalTally, rows: str) -> None:
        """Record the scored ``block``: its tally and per-image rows."""
        record = {"block": block, "rows": rows, "tally": tally.to_json()}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()  # ASCII: ensure_ascii escapes the rest
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
                size = os.fstat(self._fd).st_size
                if size and os.pread(self._fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # after a line an earlier attempt's kill cut short
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise CamlensError(f"{self.path}: cannot record the evaluation ({exc.strerror or exc})") from exc

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _recorded(folder: Path, wanted: dict[int, list[int]], tally: EvalTally) -> dict[int, tuple[Path, int]]:
    """Merge into ``tally`` the blocks of ``wanted`` (block number: its images' global indices)
    that any rank file in ``folder`` records, once each; where their lines are (for their rows).
    Lines that do not read back as a tally of their block are not used."""
    found: dict[int, tuple[Path, int]] = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        try:
            with path.open("rb") as fh:
                offset = 0
                for line in fh:
                    start, offset = offset, offset + len(line)
                    match = _LINE.match(line)
                    number = int(match[1]) if match else -1
                    if number not in wanted or number in found:
                        continue
                    try:
                        record = json.loads(line)
                        delta = EvalTally.from_json(record["tally"], tally)
                        block = wanted[number]
                        if (not isinstance(record["rows"], str) or delta.images + len(delta.failed) != len(block)
                                or not {k for k, _ in delta.failed} <= set(block)):
                            continue
                        tally.merge(delta)
                    except (CamlensError, ValueError, KeyError, TypeError, RecursionError):
                        continue  # cut short by a kill, or not this evaluation's
                    found[number] = (path, start)
        except OSError as exc:
            raise CamlensError(f"{path}: cannot read the evaluation's state ({exc.strerror or exc})") from exc
    return found


class _Lines:
    """The per-image rows of recorded blocks, read again where :func:`_recorded` found their
    lines (each rank file opened once): a rank keeps no more rows in memory than one block's."""

    def __init__(self) -> None:
        self._files: dict[Path, BinaryIO] = {}

    def rows(self, path: Path, offset: int) -> str:
        try:
            fh = self._files.get(path) or self._files.setdefault(path, path.open("rb"))
            fh.seek(offset)
            line = fh.readline()
            match = _LINE.match(line)
            rows = json.JSONDecoder().raw_decode(line.decode(), match.end())[0] if match else None
            if not isinstance(rows, str):
                raise ValueError("no rows there")
        except (OSError, ValueError) as exc:
            raise CamlensError(f"{path}: changed while this evaluation was reading it ({exc})") from exc
        return rows

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()


def _raise_if_stopped(parts: Sequence[tuple[int | None, int]], total: int) -> None:
    """Raise :class:`EvaluationInterrupted` if any share (``(interrupted, images done)``) was stopped."""
    signum = next((s for s, _ in parts if s is not None), None)
    if signum is not None:
        raise EvaluationInterrupted(signum, sum(done for _, done in parts), total)


def _spool() -> IO[str]:
    """A temporary file for a rank's rows: in memory up to 16 MB, then on this machine's disk
    (already unlinked there: nothing is left behind, even if the process is killed)."""
    return tempfile.SpooledTemporaryFile(max_size=1 << 24, mode="w+", newline="", encoding="utf-8",  # type: ignore[return-value]
                                         errors="surrogateescape")


def _fingerprint(items: Sequence[Item]) -> str:
    """A hash of the images, in order, with their classes, boxes and the sizes these were drawn on."""
    digest = hashlib.sha256()
    for item in items:
        boxes = [(b.xmin, b.ymin, b.xmax, b.ymax, b.label) for b in item.boxes] if item.boxes is not None else None
        digest.update(f"{item.path}\0{item.label}\0{boxes}\0{item.size}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()


def _check_same_items(world: World, items: Sequence[Item]) -> None:
    """Refuse to start when the ranks' lists of images differ (another folder or --limit, files
    added while the ranks were listing them): their shares would not make up the dataset."""
    seen = world.gather((len(items), _fingerprint(items)))
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
