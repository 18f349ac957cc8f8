"""``camlens`` commands: explain, features, layers, classes, demo; the entry point.

Training and data commands live in :mod:`camlens.cli.training`, localization and evaluation in
:mod:`camlens.cli.evaluation`."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from camlens.cli.common import (
    DeviceOpt,
    HeadlessOpt,
    LabelsOpt,
    MaxBatchOpt,
    MethodOpt,
    ModelOpt,
    OutputOpt,
    OverwriteOpt,
    TrustPickleOpt,
    WeightsOpt,
    WorkersOpt,
    app,
    err_console,
    exit_if_failed,
    expand_inputs,
    for_cli,
    open_lens,
    out_console,
    parse_methods,
    plural,
    print_whole,
    progress_bar,
    split,
    step_reporter,
    stopping,
    target_help,
)
from camlens.core.augment import Augment
from camlens.core.methods import get_method, method_table
from camlens.core.record import MAX_BATCH, Need
from camlens.errors import CamlensError, ImageError, Interrupted, ModelFailure
from camlens.mapstore import NAME as MAP_STORE


@app.command()
def explain(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    labels: LabelsOpt = None,
    method: MethodOpt = ["gradcam"],  # noqa: B006
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Target layer(s), dotted names; default: the last spatial layer.")
    ] = None,
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help=target_help())] = None,
    mask: Annotated[
        Path | None,
        typer.Option("--mask", help="Segmentation models: an image of the input's size whose nonzero pixels are the "
                     "region to explain (with the --target class, or the class winning most of it)."),
    ] = None,
    fuse: Annotated[
        str | None, typer.Option("--fuse", help="With several --layer, also a map fusing them: mean, max or product.")
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option("--layout", help="The --layer's layout when the model does not tell it: nchw, nhwc, tokens:PREFIX "
                     "(e.g. tokens:1 after a class token) or tokens:PREFIX:HxW. Default: found from the model."),
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Predictions to show per image.")] = 5,
    colormap: Annotated[str, typer.Option("--colormap", help="Any matplotlib colormap.")] = "jet",
    alpha: Annotated[float, typer.Option("--alpha", help="Heatmap opacity in the overlay, 0..1.")] = 0.5,
    panel: Annotated[bool, typer.Option("--panel", help="Also write original | heatmap | overlay panels.")] = False,
    save_raw: Annotated[bool, typer.Option("--save-raw", help="Also write raw maps (layer resolution) as .npy.")] = False,
    image_format: Annotated[str, typer.Option("--format", help="png, jpg or webp (jpg and webp encode several "
                                                              "times faster than png).")] = "png",
    png_level: Annotated[int, typer.Option("--png-level", min=0, max=9,
                                           help="PNG compression: 0 fastest and largest, 9 smallest.")] = 6,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay",
                                          help="Write the overlays; --no-overlay writes the raw maps (.npy) instead "
                                               "(and panels if --panel).")] = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/camlens"),
    store: Annotated[bool, typer.Option(
        "--store", help=f"Also write every raw map into one chunked Zarr store, --out/{MAP_STORE} (opened lazily, with the "
                        "image paths, targets and predictions); with --no-overlay, instead of .npy files.")] = False,
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Finish the last run into --out (stopped, killed, or a rank that died) with the same settings "
                         "and inputs: only what it had not done.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also read sub-folders.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 8,
    max_batch: MaxBatchOpt = MAX_BATCH,
    workers: WorkersOpt = None,
    smooth: Annotated[int, typer.Option(
        "--smooth", min=0, help="Average every map over this many noisy copies of the image (SmoothGrad: noise 15% of "
                                "its value range, seeded). 0: off.")] = 0,
    tta: Annotated[bool, typer.Option(
        "--tta", help="Average every map over the image at scales 0.75, 1 and 1.25, each as it is and mirrored, every "
                      "map mapped back first (the model must take other input sizes).")] = False,
    device: DeviceOpt = "auto",
    output: OutputOpt = None,
    headless: HeadlessOpt = False,
) -> None:
    """Explain images: predictions, then a heatmap overlay per method, layer and target.

    Under torchrun (`torchrun --nproc_per_node=N -m camlens explain ...`) each process does its
    share of the batches on its own device and rank 0 writes the one summary.
    """
    from camlens import runner
    from camlens.distributed import joined

    options = runner.RenderOptions(colormap, alpha, panel, save_raw or not (overlay or store), image_format, overwrite,
                                   overlay, png_level, store)
    options.check()
    files, root = expand_inputs(inputs, recursive)
    methods = parse_methods(method)
    augment = Augment(samples=smooth, flips=tta, scales=(0.75, 1.0, 1.25) if tta else (1.0,)) if smooth or tta else None
    steps = any(Need.FORWARDS in get_method(m).needs for m in methods)
    with joined() as world:
        lens = open_lens(model, weights, labels, world.device(device), output, trust_pickle, headless)
        shown = len(world.share(len(files), batch_size)) if world.main else 0  # one progress bar: rank 0's
        with runner.stop_on_signals(stopping) as stop, progress_bar(shown, steps and world.main) as bar:
            task = bar.add_task("explaining", total=shown)
            report = runner.run(
                lens, files, out, methods=methods, layers=split(layer), target=target or None, top=top,
                options=options, batch_size=batch_size, root=root, progress=lambda n: bar.advance(task, n), fuse=fuse,
                mask=mask, layout=layout, stop=stop, max_batch=max_batch, steps=step_reporter(bar) if steps else None,
                augment=augment, workers=workers, resume=resume, world=world,
            )
    if not world.main:
        return
    _print_predictions(report.images, top)
    written = sum(len(r.outputs) for r in report.images)
    summary = f" (summary: {report.summary})" if report.summary else ""
    out_console.print(f"wrote {plural(written, 'file')} to {out}/{summary}", soft_wrap=True)
    exit_if_failed([str(r.error) for r in report.failed], f"{len(report.failed)} of {len(report.images)} images failed",
                   report.interrupted, len(report.pending))


def _print_predictions(images, top: int) -> None:  # type: ignore[no-untyped-def]
    ok = [r for r in images if not r.error and r.predictions]
    if len(ok) == 1:
        table = Table(title=f"{ok[0].source}: top {top}")
        table.add_column("#", justify="right")
        table.add_column("class", justify="right")
        table.add_column("label")
        table.add_column("probability", justify="right")
        for rank, p in enumerate(ok[0].predictions, 1):
            table.add_row(str(rank), str(p.index), p.label, f"{p.probability:.2%}")
    else:
        table = Table(title="top-1 predictions")
        table.add_column("image")
        table.add_column("label")
        table.add_column("probability", justify="right")
        for r in ok:
            table.add_row(str(r.source), r.predictions[0].label, f"{r.predictions[0].probability:.2%}")
    if ok:
        out_console.print(table)


@app.command()
def features(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    layer: Annotated[list[str] | None, typer.Option("--layer", help="Layer(s) to show; default: the last spatial layer.")] = None,
    channels: Annotated[int, typer.Option("--channels", "-n", help="How many channels (the first N).")] = 16,
    colormap: Annotated[str, typer.Option("--colormap")] = "viridis",
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/features"),
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Show a layer's feature maps (its first N channels) as a grid image."""
    from camlens import render
    from camlens.imageio import clean_leftovers, image_writer, output_path, read_image, safe_part, write_group

    render.check_colormap(colormap)
    picture = read_image(image)
    lens = open_lens(model, weights, labels, device, trust_pickle=trust_pickle)
    specs: list[str | None] = [*split(layer)] or [None]
    grids, lines = [], []
    for spec in specs:
        name, acts = lens.features(picture, spec)
        grid = render.feature_grid(acts, channels, colormap, title=f"{image.name} @ {name} ({acts.shape[0]} channels)")
        path = output_path(out, f"{image.stem}_features_{safe_part(name)}.png")
        grids.append((path, image_writer(path, grid)))
        lines.append(f"{name}: {acts.shape[0]} channels of {acts.shape[1]}x{acts.shape[2]} -> {path}")
    clean_leftovers(out)
    write_group(grids, overwrite)  # every layer's grid, or none
    for line in lines:
        out_console.print(line, soft_wrap=True)


@app.command()
def layers(
    model: Annotated[
        str, typer.Argument(help="Model name (torchvision, timm:NAME, keras:NAME) or a model file.")
    ] = "efficientnet_lite0",
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    show_all: Annotated[bool, typer.Option("--all", help="List every module, not only spatial ones.")] = False,
    device: DeviceOpt = "cpu",
    output: OutputOpt = None,
) -> None:
    """List candidate target layers with their output shapes and layouts; mark the automatic choice.

    Named architectures are built without their pretrained weights (layers do not depend on
    them), so this works offline."""
    lens = open_lens(model, weights, None, device, output, trust_pickle=trust_pickle, pretrained=False)
    rows, chosen = lens.backend.layers(lens.loaded)
    h, w = lens.loaded.preprocessing.input_size
    table = Table(title=f"{model}: layers in forward order (input {h}x{w})")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("layout")
    table.add_column("")
    for name, kind, shape, layout in rows:
        if show_all or layout:
            table.add_row(name, kind, str(shape), layout, "<- default" if name == chosen else "")
    print_whole(table)


@app.command()
def methods(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown (the README's table).")] = False,
) -> None:
    """List the CAM methods: name (for --method), paper, what each needs, cost per image, map."""
    rows = [tuple(row.values()) for row in method_table()]
    if markdown:
        out_console.print("| name | method | paper | needs | cost per image | map |")
        out_console.print("| --- | --- | --- | --- | --- | --- |")
        for name, aliases, settings, title, paper, needs, cost, formula in rows:
            also = f" (or {', '.join(f'`{a}`' for a in aliases)})" if aliases else ""
            also += f"; settings {', '.join(f'`{s}`' for s in settings)}" if settings else ""
            out_console.print(f"| `{name}`{also} | {title} | {paper} | {needs} | {cost} | {formula} |", soft_wrap=True)
        return
    table = Table(title=f"{len(rows)} methods (g = d score / d A, A the layer's output)")
    for column in ("name", "method", "paper", "needs", "cost per image", "map"):
        table.add_column(column)
    for name, aliases, settings, *rest in rows:
        also = (f" (or {', '.join(aliases)})" if aliases else "") + (f"; settings {', '.join(settings)}" if settings else "")
        table.add_row(name + also, *rest)
    out_console.print(table)
    out_console.print("One forward pass is shared by every method, layer and target of a run. Settings go after colons: "
                      "--method rise:masks=1000:cells=5.", soft_wrap=True)



@app.command()
def targets(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown (the README's table).")] = False,
) -> None:
    """List the target kinds: what score a map explains, which model outputs each reads, how to ask for it."""
    from camlens.core.targets import target_kinds

    outputs = {"scores": "score vector", "maps": "segmentation", "detections": "detector"}
    rows = [(k.__name__, k.summary, ", ".join(outputs[o] for o in k.outputs), k.cli) for k in target_kinds()]
    if markdown:
        out_console.print("| kind | explains | model outputs | --target |")
        out_console.print("| --- | --- | --- | --- |")
        for name, summary, reads, cli in rows:
            out_console.print(f"| `{name}` | {summary} | {reads} | {cli} |", soft_wrap=True)
        return
    table = Table(title=f"{len(rows)} target kinds (camlens.targets)")
    for column in ("kind", "explains", "model outputs", "--target"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


@app.command()
def classes(
    word: Annotated[str, typer.Argument(help="Part of a class name; empty lists all.")] = "",
    model: Annotated[str, typer.Option("--model", "-m", help="A checkpoint file whose labels to search.")] = "efficientnet_lite0",
    labels: LabelsOpt = None,
) -> None:
    """Search class names (ImageNet-1k by default, a checkpoint's, or a labels file's)."""
    from camlens.models.labels import from_file, imagenet

    if labels:
        names = from_file(labels)
    elif Path(model).is_file():  # a checkpoint carries its own labels
        names = open_lens(model, None, None, "cpu").labels
    else:  # every named model camlens loads is an ImageNet-1k classifier
        names = imagenet()
    hits = names.search(word)
    if not hits:
        raise CamlensError(f"no class name contains {word!r}")
    table = Table(title=f"{len(hits)} classes")
    table.add_column("index", justify="right")
    table.add_column("name")
    for i, n in hits:
        table.add_row(str(i), n)
    out_console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/demo"),
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Explain scikit-image's sample photos with the bundled model (CAM, Grad-CAM, Grad-CAM++)."""
    from camlens.samples import write_samples

    images = write_samples(out / "samples")
    explain(
        [out / "samples"], method=["cam,gradcam,gradcam++"], layer=None, target=None, panel=True, out=out,
        overwrite=overwrite, device=device, model="efficientnet_lite0", weights=None, labels=None, top=5,
        colormap="jet", alpha=0.5, save_raw=False, image_format="png", recursive=False, batch_size=len(images),
        output=None, trust_pickle=False, fuse=None, mask=None, headless=False, layout=None,
    )


from camlens.cli import evaluation, serve, training  # noqa: E402,F401  (register their commands after these)

_DEFAULT_SHOWWARNING = warnings.showwarning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    """camlens' own warnings (a downscaled image, a model in training mode) as one line."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]) or category.__module__.startswith("camlens"):
        err_console.print(f"warning: {for_cli(str(message))}", soft_wrap=True)
    else:
        _DEFAULT_SHOWWARNING(message, category, filename, lineno, file, line)  # type: ignore[arg-type]


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main() -> None:
    """Entry point. Errors print one line, no traceback: unreadable images exit 1, other input
    errors (:class:`CamlensError`) 2, anything else 3 (``CAMLENS_DEBUG=1`` shows its traceback).
    Ctrl-C and SIGTERM exit 130 and 143 (runs over many files first finish their batch and
    write their summary: see :func:`camlens.runner.stop_on_signals`)."""
    warnings.showwarning = _one_line_warning
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        app()
    except ImageError as exc:
        err_console.print(f"error: {for_cli(str(exc))}", soft_wrap=True)
        sys.exit(1)
    except ModelFailure as exc:  # the model's own code failed: as any other failure inside it
        if os.environ.get("CAMLENS_DEBUG"):
            raise
        err_console.print(f"error: {exc} (set CAMLENS_DEBUG=1 for the traceback)", soft_wrap=True)
        sys.exit(3)
    except CamlensError as exc:
        err_console.print(f"error: {for_cli(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except Interrupted as exc:
        err_console.print(f"interrupted by {signal.Signals(exc.signal).name}")
        sys.exit(128 + exc.signal)
    except Exception as exc:  # a model or library failure: one line, the traceback on request
        if os.environ.get("CAMLENS_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        err_console.print(
            f"error: {type(exc).__name__}: {first} (set CAMLENS_DEBUG=1 for the traceback)",
            soft_wrap=True,
        )
        sys.exit(3)
