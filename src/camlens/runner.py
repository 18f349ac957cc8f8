"""Explaining many image files and writing the results: overlays, panels, raw maps, a summary;
with :class:`Boxing`, boxes around each map's strong regions too (``camlens localize``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image

from camlens import arguments, mapstore, render
from camlens.core.augment import Augment
from camlens.core.record import MAX_BATCH, Progress
from camlens.core.targets import AllClasses, Top
from camlens.distributed import ALONE, World
from camlens.errors import CamlensError
from camlens.imageio import (
    ORIGINAL_SIZE,
    array_writer,
    clean_leftovers,
    image_writer,
    output_path,
    safe_part,
    unique_stems,
    write_atomic,
    write_group,
)
from camlens.ledger import Ledger, open_ledger
from camlens.lens import Explanation, Lens, Prediction, TargetRequest, TargetSpec
from camlens.pipeline import WRITERS, Behind, default_workers, loaded_batches, readable

if TYPE_CHECKING:
    from camlens.evaluation.annotations import Annotations
    from camlens.evaluation.boxes import Box

Writer = Callable[[BinaryIO], object]


IMAGE_FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
"""Output image formats by name, and the suffix each writes."""


@dataclass(frozen=True)
class RenderOptions:
    """How explanations become files: ``overlay`` (the map over the image), ``panel``
    (image, map, overlay side by side), ``save_raw`` (the map at layer resolution as
    ``.npy``), ``store`` (every raw map of the run in one Zarr store, see
    :mod:`camlens.mapstore`); images as ``image_format`` (png, jpg or webp; PNG at zlib
    ``png_level``, 0 fastest to 9 smallest)."""

    colormap: str = "jet"
    alpha: float = 0.5
    panel: bool = False
    save_raw: bool = False
    image_format: str = "png"
    overwrite: bool = False
    overlay: bool = True
    png_level: int = 6
    store: bool = False

    @property
    def suffix(self) -> str:
        return IMAGE_FORMATS[self.image_format.lower()]

    def check(self) -> None:
        """Refuse options that cannot work, before any output."""
        render.check_colormap(self.colormap)
        render.check_alpha(self.alpha)
        if self.image_format.lower() not in IMAGE_FORMATS:
            raise CamlensError(f"unknown image format {self.image_format!r}; use png, jpg or webp")
        if not (isinstance(self.png_level, int) and 0 <= self.png_level <= 9):
            raise CamlensError(f"PNG compression level must be 0 to 9, not {self.png_level!r}")
        if not (self.overlay or self.panel or self.save_raw or self.store):
            raise CamlensError("nothing to write: no overlay, no panel, no raw map and no map store")


@dataclass(frozen=True)
class Boxing:
    """Boxes around the strong parts of every map (see
    :func:`camlens.evaluation.boxes.boxes_from_map`): around the largest region at least
    ``threshold`` of the map's range (the CAM paper's rule at 0.2), or, unless ``largest``, every
    region of at least ``min_area`` (a fraction of the image). ``truth`` holds the true boxes,
    found for each input by :meth:`~camlens.evaluation.annotations.Annotations.for_image` (relative
    to the run's ``root``). The overlays get the boxes drawn (found red, true green) and are named
    ``..._boxes``; the summary lists the boxes and, for inputs with true boxes, the best IoU."""

    threshold: float = 0.2
    largest: bool = True
    min_area: float = 0.0
    truth: Annotations | None = None

    def check(self, options: RenderOptions) -> None:
        """Refuse settings that cannot work, before any output."""
        arguments.number(self.threshold, "threshold", 0.0, 1.0)
        arguments.number(self.min_area, "min_area", 0.0, 1.0)
        if not options.overlay:
            raise CamlensError("boxes are drawn on the overlays: boxing needs overlay=True")

    def settings(self) -> dict[str, object]:
        """What a resumed run must keep: the rule, and the true boxes (a hash of them)."""
        truth = None if self.truth is None else hashlib.sha256(repr(sorted(self.truth.boxes.items())).encode()).hexdigest()
        return {"threshold": self.threshold, "largest": self.largest, "min_area": self.min_area, "truth": truth}

    def true_boxes(self, path: Path, root: Path | None, picture: Image.Image) -> list[Box]:
        """The true boxes of the input ``path`` in the pixels of ``picture``, as it was read
        (scaled when it was read downscaled); none when it is not annotated."""
        boxes = self.truth.for_image(path, root) if self.truth is not None else None
        if boxes and ORIGINAL_SIZE in picture.info:  # read downscaled: boxes are in the file's pixels
            width, height = picture.info[ORIGINAL_SIZE]
            boxes = [b.scaled(picture.width / width, picture.height / height) for b in boxes]
        return boxes or []

    def found(self, exp: Explanation) -> list[Box]:
        """The boxes of one map."""
        from camlens.evaluation.boxes import boxes_from_map

        return boxes_from_map(exp.heatmap, self.threshold, largest=self.largest, min_area=self.min_area)

    @staticmethod
    def entry(found: list[Box], truth: list[Box], drawn: Path) -> dict[str, object]:
        """What an explanation's summary entry says of its boxes: them, the overlay they are
        ``drawn`` on, and the best IoU with the true boxes when there are any (the best box
        counts, as in Choe et al.)."""
        from camlens.evaluation.boxes import best_iou

        iou = {"iou": round(best_iou(found, truth), 4)} if truth else {}
        return {"boxes": [b.to_dict() for b in found], "output": str(drawn), **iou}


@dataclass
class ImageReport:
    """What happened to one input: its predictions and written files, or its error."""

    source: Path
    predictions: list[Prediction] = field(default_factory=list)
    explanations: list[dict[str, object]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    existed: bool = False
    """Skipped because its outputs are already there (no ``overwrite``)."""
    retry: bool = False
    """Its files could not be written or rendered: a resumed run tries again."""
    size: tuple[int, int] | None = None
    """With :class:`Boxing`: ``(width, height)`` of the input as read, the pixels of its boxes."""
    true_boxes: list[Box] | None = None
    """With :class:`Boxing`: its true boxes (none when it is not annotated)."""


@dataclass
class RunReport:
    """The inputs a run tried, those a stop request left untried, and its summary file."""

    images: list[ImageReport]
    summary: Path | None = None
    pending: list[Path] = field(default_factory=list)
    interrupted: int | None = None
    """The signal that stopped the run early (``signal.SIGINT``, ``SIGTERM``), else None."""

    @property
    def failed(self) -> list[ImageReport]:
        return [r for r in self.images if r.error]


class StopRequest:
    """Set by :func:`stop_on_signals` when Ctrl-C or SIGTERM asks a run to stop; a run polls it
    between batches."""

    def __init__(self) -> None:
        self.signal: int | None = None


@contextmanager
def stop_on_signals(notify: Callable[[int], None] = lambda signum: None) -> Iterator[StopRequest]:
    """While inside, the first Ctrl-C (SIGINT) or SIGTERM only sets the yielded request (and
    calls ``notify``), so that a run finishes its current batch, writes its summary and
    returns; a second one goes to the handler that was there before (by default Python's:
    ``KeyboardInterrupt``, or termination). Outside the main thread, where signals cannot be
    handled, the request is never set."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    caught: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, object] = {signum: signal.getsignal(signum) for signum in caught}

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.signal is None:
            stop.signal = signum
            notify(signum)
            return
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in caught:
        signal.signal(signum, handle)
    try:
        yield stop
    finally:
        for number, before in previous.items():
            signal.signal(number, before)  # type: ignore[arg-type]


def run(
    lens: Lens,
    inputs: Sequence[Path],
    out: Path,
    *,
    methods: Sequence[str],
    layers: Sequence[str] = (),
    target: TargetSpec = None,
    top: int = 5,
    options: RenderOptions = RenderOptions(),
    batch_size: int = 8,
    root: Path | None = None,
    progress: Callable[[int], None] = lambda n: None,
    fuse: str | None = None,
    mask: Path | None = None,
    layout: str | None = None,
    stop: StopRequest | None = None,
    max_batch: int = MAX_BATCH,
    steps: Progress | None = None,
    augment: Augment | None = None,
    workers: int | None = None,
    resume: bool = False,
    world: World = ALONE,
    boxing: Boxing | None = None,
    summary_name: str | None = None,
) -> RunReport:
    """Explain every input file, in batches, and write its outputs under ``out``: files are
    decoded by ``workers`` processes ahead of the model (default
    :func:`camlens.pipeline.default_workers`: none on the CPU; 0: in this process) and written by threads
    behind it (see :mod:`camlens.pipeline`).

    ``layers`` empty means the automatic layer; with several, file names include the layer
    (and ``fuse`` adds the fused map). With ``target="all"`` each image, method and layer gets
    one ``.npy`` of every class's raw map, ``(classes, h, w)``, and one class-grid image.
    ``mask`` is a region file for segmentation targets (see :meth:`Lens.explain`).

    A file that cannot be read, whose outputs already exist, or that fails to render is
    reported and skipped; the run goes on. Errors that concern every file (unknown method,
    layer, class) raise at once. Each image gets all of its files or none (see
    :func:`camlens.imageio.write_group`); what a killed earlier run left in ``out`` is finished
    or removed first. When ``stop`` is set (see :func:`stop_on_signals`) the run ends after the
    current batch: the summary says so and lists the inputs not tried. A rerun that changes
    nothing (every output already there) writes no summary either. ``progress`` is told
    how many inputs each batch finished; ``steps`` how far the methods that run the model
    again are within a batch, and ``max_batch`` bounds their inputs per forward; ``augment``
    averages every map over copies of each image (see :meth:`Lens.explain`).

    The run keeps a ledger in ``out`` (see :mod:`camlens.ledger`): with ``resume``, a run that
    was stopped or killed with the same settings and inputs does only the batches it had not
    finished, and its summary is the one an uninterrupted run writes. ``world`` is this
    process's rank in a ``torchrun`` run (see :mod:`camlens.distributed`): each rank does its
    share of the batches, file names are decided from the whole list, and rank 0 writes the
    summary of the whole run and returns its report (the others return theirs).

    With ``boxing`` every map is boxed too (see :class:`Boxing`): its overlay is drawn with the
    boxes and the summary is the one ``camlens localize`` writes. The summary is named
    ``summary_name`` in ``out`` (refused when it exists, unless ``overwrite`` or ``resume``), by
    default ``camlens-run-{time}.json`` with the time the run started.
    """
    options.check()
    if boxing is not None:
        boxing.check(options)
    batch_size, top = arguments.count(batch_size, "batch_size"), arguments.count(top, "top")
    inputs, out = arguments.paths(inputs, "inputs"), arguments.path(out, "out")
    methods = [methods] if isinstance(methods, str) else list(methods)
    layers = [layers] if isinstance(layers, str) else list(layers)
    request = lens.parse_targets(target, mask)  # bad targets and masks fail here, once, before any output
    every = request.every
    layer_spec = list(layers) if len(layers) > 1 else layers[0] if layers else None
    lens.explainer(methods, layer_spec, fuse, layout, max_batch, augment)  # bad methods, layers, fusions fail here, first
    if world.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CamlensError(f"{out}: cannot create output folder ({exc.strerror or exc})") from exc
        clean_leftovers(out)  # rank 0 alone, before any rank writes: it cannot tell other machines' live writers
    settings = {"model": lens.loaded.name, "classes": len(lens.labels), "methods": methods, "layers": layers,
                "target": str(target), "mask": str(mask), "fuse": fuse, "layout": layout, "top": top,
                "batch_size": batch_size, "max_batch": max_batch, "augment": repr(augment), "root": str(root),
                "boxing": None if boxing is None else boxing.settings(),
                **{k: v for k, v in asdict(options).items() if k != "overwrite"}}
    store_path = out / mapstore.NAME
    fixed = output_path(out, summary_name) if summary_name is not None else None
    keep = [] if options.overwrite else ([store_path] if options.store else []) + ([fixed] if fixed is not None else [])
    ledger = open_ledger(out, settings, inputs, resume, world, keep)
    store = _open_store(lens, store_path, inputs, request, methods, layer_spec, layers, top, fuse, layout, batch_size,
                        augment, ledger, world) if options.store else None
    stems = dict(zip(inputs, unique_stems(list(inputs), root), strict=True))
    mine = world.share(len(inputs), batch_size)
    share = world.share(len(inputs), batch_size, skip=lambda start: _block_done(start, batch_size, len(inputs), ledger))
    if len(share) < len(mine):
        progress(len(mine) - len(share))  # done by earlier attempts
    reports: dict[int, ImageReport] = {}
    write = _write_all_classes if every and boxing is None else partial(_write, boxing=boxing)
    workers = default_workers(lens.loaded.device) if workers is None else workers
    paths = [inputs[i] for i in share]
    batches = loaded_batches(paths, batch_size, prepare=lens.loaded.preprocessing, check=request.check, workers=workers)
    interrupted: int | None = None
    try:
        with Behind(WRITERS) as behind, closing(batches):
            for batch in batches:
                if stop is not None and stop.signal is not None:
                    interrupted = stop.signal
                    break
                for item in batch:
                    index = share[item.index]
                    reports[index] = ImageReport(item.path, error=item.error)
                    if item.error is not None and index not in ledger.done:
                        ledger.finish(index, _entry(reports[index]))
                loaded, pictures, prepared = readable(batch)
                if loaded:
                    results = lens.explain(pictures, methods, layer_spec, request, top, fuse, layout=layout,
                                           max_batch=max_batch, progress=steps, augment=augment, prepared=prepared)
                    if store is not None:  # before the ledger says any of them is done
                        store.write(share[batch[0].index], len(batch),
                                    {share[item.index]: exps for item, exps in zip(loaded, results, strict=True)})
                    for item, picture, explanations in zip(loaded, pictures, results, strict=True):
                        index = share[item.index]
                        if index in ledger.done:  # finished by an earlier attempt; its batch is done again whole
                            continue
                        report = reports[index]
                        report.predictions = explanations[0].predictions
                        if boxing is not None:
                            report.size, report.true_boxes = picture.size, boxing.true_boxes(item.path, root, picture)
                        behind.submit(_write_and_record, write, report, explanations, out, stems[report.source],
                                      options, len(layers) > 1, ledger, index)
                progress(len(batch))
    finally:
        ledger.close()
    news = any(r.explanations or (r.error and not r.existed) for r in reports.values())
    gathered = world.gather((news, interrupted))
    if gathered is None:
        return RunReport([r for _, r in sorted(reports.items())], None, [], interrupted)
    news = any(n for n, _ in gathered)
    interrupted = next((s for _, s in gathered if s is not None), None)
    entries = ledger.finished(len(inputs))
    merged = [_report(inputs[i], entries[i]) for i in sorted(entries)]
    pending = [inputs[i] for i in range(len(inputs)) if i not in entries]
    interrupted = interrupted if pending else None
    summary_path = fixed or out / ledger.summary_name
    summary = None
    if news or interrupted or (resume and not pending and not summary_path.exists()):
        summary = _write_summary(lens, summary_path, methods, merged, options, pending, interrupted, augment, boxing)
        if not pending:
            ledger.mark_complete()
    return RunReport(merged, summary, pending, interrupted)


def _open_store(lens: Lens, path: Path, inputs: Sequence[Path], request: TargetRequest, methods: list[str],
                layer_spec: str | list[str] | None, layers: list[str], top: int, fuse: str | None, layout: str | None,
                block: int, augment: Augment | None, ledger: Ledger, world: World) -> mapstore.MapStore:
    """The run's map store: rank 0 creates it (its maps shaped like those of the first input it
    can read) unless this run is resumed with its store there; the others open it then."""
    made: str | None = None
    if ledger.state["attempt"] > 0 and not path.exists():
        raise CamlensError(f"{path}: the map store of the run being resumed is gone; start the run again without "
                           "resume=True")
    if world.main and ledger.state["attempt"] == 0:
        try:
            sample = _first_explained(lens, inputs, request, methods, layer_spec, top, fuse, layout, augment)
            about = {"model": lens.loaded.name, "labels": list(lens.labels.names), "methods": methods, "layers": layers,
                     "fuse": fuse, "target": [str(t) for t in request.targets]}
            mapstore.MapStore.create(path, inputs, sample, slots=_slots(request, len(lens.labels)),
                                     top=min(top, len(lens.labels)), block=block,
                                     about=about)
        except CamlensError as exc:
            made = str(exc)
    made = world.broadcast(made)
    if made is not None:
        raise CamlensError(made)
    return mapstore.MapStore.open(path)


def _first_explained(lens: Lens, inputs: Sequence[Path], request: TargetRequest, methods: list[str],
                     layer_spec: str | list[str] | None, top: int, fuse: str | None, layout: str | None,
                     augment: Augment | None) -> list[Explanation]:
    """The explanations of the first input that can be read (the shapes of the run's maps)."""
    for batch in loaded_batches(inputs, 1, check=request.check, workers=0):
        if batch[0].picture is not None:
            return lens.explain([batch[0].picture], methods, layer_spec, request, top, fuse, layout=layout,
                                augment=augment)[0]
    raise CamlensError("no input can be read")


def _slots(request: TargetRequest, classes: int) -> int:
    """The most targets one image can get: ``k`` for top-k, every class for ``all``, else one
    per target and box."""
    count = sum(t.k if isinstance(t, Top) else classes if isinstance(t, AllClasses) else 1 for t in request.targets)
    return max(1, count + len(request.boxes))


def _block_done(index: int, size: int, count: int, ledger: Ledger) -> bool:
    """Whether every input of ``index``'s block (batch) was finished by an earlier attempt."""
    start = index - index % size
    return all(i in ledger.done for i in range(start, min(start + size, count)))


def _entry(report: ImageReport) -> dict[str, object]:
    """One input's record in the ledger and the summary."""
    if report.error:
        flags = {**({"existed": True} if report.existed else {}), **({"retry": True} if report.retry else {})}
        return {"source": str(report.source), "error": report.error, **flags}
    boxed = {} if report.size is None else {"size": list(report.size),
                                            "true_boxes": [b.to_dict() for b in report.true_boxes or []]}
    return {"source": str(report.source), "predictions": [p.to_dict() for p in report.predictions],
            "explanations": report.explanations, "outputs": [str(p) for p in report.outputs], **boxed}


def _report(source: Path, entry: dict[str, Any]) -> ImageReport:
    """An input's report as the ledger recorded it."""
    predictions = [Prediction(p["index"], p["label"], p["probability"]) for p in entry.get("predictions", [])]
    report = ImageReport(source, predictions, entry.get("explanations", []),
                         [Path(p) for p in entry.get("outputs", [])], entry.get("error"), bool(entry.get("existed")))
    if "size" in entry:
        from camlens.evaluation.boxes import Box

        report.size, report.true_boxes = tuple(entry["size"]), [Box(**b) for b in entry["true_boxes"]]
    return report


def _write_and_record(write: Callable[..., None], report: ImageReport, explanations: list[Explanation], out: Path,
                      stem: str, options: RenderOptions, multi_layer: bool, ledger: Ledger, index: int) -> None:
    """Write one image's files, noted in the ledger before and after; files that an earlier
    attempt of this run had begun to write are replaced."""
    if ledger.begin(index) and not options.overwrite:
        options = replace(options, overwrite=True)
    write(report, explanations, out, stem, options, multi_layer)
    ledger.finish(index, _entry(report))


def _write(
    report: ImageReport, explanations: list[Explanation], out: Path, stem: str, options: RenderOptions,
    multi_layer: bool, boxing: Boxing | None = None,
) -> None:
    """Write the overlay (panel, raw map) of every explanation of one image; with ``boxing``,
    each overlay with its map's boxes drawn, and the boxes in its entry."""
    truth = report.true_boxes or []
    try:
        found = [boxing.found(exp) if boxing is not None else [] for exp in explanations]
    except CamlensError as exc:  # a map that cannot be boxed (not finite) spoils this image, not the run
        report.error = f"{report.source}: {exc}"
        return
    plan = [(exp, _planned_files(exp, out, stem, options, multi_layer, boxing is not None), boxes)
            for exp, boxes in zip(explanations, found, strict=True)]
    jobs = [(path, _writer(exp, kind, path, options, boxes, truth)) for exp, files, boxes in plan for path, kind in files]
    if _write_all_or_none(report, jobs, options.overwrite):
        report.explanations = [
            {"method": e.method, "layer": e.layer, "kind": e.kind, "target": e.target.to_dict(), "explained": e.name,
             "outputs": [str(p) for p, _ in files], **(boxing.entry(boxes, truth, files[0][0]) if boxing is not None else {})}
            for e, files, boxes in plan
        ]


def _write_all_classes(
    report: ImageReport, explanations: list[Explanation], out: Path, stem: str, options: RenderOptions, multi_layer: bool
) -> None:
    """Per method and layer: every class's raw map as one ``(classes, h, w)`` ``.npy`` and a
    class grid (cells ordered by probability)."""
    groups: dict[tuple[str, str], list[Explanation]] = {}
    for exp in explanations:
        groups.setdefault((exp.method, exp.layer), []).append(exp)
    ext = options.suffix
    jobs: list[tuple[Path, Writer]] = []
    entries: list[dict[str, object]] = []
    for (method, layer), exps in groups.items():
        exps = sorted(exps, key=lambda e: e.target.index)
        base = f"{stem}_{safe_part(method)}{f'_{safe_part(layer)}' if multi_layer else ''}_all-classes"
        raw_path, grid_path = output_path(out, f"{base}.npy"), output_path(out, f"{base}.{ext}")
        stack = np.stack([e.raw for e in exps])
        jobs.append((raw_path, array_writer(stack)))
        jobs.append((grid_path, image_writer(grid_path, partial(_class_grid, exps, stack, options), options.png_level)))
        entries.append({"method": method, "layer": layer, "target": "all", "outputs": [str(raw_path), str(grid_path)]})
    if _write_all_or_none(report, jobs, options.overwrite):
        report.explanations = entries


def _class_grid(exps: list[Explanation], stack: np.ndarray, options: RenderOptions) -> Image.Image:
    probs = np.array([e.target.probability or 0.0 for e in exps])
    labels = [e.target.label.split(",")[0] for e in exps]
    return render.class_grid(exps[0].image, stack, labels, probs, options.colormap, options.alpha)


def _write_all_or_none(report: ImageReport, jobs: Sequence[tuple[Path, Writer]], overwrite: bool) -> bool:
    """Render and write the files of one image, all of them or none (an existing name, a
    failed write or a rendering error leaves nothing); say why in ``report.error``."""
    existing = [path for path, _ in jobs if path.exists()]
    if existing and not overwrite:
        report.error = f"{report.source}: output {existing[0]} exists; pass overwrite=True to replace it"
        report.existed = True
        return False
    try:
        report.outputs = write_group(jobs, overwrite)
    except CamlensError as exc:
        report.error, report.retry = f"{report.source}: {exc}", True
        return False
    except Exception as exc:  # noqa: BLE001  (a rendering failure spoils this image, not the run)
        report.error, report.retry = f"{report.source}: cannot render its outputs ({type(exc).__name__}: {exc})", True
        return False
    return True


def _planned_files(
    exp: Explanation, out: Path, stem: str, options: RenderOptions, multi_layer: bool, boxed: bool = False
) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every file for one explanation; kind is overlay, panel or raw (the
    overlay ``boxed`` is named ``..._boxes``)."""
    layer = f"_{safe_part(exp.layer)}" if multi_layer else ""
    base = f"{stem}_{safe_part(exp.method)}{layer}_{exp.tag}"
    ext = options.suffix
    files = [(output_path(out, f"{base}{'_boxes' if boxed else ''}.{ext}"), "overlay")] if options.overlay else []
    if options.panel:
        files.append((output_path(out, f"{base}_panel.{ext}"), "panel"))
    if options.save_raw:
        files.append((output_path(out, f"{base}.npy"), "raw"))
    return files


def _writer(exp: Explanation, kind: str, path: Path, options: RenderOptions, found: list[Box], truth: list[Box]
            ) -> Writer:
    """What writes one file of ``exp``: its raw map, or its overlay (with the ``truth`` boxes in
    green and the ``found`` ones in red) or panel, rendered then."""
    if kind == "raw":
        return array_writer(exp.raw)
    if kind == "panel":
        return image_writer(path, lambda: exp.panel(options.colormap, options.alpha), options.png_level)

    def overlay() -> Image.Image:
        picture = exp.overlay(options.colormap, options.alpha)
        if truth:
            picture = render.draw_boxes(picture, truth, (0, 220, 0))
        return render.draw_boxes(picture, found, (255, 0, 0)) if found else picture

    return image_writer(path, overlay, options.png_level)


def _write_summary(
    lens: Lens, path: Path, methods: Sequence[str], reports: list[ImageReport], options: RenderOptions,
    pending: list[Path], interrupted: int | None, augment: Augment | None, boxing: Boxing | None,
) -> Path:
    """The run's summary: its settings, an entry per input done (with ``boxing``, the record
    ``camlens localize`` writes), the inputs that failed and those not tried."""
    rule = {} if boxing is None else {"threshold": boxing.threshold, "largest_only": boxing.largest,
                                      "min_area": boxing.min_area}
    summary = {
        "model": lens.loaded.name,
        **rule,
        "interrupted": signal.Signals(interrupted).name if interrupted else None,
        "methods": list(methods),
        "augment": repr(augment) if augment else None,
        "colormap": options.colormap,
        "alpha": options.alpha,
        "images": [_boxed_record(r) if boxing is not None else
                   {"source": str(r.source), "predictions": [p.to_dict() for p in r.predictions],
                    "explanations": r.explanations}
                   for r in reports if not r.error],
        "failed": [{"source": str(r.source), "error": r.error} for r in reports if r.error],
        "not_tried": [str(p) for p in pending],
    }
    data = json.dumps(summary, indent=2).encode()
    return write_atomic(path, lambda fh: fh.write(data), overwrite=True)  # the name is this run's (see the ledger)


def _boxed_record(report: ImageReport) -> dict[str, object]:
    """An input's record in the summary of a run with :class:`Boxing`: its size, its true
    boxes, and per map its boxes, its drawn overlay and (with true boxes) the best IoU."""
    return {"source": str(report.source), "size": list(report.size or ()),
            "true_boxes": [b.to_dict() for b in report.true_boxes or []],
            "maps": [{k: e[k] for k in ("method", "layer", "target", "boxes", "output", "iou") if k in e}
                     for e in report.explanations]}
