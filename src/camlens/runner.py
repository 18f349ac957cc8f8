"""Explaining many image files and writing the results: overlays, panels, raw maps, a summary."""

from __future__ import annotations

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
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from camlens import arguments, mapstore, render
from camlens.core.augment import Augment
from camlens.core.record import MAX_BATCH, Progress
from camlens.core.targets import AllClasses, Top
from camlens.distributed import ALONE, World
from camlens.errors import CamlensError
from camlens.imageio import (
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
    """
    options.check()
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
                **{k: v for k, v in asdict(options).items() if k != "overwrite"}}
    store_path = out / mapstore.NAME
    if options.store and not resume and not options.overwrite and store_path.exists():
        raise CamlensError(f"{store_path}: exists; pass overwrite=True to replace it, or resume=True to finish its run")
    ledger = open_ledger(out, settings, inputs, resume, world)
    store = _open_store(lens, store_path, inputs, request, methods, layer_spec, layers, top, fuse, layout, batch_size,
                        augment, ledger, world) if options.store else None
    stems = dict(zip(inputs, unique_stems(list(inputs), root), strict=True))
    mine = world.share(len(inputs), batch_size)
    share = [i for i in mine if not _block_done(i, batch_size, len(inputs), ledger)]
    if len(share) < len(mine):
        progress(len(mine) - len(share))  # done by earlier attempts
    reports: dict[int, ImageReport] = {}
    write = _write_all_classes if every else _write
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
                    for item, explanations in zip(loaded, results, strict=True):
                        index = share[item.index]
                        if index in ledger.done:  # finished by an earlier attempt; its batch is done again whole
                            continue
                        report = reports[index]
                        report.predictions = explanations[0].predictions
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
    summary_path = out / ledger.summary_name
    summary = None
    if news or interrupted or (resume and not pending and not summary_path.exists()):
        summary = _write_summary(lens, summary_path, methods, merged, options, pending, interrupted, augment)
        if not pending:
            ledger.mark_complete()
    return RunReport(merged, summary, pending, interrupted)


def _open_store(lens: Lens, path: Path, inputs: Sequence[Path], request: TargetRequest, methods: list[str],
                layer_spec: str | list[str] | None, layers: list[str], top: int, fuse: str | None, layout: str | None,
                block: int, augment: Augment | None, ledger: Ledger, world: World) -> mapstore.MapStore:
    """The run's map store: rank 0 creates it (its maps shaped like those of the first input it
    can read) unless this run is resumed with its store there; the others open it then."""
    made: str | None = None
    if world.main and not (ledger.state["attempt"] > 0 and path.exists()):
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
        return {"source": str(report.source), "error": report.error, **({"existed": True} if report.existed else {})}
    return {"source": str(report.source), "predictions": [p.to_dict() for p in report.predictions],
            "explanations": report.explanations, "outputs": [str(p) for p in report.outputs]}


def _report(source: Path, entry: dict[str, Any]) -> ImageReport:
    """An input's report as the ledger recorded it."""
    predictions = [Prediction(p["index"], p["label"], p["probability"]) for p in entry.get("predictions", [])]
    return ImageReport(source, predictions, entry.get("explanations", []), [Path(p) for p in entry.get("outputs", [])],
                       entry.get("error"), bool(entry.get("existed")))


def _write_and_record(write: Callable[..., None], report: ImageReport, explanations: list[Explanation], out: Path,
                      stem: str, options: RenderOptions, multi_layer: bool, ledger: Ledger, index: int) -> None:
    """Write one image's files, noted in the ledger before and after; files that an earlier
    attempt of this run had begun to write are replaced."""
    if ledger.begin(index) and not options.overwrite:
        options = replace(options, overwrite=True)
    write(report, explanations, out, stem, options, multi_layer)
    ledger.finish(index, _entry(report))


def _write(
    report: ImageReport, explanations: list[Explanation], out: Path, stem: str, options: RenderOptions, multi_layer: bool
) -> None:
    """Write the overlay (panel, raw map) of every explanation of one image."""
    plan = [(exp, _planned_files(exp, out, stem, options, multi_layer)) for exp in explanations]
    jobs = [(path, _writer(exp, kind, path, options)) for exp, files in plan for path, kind in files]
    if _write_all_or_none(report, jobs, options.overwrite):
        report.explanations = [
            {"method": e.method, "layer": e.layer, "kind": e.kind, "target": e.target.to_dict(), "explained": e.name,
             "outputs": [str(p) for p, _ in files]}
            for e, files in plan
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
        report.error = f"{report.source}: {exc}"
        return False
    except Exception as exc:  # noqa: BLE001  (a rendering failure spoils this image, not the run)
        report.error = f"{report.source}: cannot render its outputs ({type(exc).__name__}: {exc})"
        return False
    return True


def _planned_files(
    exp: Explanation, out: Path, stem: str, options: RenderOptions, multi_layer: bool
) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every file for one explanation; kind is overlay, panel or raw."""
    layer = f"_{safe_part(exp.layer)}" if multi_layer else ""
    base = f"{stem}_{safe_part(exp.method)}{layer}_{exp.tag}"
    ext = options.suffix
    files = [(output_path(out, f"{base}.{ext}"), "overlay")] if options.overlay else []
    if options.panel:
        files.append((output_path(out, f"{base}_panel.{ext}"), "panel"))
    if options.save_raw:
        files.append((output_path(out, f"{base}.npy"), "raw"))
    return files


def _writer(exp: Explanation, kind: str, path: Path, options: RenderOptions) -> Writer:
    """What writes one file of ``exp``: its raw map, or its overlay or panel (rendered then)."""
    if kind == "raw":
        return array_writer(exp.raw)
    render_fn = exp.panel if kind == "panel" else exp.overlay
    return image_writer(path, lambda: render_fn(options.colormap, options.alpha), options.png_level)


def _write_summary(
    lens: Lens, path: Path, methods: Sequence[str], reports: list[ImageReport], options: RenderOptions,
    pending: list[Path], interrupted: int | None, augment: Augment | None = None,
) -> Path:
    summary = {
        "model": lens.loaded.name,
        "interrupted": signal.Signals(interrupted).name if interrupted else None,
        "methods": list(methods),
        "augment": repr(augment) if augment else None,
        "colormap": options.colormap,
        "alpha": options.alpha,
        "images": [
            {
                "source": str(r.source),
                "predictions": [p.to_dict() for p in r.predictions],
                "explanations": r.explanations,
            }
            for r in reports
            if not r.error
        ],
        "failed": [{"source": str(r.source), "error": r.error} for r in reports if r.error],
        "not_tried": [str(p) for p in pending],
    }
    data = json.dumps(summary, indent=2).encode()
    return write_atomic(path, lambda fh: fh.write(data), overwrite=True)  # the name is this run's (see the ledger)
