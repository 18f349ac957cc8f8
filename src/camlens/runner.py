"""Explaining many image files and writing the results: overlays, panels, raw maps, a summary."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camlens import render
from camlens.errors import CamlensError, ImageError
from camlens.explain import Explanation, Lens, Prediction, TargetSpec
from camlens.imageio import read_image, save_array, save_image, unique_stems, write_atomic


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
    layers: Sequence[str | None],
    target: TargetSpec = None,
    top: int = 5,
    options: RenderOptions = RenderOptions(),
    batch_size: int = 8,
    root: Path | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> RunReport:
    """Explain every input file, in batches, and write its outputs under ``out``.

    A file that cannot be read, or whose outputs already exist, is reported and skipped; the
    run goes on. Errors that concern every file (unknown method, layer, class) raise at once.
    """
    render.check_colormap(options.colormap)
    if not 0.0 <= options.alpha <= 1.0:
        raise CamlensError(f"alpha must be between 0 and 1, not {options.alpha}")
    if batch_size < 1:
        raise CamlensError("batch size must be at least 1")
    lens.parse_targets(target)
    explainer_layers: list[str | None] = list(layers)
    reports = [ImageReport(p) for p in inputs]
    stems = dict(zip(inputs, unique_stems(list(inputs), root), strict=True))
    for start in range(0, len(reports), batch_size):
        chunk = reports[start : start + batch_size]
        loaded = []
        for report in chunk:
            try:
                loaded.append((report, read_image(report.source)))
            except ImageError as exc:
                report.error = str(exc)
        if loaded:
            results = lens.explain(
                [img for _, img in loaded], methods, explainer_layers if len(layers) > 1 else layers[0], target, top
            )
            for (report, _), explanations in zip(loaded, results, strict=True):
                report.predictions = explanations[0].predictions
                _write(report, explanations, out, stems[report.source], options, multi_layer=len(layers) > 1)
        progress(len(chunk))
    summary = _write_summary(lens, out, methods, reports, options)
    return RunReport(reports, summary)


def _write(
    report: ImageReport, explanations: list[Explanation], out: Path, stem: str, options: RenderOptions, multi_layer: bool
) -> None:
    """Write all files of one image, or none: existing names are refused up front, and files
    already written are removed if a later one fails."""
    ext = "jpg" if options.image_format.lower() in {"jpg", "jpeg"} else "png"
    plan: list[tuple[Explanation, list[tuple[Path, Callable[[Path], Path]]]]] = []
    for exp in explanations:
        base = f"{stem}_{exp.method}" + (f"_{_safe(exp.layer)}" if multi_layer else "")
        base = out / f"{base}_{exp.target.index}-{_safe(exp.target.label.split(',')[0])}"
        files = [(base.with_name(f"{base.name}.{ext}"), lambda p, e=exp: save_image(e.overlay(options.colormap, options.alpha), p, options.overwrite))]
        if options.panel:
            files.append((base.with_name(f"{base.name}_panel.{ext}"), lambda p, e=exp: save_image(e.panel(options.colormap, options.alpha), p, options.overwrite)))
        if options.save_raw:
            files.append((base.with_name(f"{base.name}.npy"), lambda p, e=exp: save_array(e.raw, p, options.overwrite)))
        plan.append((exp, files))
    existing = [p for _, files in plan for p, _ in files if p.exists()]
    if existing and not options.overwrite:
        report.error = f"{report.source}: output {existing[0]} exists; pass --overwrite to replace it"
        return
    written: list[Path] = []
    try:
        for _, files in plan:
            for path, write in files:
                written.append(write(path))
    except CamlensError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        report.error = f"{report.source}: {exc}"
        return
    report.explanations = [
        {"method": e.method, "layer": e.layer, "target": e.target.to_dict(), "outputs": [str(p) for p, _ in files]}
        for e, files in plan
    ]


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


def _safe(text: str) -> str:
    """A file-name-safe form of a label or layer name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text.strip()).strip("-") or "x"
