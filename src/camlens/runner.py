"""Explaining many image files and writing the results: overlays, panels, raw maps, a summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from camlens import render
from camlens.errors import CamlensError, ImageError, TargetError
from camlens.explain import Explanation, Lens, Prediction, TargetSpec
from camlens.imageio import output_path, read_image, safe_part, save_array, save_image, unique_stems, write_atomic


@dataclass(frozen=True)
class RenderOptions:
    """How explanations become files."""

    colormap: str = "jet"
    alpha: float = 0.5
    panel: bool = False
    save_raw: bool = False
    image_format: str = "png"
    overwrite: bool = False


@dataclass
class ImageReport:
    """What happened to one input: its predictions and written files, or its error."""

    source: Path
    predictions: list[Prediction] = field(default_factory=list)
    explanations: list[dict[str, object]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunReport:
    """All inputs of a run, and the summary file written for it."""

    images: list[ImageReport]
    summary: Path | None = None

    @property
    def failed(self) -> list[ImageReport]:
        return [r for r in self.images if r.error]


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
) -> RunReport:
    """Explain every input file, in batches, and write its outputs under ``out``.

    ``layers`` empty means the automatic layer; with several, file names include the layer
    (and ``fuse`` adds the fused map). With ``target="all"`` each image, method and layer gets
    one ``.npy`` of every class's raw map, ``(classes, h, w)``, and one class-grid image.
    ``mask`` is a region file for segmentation targets (see :meth:`Lens.explain`).

    A file that cannot be read, or whose outputs already exist, is reported and skipped; the
    run goes on. Errors that concern every file (unknown method, layer, class) raise at once.
    """
    render.check_colormap(options.colormap)
    render.check_alpha(options.alpha)
    if batch_size < 1:
        raise CamlensError("batch size must be at least 1")
    request = lens.parse_targets(target, mask)  # bad targets and masks fail here, once, before any output
    every = request.every
    layer_spec = list(layers) if len(layers) > 1 else layers[0] if layers else None
    lens.explainer(methods, layer_spec, fuse, layout)  # unknown methods, layers and fusions fail here, before any output
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CamlensError(f"{out}: cannot create output folder ({exc.strerror or exc})") from exc
    reports = [ImageReport(p) for p in inputs]
    stems = dict(zip(inputs, unique_stems(list(inputs), root), strict=True))
    for start in range(0, len(reports), batch_size):
        chunk = reports[start : start + batch_size]
        loaded = []
        for report in chunk:
            try:
                picture = read_image(report.source)
                request.check(picture)
                loaded.append((report, picture))
            except ImageError as exc:
                report.error = str(exc)
            except TargetError as exc:
                report.error = f"{report.source}: {exc}"
        if loaded:
            results = lens.explain([img for _, img in loaded], methods, layer_spec, request, top, fuse, layout=layout)
            for (report, _), explanations in zip(loaded, results, strict=True):
                report.predictions = explanations[0].predictions
                write = _write_all_classes if every else _write
                write(report, explanations, out, stems[report.source], options, multi_layer=len(layers) > 1)
        progress(len(chunk))
    summary = _write_summary(lens, out, methods, reports, options)
    return RunReport(reports, summary)


def _write(
    report: ImageReport, explanations: list[Explanation], out: Path, stem: str, options: RenderOptions, multi_layer: bool
) -> None:
    """Write the overlay (panel, raw map) of every explanation of one image."""
    plan = [(exp, _planned_files(exp, out, stem, options, multi_layer)) for exp in explanations]
    jobs = [(path, partial(_write_one, exp, kind, path, options)) for exp, files in plan for path, kind in files]
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
    ext = "jpg" if options.image_format.lower() in {"jpg", "jpeg"} else "png"
    jobs: list[tuple[Path, Callable[[], Path]]] = []
    entries: list[dict[str, object]] = []
    for (method, layer), exps in groups.items():
        exps = sorted(exps, key=lambda e: e.target.index)
        base = f"{stem}_{safe_part(method)}{f'_{safe_part(layer)}' if multi_layer else ''}_all-classes"
        raw_path, grid_path = output_path(out, f"{base}.npy"), output_path(out, f"{base}.{ext}")
        stack = np.stack([e.raw for e in exps])
        jobs.append((raw_path, partial(save_array, stack, raw_path, options.overwrite)))
        jobs.append((grid_path, partial(_class_grid, exps, stack, grid_path, options)))
        entries.append({"method": method, "layer": layer, "target": "all", "outputs": [str(raw_path), str(grid_path)]})
    if _write_all_or_none(report, jobs, options.overwrite):
        report.explanations = entries


def _class_grid(exps: list[Explanation], stack: np.ndarray, path: Path, options: RenderOptions) -> Path:
    probs = np.array([e.target.probability or 0.0 for e in exps])
    labels = [e.target.label.split(",")[0] for e in exps]
    return save_image(render.class_grid(exps[0].image, stack, labels, probs, options.colormap, options.alpha), path,
                      options.overwrite)


def _write_all_or_none(report: ImageReport, jobs: Sequence[tuple[Path, Callable[[], Path]]], overwrite: bool) -> bool:
    """Run the writes of one image, or none: existing names are refused up front, and files
    already written are removed if a later one fails."""
    existing = [path for path, _ in jobs if path.exists()]
    if existing and not overwrite:
        report.error = f"{report.source}: output {existing[0]} exists; pass --overwrite to replace it"
        return False
    written: list[Path] = []
    try:
        for _, job in jobs:
            written.append(job())
    except CamlensError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        report.error = f"{report.source}: {exc}"
        return False
    report.outputs = written
    return True


def _planned_files(
    exp: Explanation, out: Path, stem: str, options: RenderOptions, multi_layer: bool
) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every file for one explanation; kind is overlay, panel or raw."""
    layer = f"_{safe_part(exp.layer)}" if multi_layer else ""
    base = f"{stem}_{safe_part(exp.method)}{layer}_{exp.tag}"
    ext = "jpg" if options.image_format.lower() in {"jpg", "jpeg"} else "png"
    files = [(output_path(out, f"{base}.{ext}"), "overlay")]
    if options.panel:
        files.append((output_path(out, f"{base}_panel.{ext}"), "panel"))
    if options.save_raw:
        files.append((output_path(out, f"{base}.npy"), "raw"))
    return files


def _write_one(exp: Explanation, kind: str, path: Path, options: RenderOptions) -> Path:
    if kind == "raw":
        return save_array(exp.raw, path, options.overwrite)
    render_fn = exp.panel if kind == "panel" else exp.overlay
    return save_image(render_fn(options.colormap, options.alpha), path, options.overwrite)


def _write_summary(
    lens: Lens, out: Path, methods: Sequence[str], reports: list[ImageReport], options: RenderOptions
) -> Path:
    summary = {
        "model": lens.loaded.name,
        "methods": list(methods),
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
    }
    data = json.dumps(summary, indent=2).encode()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = out / (f"camlens-run-{stamp}.json" if n == 0 else f"camlens-run-{stamp}-{n}.json")
        try:
            return write_atomic(path, lambda fh: fh.write(data))
        except CamlensError:
            if not path.exists():
                raise
    raise CamlensError(f"{out}: too many run summaries named camlens-run-{stamp}*.json")
