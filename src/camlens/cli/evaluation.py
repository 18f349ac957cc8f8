"""``camlens localize`` (boxes from maps) and ``camlens evaluate`` (how good each method's maps are)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from camlens.cli.common import (
    DeviceOpt,
    LabelsOpt,
    MethodOpt,
    ModelOpt,
    OverwriteOpt,
    TrustPickleOpt,
    WeightsOpt,
    WorkersOpt,
    app,
    err_console,
    exit_if_failed,
    expand_inputs,
    open_lens,
    out_console,
    parse_methods,
    plural,
    progress_bar,
    stopping,
    target_help,
)
from camlens.errors import CamlensError

LayerOpt = Annotated[str | None, typer.Option("--layer", help="Target layer; default: the last spatial layer.")]
BoxesOpt = Annotated[Path | None, typer.Option("--boxes", help="True boxes: Pascal VOC XML file/folder, COCO JSON, or CSV.")]
BoxFormatOpt = Annotated[str, typer.Option("--boxes-format", help="auto, voc, coco or csv.")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", help="Box the map where it is above this fraction of its range.")]
SUMMARY = "localize.json"
"""The summary ``camlens localize`` writes in its output folder."""


@app.command()
def localize(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    labels: LabelsOpt = None,
    method: MethodOpt = ["gradcam"],  # noqa: B006
    layer: LayerOpt = None,
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help=target_help())] = None,
    threshold: ThresholdOpt = 0.2,
    all_regions: Annotated[bool, typer.Option("--all-regions", help="Box every region, not only the largest.")] = False,
    min_area: Annotated[float, typer.Option("--min-area", help="With --all-regions: least area (image fraction).")] = 0.0,
    boxes: BoxesOpt = None,
    boxes_format: BoxFormatOpt = "auto",
    colormap: Annotated[str, typer.Option("--colormap", help="Any matplotlib colormap.")] = "jet",
    alpha: Annotated[float, typer.Option("--alpha", help="Heatmap opacity, 0..1.")] = 0.5,
    image_format: Annotated[str, typer.Option("--format", help="png, jpg or webp.")] = "png",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/localize"),
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Finish the last run into --out (stopped, killed, or a rank "
                                                          "that died) with the same settings and inputs.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also read sub-folders.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Box objects from maps: drawn on the image and written as JSON (--out/localize.json).

    A box goes around the largest region above --threshold of the map's range (CAM paper: 0.2),
    or around every region with --all-regions; red on the overlay, true boxes (--boxes) green.
    Under torchrun each process does its share of the batches and rank 0 writes the summary.
    """
    from camlens import runner
    from camlens.distributed import joined

    if not 0.0 <= threshold <= 1.0 or not 0.0 <= min_area <= 1.0:
        raise CamlensError("--threshold and --min-area must be between 0 and 1")
    options = runner.RenderOptions(colormap, alpha, image_format=image_format, overwrite=overwrite)
    options.check()
    files, root = expand_inputs(inputs, recursive)
    truth = _annotations(boxes, boxes_format)
    boxing = runner.Boxing(threshold, not all_regions, min_area, truth)
    methods = parse_methods(method)
    with joined() as world:
        lens = open_lens(model, weights, labels, world.device(device), trust_pickle=trust_pickle)
        shown = len(world.share(len(files), batch_size)) if world.main else 0  # one progress bar: rank 0's
        with runner.stop_on_signals(stopping) as stop, progress_bar(shown) as bar:
            task = bar.add_task("localizing", total=shown)
            report = runner.run(
                lens, files, out, methods=methods, layers=[layer] if layer else [], target=target or None,
                options=options, batch_size=batch_size, root=root, progress=lambda n: bar.advance(task, n), stop=stop,
                workers=workers, resume=resume, world=world, boxing=boxing, summary_name=SUMMARY,
            )
    if not world.main:
        return
    summary = f" (summary: {report.summary})" if report.summary else ""
    out_console.print(f"boxed {len(report.images) - len(report.failed)} images; wrote {out}/{summary}", soft_wrap=True)
    unused = [str(r.error) for r in report.failed] + (truth.errors if truth is not None else [])
    exit_if_failed(unused, f"{len(unused)} inputs or annotation records not used", report.interrupted,
                   len(report.pending))


def _annotations(source: Path | None, fmt: str):  # type: ignore[no-untyped-def]
    from camlens.evaluation.annotations import read_annotations

    return read_annotations(source, fmt) if source is not None else None


@app.command()
def evaluate(
    data: Annotated[Path, typer.Argument(help="Image folder: a sub-folder per class, or images whose boxes name the class.")],
    boxes: BoxesOpt = None,
    boxes_format: BoxFormatOpt = "auto",
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    labels: LabelsOpt = None,
    method: MethodOpt = ["cam,gradcam,gradcam++"],  # noqa: B006
    layer: LayerOpt = None,
    threshold: ThresholdOpt = 0.2,
    iou: Annotated[float, typer.Option("--iou", help="IoU that counts a box as correct (Top-1/GT-known Loc).")] = 0.5,
    maxbox_step: Annotated[float, typer.Option("--maxbox-step", help="Map-threshold spacing for MaxBoxAccV2.")] = 0.01,
    pointing_tolerance: Annotated[float, typer.Option("--pointing-tolerance", help="Pointing-game slack in pixels.")] = 15.0,
    steps: Annotated[int | None, typer.Option("--steps", help="Deletion/insertion steps; default: input height (RISE).")] = None,
    deletion_baseline: Annotated[str, typer.Option("--deletion-baseline", help="zero or blur.")] = "zero",
    insertion_baseline: Annotated[str, typer.Option("--insertion-baseline", help="blur or zero.")] = "blur",
    localization: Annotated[bool, typer.Option("--localization/--no-localization", help="Box scores (needs --boxes).")] = True,
    faithfulness: Annotated[bool, typer.Option("--faithfulness/--no-faithfulness", help="Drop, increase, deletion.")] = True,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N images.")] = None,
    examples: Annotated[int, typer.Option("--examples", help="Images shown in the report.")] = 6,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 16,
    title: Annotated[str | None, typer.Option("--title", help="Report title.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/evaluate"),
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Finish the last evaluation into --out (stopped, killed, or a rank that died) with the same "
                         "settings and data: only the batches it had not scored.")] = False,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Score methods on a labelled dataset: localization and faithfulness, in one table.

    Top-1 and GT-known Loc, MaxBoxAccV2, pointing game (with --boxes); Average Drop, Increase in
    Confidence, Deletion and Insertion AUC. Writes metrics.csv, metrics.json, per_image.csv,
    curves.png, examples.png and report.md to --out.

    Under torchrun (torchrun --nproc_per_node=N -m camlens evaluate ...) each process scores
    its share of the batches (on GPU local_rank when there are GPUs and --device is auto) and
    rank 0 writes the files, the same as one process writes. Scored batches are recorded in
    --out/.camlens-eval as they go (removed once the report is written), so that --resume
    finishes a stopped or killed evaluation with the files an uninterrupted one writes.
    """
    from camlens.distributed import joined
    from camlens.evaluation import report
    from camlens.evaluation.localization import LocalizationProtocol
    from camlens.evaluation.run import STATE_FOLDER, EvaluationInterrupted, FaithfulnessProtocol, dataset
    from camlens.evaluation.run import evaluate as run_evaluation
    from camlens.models.record import model_spec
    from camlens.runner import stop_on_signals

    if localization and boxes is None:
        localization = False
    if not (localization or faithfulness):
        raise CamlensError("nothing to measure: give --boxes for localization, or keep --faithfulness")
    for name in ("deletion", "insertion"):
        if (deletion_baseline if name == "deletion" else insertion_baseline) not in ("zero", "blur"):
            raise CamlensError(f"--{name}-baseline must be zero or blur")
    if not (0.0 <= threshold <= 1.0 and 0.0 < iou <= 1.0 and 0.0 < maxbox_step < 1.0 and pointing_tolerance >= 0):
        raise CamlensError("--threshold in [0, 1], --iou in (0, 1], --maxbox-step in (0, 1), --pointing-tolerance >= 0")
    if steps is not None and steps < 1:
        raise CamlensError("--steps must be at least 1")
    with joined() as world:
        refused = None
        if world.main:  # rank 0 alone, then the others: none may find the files rank 0 is about to write
            try:
                report.check_free(out, overwrite)
            except CamlensError as exc:
                refused = str(exc)
        refused = world.broadcast(refused)
        if refused is not None:
            if world.main:
                raise CamlensError(refused)
            raise typer.Exit(2)  # rank 0 says why
        truth = _annotations(boxes, boxes_format)
        lens = open_lens(model, weights, labels, world.device(device), trust_pickle=trust_pickle)
        items, problems = dataset(data, lens, truth, limit)
        loc = LocalizationProtocol(threshold, iou, maxbox_step=maxbox_step, pointing_tolerance=pointing_tolerance)
        faith = FaithfulnessProtocol(steps, deletion_baseline, insertion_baseline) if faithfulness else None
        mine = len(world.share(len(items), max(batch_size, 1))) if world.size > 1 else len(items)
        state = out / STATE_FOLDER
        with (tempfile.SpooledTemporaryFile(max_size=1 << 24, mode="w+", newline="") if world.main else nullcontext()
              as rows, stop_on_signals(stopping if world.main else lambda signum: None) as stop,
              progress_bar(mine if world.main else 0) as bar):
            task = bar.add_task("evaluating", total=mine)
            try:
                result = run_evaluation(
                    lens, items, parse_methods(method), layer, localization=loc if localization else None,
                    faithful=faith, batch_size=batch_size, examples=examples, per_image=rows,
                    progress=lambda n: bar.advance(task, n), workers=workers, world=world, state=state, resume=resume,
                    stop=stop,
                )
            except EvaluationInterrupted as exc:
                if world.main:
                    err_console.print(f"{exc}: the same command with --resume finishes it", soft_wrap=True)
                raise typer.Exit(128 + exc.signal) from None
            if result is None or rows is None:  # not rank 0: rank 0 writes and tells
                return
            result.failed = problems + result.failed + (truth.errors if truth is not None else [])
            result.source = {**model_spec(model, weights, labels), "data": str(data.resolve()),
                             "boxes": str(boxes.resolve()) if boxes is not None else None, "cwd": os.getcwd()}
            written = report.write(result, out, rows, title=title or f"{lens.loaded.name} on {data}",
                                   overwrite=overwrite)
        if world.main:
            shutil.rmtree(state, ignore_errors=True)  # the report is the record now
    caption = f"{result.images} images, accuracy {report.accuracy_text(result)}, layer {result.layer}"
    table = Table(box=box.SIMPLE_HEAD, title=caption)
    head, *body = report.table_rows(result, short=True)
    for h in head:
        table.add_column(h, justify="left" if h == "method" else "right", no_wrap=True)
    for r in body:
        table.add_row(*r)
    out_console.print(table)
    out_console.print(
        f"Top1, GTLoc: Top-1 / GT-known Loc (CAM-paper box, IoU >= {iou:g}); MaxBox: MaxBoxAccV2; Point: pointing game; "
        "Drop, Incr: Average Drop / Increase in Confidence; Del, Ins: deletion / insertion AUC. "
        "Lower is better for Drop and Del, higher for the rest.", soft_wrap=True, highlight=False,
    )
    out_console.print(f"wrote {plural(len(written), 'file')} to {out}/ (report: {out / 'report.md'})", soft_wrap=True)
    exit_if_failed(result.failed, f"{len(result.failed)} images or annotation records not evaluated")
