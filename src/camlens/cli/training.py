"""``camlens train`` and ``camlens data``: CAM-ready classifiers on one's own images, and the
digits-canvas benchmark to try them on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from camlens.cli.common import DeviceOpt, OverwriteOpt, app, err_console, exit_if_failed, out_console

DATASET_CACHE = Path.home() / ".cache" / "camlens" / "datasets"
data_app = typer.Typer(help="Make datasets: the digits-canvas localization benchmark.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("digits-canvas")
def digits_canvas(
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder to write (must not exist, or be empty).")],
    train_per_class: Annotated[int, typer.Option("--train-per-class", help="Training images per digit.")] = 100,
    test_per_class: Annotated[int, typer.Option("--test-per-class", help="Test images per digit.")] = 30,
    size: Annotated[int, typer.Option("--size", help="Canvas side in pixels.")] = 96,
    digit_min: Annotated[int, typer.Option("--digit-min", help="Smallest digit side in pixels.")] = 28,
    digit_max: Annotated[int, typer.Option("--digit-max", help="Largest digit side in pixels.")] = 56,
    clutter: Annotated[int, typer.Option("--clutter", help="Distractor strokes and rings per image.")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same images).")] = 0,
) -> None:
    """Write the digits-canvas benchmark: real handwritten digits on cluttered canvases, exact boxes.

    scikit-learn's digits (offline) scaled and placed at random: OUT/train/<digit>/,
    OUT/test/<digit>/ (other writers' digits) and OUT/boxes.csv.
    """
    from camlens.data.digits_canvas import CanvasSpec, generate

    with err_console.status(f"writing {out}..."):
        boxes = generate(out, train_per_class, test_per_class, seed, CanvasSpec(size, digit_min, digit_max, clutter))
    out_console.print(
        f"wrote {10 * (train_per_class + test_per_class)} images to {out}/ (train/, test/) and their boxes to {boxes}",
        soft_wrap=True,
    )


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Image folder (one sub-folder per class), or mnist, fashion-mnist, cifar10.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (a camlens model file).")] = Path("model.pt"),
    arch: Annotated[
        str, typer.Option("--arch", help="small_cnn, efficientnet_lite0 (bundled weights), a torchvision name, timm:NAME "
                                         "(vision transformers too).")
    ] = "small_cnn",
    arch_option: Annotated[
        list[str] | None, typer.Option("--arch-option", help="KEY=VALUE for the timm/torchvision builder of a model from "
                                                             "scratch, repeatable: patch_size=8, depth=6.")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Most epochs to train.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate (cosine decay to 0 at the last epoch).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 1e-4,
    warmup: Annotated[int, typer.Option("--warmup", help="Epochs of linear learning-rate warm-up before the decay.")] = 0,
    val: Annotated[Path | None, typer.Option("--val", help="Validation image folder; default: a split of DATA.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of each class held out for validation.")] = 0.2,
    patience: Annotated[int, typer.Option("--patience", help="Stop after N epochs without better val accuracy (0: never).")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split, initialisation, order and augmentation.")] = 0,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights.")] = True,
    input_size: Annotated[int | None, typer.Option("--input-size", help="Square input side; default the backbone's.")] = None,
    augment: Annotated[bool, typer.Option("--augment", help="Random resized crops and colour jitter.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Data-loading processes.")] = 0,
    cache: Annotated[Path, typer.Option("--cache", help="Where named datasets download to.")] = DATASET_CACHE,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT.last (saved each epoch) with its settings; --epochs may grow.")
    ] = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train a classifier on your images: a CAM-ready one (backbone -> global average pooling ->
    linear), or any other (a vision transformer), explained by gradient and attention methods.

    Keeps the best validation epoch and writes one checkpoint that `camlens explain --model`
    loads; OUT.last holds the state after each epoch for --resume.
    """
    from camlens.data.folders import ImageFolder, open_dataset
    from camlens.models.registry import parse_option
    from camlens.training.fit import TrainConfig, state_path
    from camlens.training.fit import train as fit

    options = dict(parse_option(o) for o in arch_option or [])
    config = TrainConfig(arch, epochs, batch_size, lr, weight_decay, val_fraction, patience, seed, pretrained, input_size,
                         augment, workers, warmup, options)
    with err_console.status(f"reading {data}..."):
        dataset = open_dataset(data, cache, train=True)
        val_set = ImageFolder.scan(val, dataset.classes) if val is not None else None
    out_console.print(f"{len(dataset)} images, {len(dataset.classes)} classes: {', '.join(dataset.classes[:12])}"
                      f"{' ...' if len(dataset.classes) > 12 else ''}", soft_wrap=True)
    table = Table(title=f"{arch} on {data}")
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"):
        table.add_column(col, justify="right")
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:
        task = bar.add_task("train", total=None, stats="")

        def on_batch(phase: str, done: int, total: int, loss: float, acc: float) -> None:
            bar.update(task, description=phase, completed=done, total=total, stats=f"loss {loss:.3f} acc {acc:.1%}")

        def on_epoch(s) -> None:  # type: ignore[no-untyped-def]
            bar.console.print(f"epoch {s.epoch}: train loss {s.train_loss:.4f} acc {s.train_acc:.2%} | "
                              f"val loss {s.val_loss:.4f} acc {s.val_acc:.2%}", highlight=False)

        result = fit(dataset, out, config, val=val_set, device=device, resume=resume, overwrite=overwrite,
                     on_batch=on_batch, on_epoch=on_epoch)
    for s in result.history:
        table.add_row(str(s.epoch), f"{s.train_loss:.4f}", f"{s.train_acc:.2%}", f"{s.val_loss:.4f}", f"{s.val_acc:.2%}",
                      f"{s.lr:.2e}", f"{s.seconds:.1f}")
    out_console.print(table)
    stop = " (early stop)" if result.stopped_early else ""
    out_console.print(
        f"best val accuracy {result.best_val_acc:.2%} at epoch {result.best_epoch}{stop}; wrote {result.checkpoint} "
        f"(resume state: {state_path(result.checkpoint)})", soft_wrap=True,
    )
    method = "cam" if result.cam else "gradcam"
    if not result.cam:
        out_console.print("its classifier is not global average pooling -> linear: CAM cannot explain it; gradient "
                          "(and, on a transformer, attention) methods can", soft_wrap=True)
    out_console.print(f"explain with: camlens explain IMAGES --model {result.checkpoint} --method {method}", soft_wrap=True)
    exit_if_failed(result.skipped, f"{len(result.skipped)} unreadable images were skipped")
