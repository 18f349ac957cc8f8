"""camlens checkpoints: one file with weights, architecture name, labels and preprocessing."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import ModelError
from camlens.imageio import write_atomic
from camlens.models.labels import Labels
from camlens.models.preprocess import Preprocessing

FORMAT = "camlens-checkpoint"


def save_checkpoint(
    path: str | Path, arch: str, model: nn.Module, labels: Labels, preprocessing: Preprocessing, *, overwrite: bool = False,
    arch_options: Mapping[str, int | float | bool | str] | None = None,
) -> Path:
    """Write, atomically, a checkpoint that :func:`camlens.models.load_model` loads directly.

    ``arch`` is a name :func:`camlens.models.registry.architecture` knows (``"resnet18"``,
    ``"timm:resnet18"``, ``"efficientnet_lite0"``, ``"small_cnn"``), built with
    ``arch_options`` (``{"patch_size": 8}``) when given.

    Raises:
        CamlensError: ``path`` exists and ``overwrite`` is False, or the write failed.
    """
    data = {
        "format": FORMAT,
        "version": 1,
        "arch": arch,
        "arch_options": dict(arch_options or {}),
        "num_classes": len(labels),
        "labels": list(labels.names),
        "preprocessing": preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return write_atomic(Path(path), lambda fh: torch.save(data, fh), overwrite)


def read(path: Path, *, trust_pickle: bool = False) -> Any:
    """Load a file's contents with ``weights_only=True`` (tensors, containers, numbers, strings:
    nothing in the file can run code).

    A file that needs full unpickling (a whole pickled ``nn.Module``, or any other Python
    object) is refused unless ``trust_pickle`` is True, which runs whatever code the file holds.
    Weights files (``weights=``) are never read with it.

    Raises:
        ModelError: not a PyTorch file, or a pickle that needs trusting and ``trust_pickle`` is False.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if needs is None:
            raise ModelError(f"{path}: not a PyTorch checkpoint ({_weights_unpickler_reason(exc)})") from exc
        if not trust_pickle:
            raise ModelError(
                f"{path}: holds pickled Python objects, not only weights (e.g. {needs.group(1)[:100]}); loading it "
                "would run code from the file: only if you trust its source, load it with trust_pickle=True"
            ) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelError(f"{path}: not a PyTorch checkpoint ({exc.__class__.__name__}: {_first_line(exc)})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling user code can raise anything; report it in one line
        raise ModelError(f"{path}: not a PyTorch checkpoint or model ({exc.__class__.__name__}: {_first_line(exc)})") from exc


def state_dict_of(data: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded weights file, unwrapping ``state_dict``/``model`` keys and a
    ``module.`` (DataParallel) prefix."""
    if isinstance(data, nn.Module):
        data = data.state_dict()
    if isinstance(data, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path}: no state dict (name -> tensor) found in the file")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def _weights_unpickler_reason(exc: BaseException) -> str:
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
    return found.group(1).strip()[:120] if found else _first_line(exc)[:120]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
