"""The training loop: seeded, early-stopping, resumable training of a classifier.

Every epoch reseeds from ``(seed, epoch)``, so a run resumed from its ``.last`` state file ends
with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from camlens.arguments import count, number
from camlens.data.folders import LabelledImages, stratified_split
from camlens.errors import CamlensError, ImageError
from camlens.imageio import write_atomic
from camlens.models.checkpoint import save_checkpoint
from camlens.models.labels import Labels
from camlens.models.preprocess import Preprocessing
from camlens.models.registry import resolve_device
from camlens.training.backbones import build

STATE_FORMAT = "camlens-train-state"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run (stored in the resume state; a resumed run must use the same)."""

    arch: str = "small_cnn"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 3
    seed: int = 0
    pretrained: bool = True
    input_size: int | None = None
    augment: bool = False
    workers: int = 0
    warmup: int = 0
    """Epochs of linear learning-rate warm-up before the cosine decay (vision transformers from scratch)."""
    arch_options: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Builder keyword arguments of a model from scratch (``{"patch_size": 8}``)."""


@dataclass(frozen=True)
class EpochStats:
    """Loss and accuracy of one epoch, on the training batches and on the validation set."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """Where the best model went, and how the run went."""

    checkpoint: Path
    best_epoch: int
    best_val_acc: float
    history: list[EpochStats]
    stopped_early: bool
    skipped: list[str] = field(default_factory=list)
    cam: bool = True
    """Whether CAM explains the model (global average pooling -> linear); else gradient and
    attention methods do."""


BatchCallback = Callable[[str, int, int, float, float], None]
"""``(phase, batches done, batches in the phase, running loss, running accuracy)``."""


def state_path(checkpoint: Path) -> Path:
    """The resume state kept next to a checkpoint: ``model.pt`` -> ``model.pt.last``."""
    return checkpoint.with_name(checkpoint.name + ".last")


def train(
    data: LabelledImages,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    val: LabelledImages | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    on_batch: BatchCallback = lambda *a: None,
    on_epoch: Callable[[EpochStats], None] = lambda s: None,
) -> TrainResult:
    """Fine-tune ``config.arch`` on ``data`` and write the best epoch's model to ``out``.

    Cross-entropy, AdamW (``lr``, ``weight_decay``), ``warmup`` epochs of linear learning-rate
    warm-up, then cosine decay to zero at ``epochs``.
    Validation is ``val`` or a stratified ``val_fraction`` of ``data`` (seeded). The model of
    the epoch with the best validation accuracy is kept; training stops after ``patience``
    epochs without improvement (0: never). After every epoch the full state goes to
    ``out.last`` (atomically), from which ``resume=True`` continues with the settings saved there
    (only ``config.epochs`` is taken from this call, so a finished run can also be extended);
    ``out`` itself, a camlens checkpoint, is written once at the end. Unreadable images are
    skipped and listed.

    Raises:
        CamlensError: ``out`` or ``out.last`` exists (without ``overwrite``/``resume``), too few
            images, or a resume state that does not match this run.
    """
    dest = Path(out)
    last = state_path(dest)
    if dest.exists() and not (overwrite or resume):
        raise CamlensError(f"{dest}: exists; pass overwrite=True to replace it")
    if last.exists() and not (overwrite or resume):
        raise CamlensError(f"{last}: holds an unfinished run; pass resume=True to continue it or overwrite=True to start over")
    if resume:
        if not last.is_file():
            raise CamlensError(f"{last}: no training state to resume from")
        config = replace(saved_config(last), epochs=config.epochs)
    _check_config(config)
    if any(d is not None and not all(hasattr(d, a) for a in ("classes", "label", "__len__")) for d in (data, val)):
        raise CamlensError("data and val must be LabelledImages (camlens.data.folders.image_folder reads a folder)")
    dev = resolve_device(device)
    classes = list(data.classes)
    if val is None:
        train_idx, val_idx = stratified_split([data.label(i) for i in range(len(data))], config.val_fraction, config.seed)
        val_set, val_ids = data, val_idx
    else:
        train_idx, val_set, val_ids = list(range(len(data))), val, list(range(len(val)))
    if not train_idx or not val_ids:
        raise CamlensError(f"too few images to train and validate ({len(data)} found)")

    torch.manual_seed(config.seed)
    model, prep, options, cam = build(config.arch, len(classes), pretrained=config.pretrained,
                                      input_size=config.input_size, options=config.arch_options)
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config.warmup, config.epochs))
    run = _RunState()
    if resume:
        run = _restore(last, config, classes, model, optimizer, schedule)

    skipped: dict[str, str] = {}
    train_batches = _Images(data, train_idx, prep, config.augment)
    val_batches = _Images(val_set, val_ids, prep, False)
    for epoch in range(run.epoch + 1, config.epochs + 1):
        if config.patience and run.bad_epochs >= config.patience:
            break
        start = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)
        lr = optimizer.param_groups[0]["lr"]
        tr_loss, tr_acc = _epoch(model, train_batches, config, dev, optimizer, on_batch, skipped)
        va_loss, va_acc = _epoch(model, val_batches, config, dev, None, on_batch, skipped)
        schedule.step()
        stats = EpochStats(epoch, tr_loss, tr_acc, va_loss, va_acc, lr, time.perf_counter() - start)
        run.history.append(stats)
        if va_acc > run.best_acc:
            run.best_acc, run.best_epoch, run.bad_epochs = va_acc, epoch, 0
            run.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            run.bad_epochs += 1
        run.epoch = epoch
        _save_state(last, config, classes, prep, model, optimizer, schedule, run)
        on_epoch(stats)

    model.load_state_dict(run.best_state or model.state_dict())
    save_checkpoint(dest, config.arch, model, Labels(tuple(classes)), prep, overwrite=True, arch_options=options)
    stopped = run.epoch < config.epochs
    return TrainResult(dest, run.best_epoch, run.best_acc, run.history, stopped, sorted(skipped.values()), cam)


def _lr_factor(warmup: int, epochs: int) -> Callable[[int], float]:
    """The learning rate's factor at an epoch: linear warm-up over ``warmup`` epochs, then
    cosine decay to zero at ``epochs``."""

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(epochs - warmup, 1)))

    return factor


def _check_config(c: TrainConfig) -> None:
    for name in ("epochs", "batch_size"):
        count(getattr(c, name), name)
    for name in ("patience", "workers", "warmup", "seed"):
        count(getattr(c, name), name, 0)
    if c.input_size is not None:
        count(c.input_size, "input_size", 8)
    number(c.lr, "lr", 1e-12, float("inf"))
    number(c.weight_decay, "weight_decay", 0.0, float("inf"))
    number(c.val_fraction, "val_fraction", 0.0, 0.9)
    if not isinstance(c.arch, str):
        raise CamlensError(f"arch must be an architecture name, not {type(c.arch).__name__}")


@dataclass
class _RunState:
    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[EpochStats] = field(default_factory=list)


class _Images(Dataset):  # type: ignore[type-arg]
    """Preprocessed ``(C, H, W)`` tensors; an unreadable image yields its error instead."""

    def __init__(self, data: LabelledImages, ids: list[int], prep: Preprocessing, augment: bool) -> None:
        self.data, self.ids, self.prep = data, ids, prep
        self.augment = _augmentation(prep) if augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[np.ndarray | None, int, str | None]:
        i = self.ids[k]
        try:
            image = self.data.load(i)
        except ImageError as exc:
            return None, -1, str(exc)
        if self.augment is not None:
            image = self.augment(image)
        return self.prep([image])[0], self.data.label(i), None


def _augmentation(prep: Preprocessing) -> Callable[[Any], Any]:
    """Random resized crops (60-100% of the area) and colour jitter, at the input size."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(prep.input_size, scale=(0.6, 1.0), antialias=True),
                       v2.ColorJitter(0.3, 0.3, 0.3)])


def _collate(items: list[tuple[np.ndarray | None, int, str | None]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    good = [(x, y) for x, y, _ in items if x is not None]
    errors = [e for _, _, e in items if e is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), errors
    xs = torch.from_numpy(np.stack([x for x, _ in good]))
    return xs, torch.tensor([y for _, y in good], dtype=torch.long), errors


def _epoch(
    model: nn.Module,
    images: _Images,
    config: TrainConfig,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None,
    on_batch: BatchCallback,
    skipped: dict[str, str],
) -> tuple[float, float]:
    """One pass; trains when given an optimizer, else evaluates. Returns mean loss and accuracy."""
    training = optimizer is not None
    model.train(training)
    loader = DataLoader(images, batch_size=config.batch_size, shuffle=training, num_workers=config.workers,
                        collate_fn=_collate, drop_last=False)
    phase = "train" if training else "val"
    loss_sum, correct, seen = 0.0, 0, 0
    total = len(loader)
    with torch.set_grad_enabled(training):
        for n, (x, y, errors) in enumerate(loader, 1):
            for e in errors:
                skipped[e.split(":")[0]] = e
            if len(y):
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss = nn.functional.cross_entropy(logits, y)
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            on_batch(phase, n, total, loss_sum / max(seen, 1), correct / max(seen, 1))
    if not seen:
        raise CamlensError(f"no readable {phase} images")
    return loss_sum / seen, correct / seen


def _save_state(
    path: Path, config: TrainConfig, classes: list[str], prep: Preprocessing, model: nn.Module,
    optimizer: torch.optim.Optimizer, schedule: Any, run: _RunState,
) -> None:
    state = {
        "format": STATE_FORMAT,
        "config": asdict(config),
        "classes": classes,
        "preprocessing": prep.to_dict(),
        "epoch": run.epoch,
        "best_acc": run.best_acc,
        "best_epoch": run.best_epoch,
        "bad_epochs": run.bad_epochs,
        "best_state": run.best_state,
        "history": [asdict(s) for s in run.history],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
    }
    write_atomic(path, lambda fh: torch.save(state, fh), overwrite=True)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line
        raise CamlensError(f"{path}: not a camlens training state ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CamlensError(f"{path}: not a camlens training state")
    return state


def saved_config(path: Path) -> TrainConfig:
    """The settings a run's ``.last`` state was trained with."""
    saved = _load_state(path)["config"]
    fields = {k: saved[k] for k in asdict(TrainConfig()) if k in saved}
    return TrainConfig(**fields)


def _restore(
    path: Path, config: TrainConfig, classes: list[str], model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any
) -> _RunState:
    state = _load_state(path)
    if list(state["classes"]) != classes:
        raise CamlensError(f"{path}: was trained on classes {state['classes'][:5]}..., not these")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    saved = {"lr_lambdas": [None] * len(optimizer.param_groups), **state["schedule"]}  # older states: cosine
    schedule.load_state_dict(saved)
    schedule.lr_lambdas = [_lr_factor(config.warmup, config.epochs)] * len(optimizer.param_groups)
    return _RunState(
        epoch=int(state["epoch"]),
        best_acc=float(state["best_acc"]),
        best_epoch=int(state["best_epoch"]),
        bad_epochs=int(state["bad_epochs"]),
        best_state=state["best_state"],
        history=[EpochStats(**h) for h in state["history"]],
    )


__all__ = ["EpochStats", "TrainConfig", "TrainResult", "state_path", "train"]
