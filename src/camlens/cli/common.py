"""What every command shares: the Typer app, consoles, common options, model and input helpers."""

from __future__ import annotations

import os
import re
import signal
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.status import Status
from rich.table import Table
from rich.text import Text

from camlens.core.methods import canonical_spec, method_names
from camlens.errors import CamlensError

app = typer.Typer(
    help=(
        "See where an image classifier looks: CAM, Grad-CAM, Grad-CAM++ and the rest of the family, Score-CAM and "
        "Ablation-CAM, attention rollout and LeGrad for vision transformers; train classifiers, box objects, score methods."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _settings(
    max_pixels: Annotated[int | None, typer.Option(
        "--max-pixels", help="Read larger images downscaled to this many pixels (default 25000000; also "
                             "CAMLENS_MAX_PIXELS), so that maps and overlays stay bounded in memory.")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Show the frameworks' own log lines (TensorFlow's start-up messages).")] = False,
) -> None:
    """Options for every command (before the command's name)."""
    if not verbose:  # before TensorFlow is imported; a value the user set is kept
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if max_pixels is not None:
        from camlens.imageio import set_max_pixels

        set_max_pixels(max_pixels)


def printable(text: str) -> str:
    """``text`` with every control or format character (terminal escape sequences, newlines,
    bidi overrides) shown as a visible ``\\xNN`` / ``\\uNNNN`` escape, tabs kept."""
    return "".join(
        ch if ch == "\t" or not unicodedata.category(ch).startswith("C") else ch.encode("unicode_escape").decode()
        for ch in text
    )


class SafeConsole(Console):
    """A rich console that prints every string as it is: no markup, emoji codes or highlighting
    read from file names, labels or messages, and control characters escaped (see
    :func:`printable`). Styles come only from :class:`rich.text.Text` objects camlens builds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text), **kwargs)

    def status(self, status: Any, **kwargs: Any) -> Status:
        return super().status(Text(printable(status)) if isinstance(status, str) else status, **kwargs)


out_console = SafeConsole()
err_console = SafeConsole(stderr=True)


def print_whole(table: Table) -> None:
    """``table`` on stdout with no cell cut short: wider than the terminal when a name needs it
    (layer names must stay whole to be copied into ``--layer``)."""
    widths = [max(Text(str(cell)).cell_len for cell in [column.header, *column.cells]) for column in table.columns]
    needed = sum(widths) + 3 * len(widths) + 1  # one space each side and a border per column
    console = out_console if needed <= out_console.width else SafeConsole(width=needed)
    console.print(table)

_CLI_FLAGS = {
    "trust_pickle=True": "--trust-pickle", "output=": "--output ", "layout=": "--layout ", "overwrite=True": "--overwrite",
    "resume=True": "--resume", "pretrained=False": "--no-pretrained", "device='cpu'": "--device cpu",
    "headless=True": "--headless", "weights=": "--weights ", "model=": "--model ", "mask=": "--mask",
    "layer=": "--layer", "max_pixels=": "--max-pixels", "max_pixels": "--max-pixels", "max_batch": "--max-batch",
}
"""Python keywords in library messages, and the flags the CLI says instead (in this order)."""


def for_cli(message: str) -> str:
    """A library error message in the CLI's words: Python parameters become their flags. A
    parameter counts only as a word of its own (after a space, a parenthesis or the start), so
    paths and names that merely contain one (``/data/model=v2/``) are left as they are."""
    for param, flag in _CLI_FLAGS.items():
        keyword = param.endswith("=")  # "weights=FILE", "layer= explicitly": the flag, then one space
        pattern = r"(?<![\w/.=-])" + re.escape(param) + (" ?" if keyword else "")
        message = re.sub(pattern, flag.strip() + (" " if keyword else ""), message)
    return message.rstrip()

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="efficientnet_lite0 (bundled), a torchvision name, timm:NAME, hf:REPO, keras:NAME, or a model file."
    ),
]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Local weights file for the named architecture.")]
LabelsOpt = Annotated[Path | None, typer.Option("--labels", help="Labels file: one class name per line, or JSON.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
OutputOpt = Annotated[
    str | None,
    typer.Option("--output", help="The output to explain: a multi-output Keras model's (index or name), or a PyTorch "
                 "model's tuple index or dict/ModelOutput key (default: the first tensor, logits or out)."),
]
HeadlessOpt = Annotated[
    bool,
    typer.Option("--headless", help="Drop the classifier: the model outputs its pooled features (an embedding), "
                 "for --target similar-to:IMAGE."),
]
MethodOpt = Annotated[
    list[str],
    typer.Option(
        "--method",
        help=f"Method(s), comma-separated or repeated: {', '.join(method_names())} (any case; `camlens methods` describes "
             "them). Settings after colons: rise:masks=1000:cells=5, fasterscorecam:channels=32.",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
MaxBatchOpt = Annotated[int, typer.Option(
    "--max-batch", min=1,
    help="Inputs per extra forward pass of the methods that run the model again (Score-CAM, Ablation-CAM...): "
         "lower it to bound their memory.")]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow --model to be a whole pickled nn.Module. Unpickling RUNS ANY CODE in the file: only for files you trust.",
    ),
]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", min=0, help="Processes that decode and resize images ahead of the model (0: none, in the main process). "
                             "Default: 0 with the model on the CPU (its threads use every core), else one per core beyond "
                             "the first, at most 4.")]


def split(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def parse_methods(values: list[str]) -> list[str]:
    """``--method`` values as canonical method names, with their settings if any
    (``rise:masks=1000``; aliases resolved once, here)."""
    specs = list(dict.fromkeys(canonical_spec(v) for v in split(values)))
    if not specs:
        raise CamlensError("no method given")
    return specs


def open_lens(  # type: ignore[no-untyped-def]
    model: str, weights: Path | None, labels: Path | None, device: str, output: str | None = None,
    trust_pickle: bool = False, headless: bool = False, pretrained: bool = True,
):
    from camlens.lens import Lens

    chosen: int | str | None = int(output) if output is not None and output.isdigit() else output
    with err_console.status(f"loading {model}..."):
        return Lens(model, weights=weights, labels=labels, device=device, output=chosen, trust_pickle=trust_pickle,
                    headless=headless, pretrained=pretrained)


def target_help() -> str:
    """``--target`` help from the target registry."""
    from camlens.core.targets import target_kinds

    forms = [k.cli for k in target_kinds() if k.cli and not k.cli.startswith("(")]
    return f"What to explain (repeatable): {'; '.join(forms)}. Default: top-1. `camlens targets` describes them."


def expand_inputs(paths: list[Path], recursive: bool) -> tuple[list[Path], Path | None]:
    """Expand folders into their image files; a single folder becomes the naming root."""
    from camlens.imageio import find_images

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = find_images(p, recursive)
            if not found:
                raise CamlensError(f"{p}: no image files (jpg, png, webp, bmp, tif, gif) in this folder")
            files.extend(found)
        else:
            files.append(p)
    root = paths[0] if len(paths) == 1 and paths[0].is_dir() else None
    return files, root


def progress_bar(total: int, steps: bool = False) -> Progress:
    """A transient count-and-time progress bar on stderr, each task labelled by its description:
    hidden for a single item, unless ``steps`` (methods that run the model again report their
    work within an item through :func:`step_reporter`)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True, disable=total < 2 and not steps)


def step_reporter(bar: Progress) -> Callable[[str, int, int], None]:
    """A :data:`camlens.core.record.Progress` showing a method's work on one layer as a second
    line of ``bar`` (``Score-CAM at layer4  340/1280``), the line reused from layer to layer."""
    task: list[TaskID] = []

    def report(what: str, done: int, total: int) -> None:
        if not task:
            task.append(bar.add_task(printable(what), total=total))
        bar.update(task[0], description=printable(what), completed=done, total=total)

    return report


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def exit_if_failed(lines: list[str], header: str, interrupted: int | None = None, untried: int = 0) -> None:
    """List what failed under ``header`` on stderr and exit 1; do nothing when nothing failed.
    A run stopped by a signal says how many inputs it left untried and exits 128 + the signal
    (130 for Ctrl-C, 143 for SIGTERM)."""
    if lines:
        err_console.print(Text(f"{printable(header)}:", style="red"))
        for line in lines:
            err_console.print(f"  {for_cli(line)}", highlight=False, markup=False, soft_wrap=True)
    if interrupted is not None:
        err_console.print(f"interrupted by {signal.Signals(interrupted).name}: {untried} inputs not tried "
                          "(the summary lists them)", soft_wrap=True)
        raise typer.Exit(128 + interrupted)
    if lines:
        raise typer.Exit(1)


def stopping(signum: int) -> None:
    """What the CLI says when a run is asked to stop (see :func:`camlens.runner.stop_on_signals`)."""
    err_console.print(f"{signal.Signals(signum).name}: stopping after this batch (again to stop at once)")
