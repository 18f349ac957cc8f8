"""Keras models: ``keras.applications`` by name, ``.keras``/``.h5`` files, their preprocessing."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from camlens.errors import ModelError
from camlens.models.network import reachable
from camlens.models.preprocess import KNOWN_FUNCTIONS, Preprocessing


@contextlib.contextmanager
def _quiet(keras: Any) -> Iterator[None]:
    """Keras' interactive messages ("Downloading data from ...") off, then as they were."""
    was = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was:
            keras.config.enable_interactive_logging()


def load_keras(name: str, weights: Path | None = None) -> tuple[Any, Preprocessing | None]:
    """A Keras model from ``keras:NAME`` (``keras.applications``) or a saved model file.

    ``keras:NAME`` gets the ImageNet weights (downloaded to ``~/.keras/models`` on first use)
    unless ``weights`` names a local weights file, and the application's own
    ``preprocess_input``. A file gets raw 0..255 pixels (see :func:`default_preprocessing`).
    """
    import keras

    if name.startswith("keras:"):
        arch = name.removeprefix("keras:")
        apps = {n: getattr(keras.applications, n) for n in dir(keras.applications) if n[:1].isupper()}
        if arch not in apps:
            close = difflib.get_close_matches(arch, list(apps), n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join('keras:' + c for c in close)}?" if close else ""
            raise ModelError(f"unknown keras.applications model {arch!r}{hint}")
        try:
            if weights is None and not reachable("storage.googleapis.com"):
                with _quiet(keras):  # cached weights load; missing ones fail below without a download line
                    model = apps[arch](weights="imagenet")
            else:
                model = apps[arch](weights=str(weights) if weights is not None else "imagenet")
        except ValueError as exc:
            raise ModelError(f"{weights}: weights do not fit keras:{arch} ({str(exc).splitlines()[0][:200]})") from exc
        except Exception as exc:
            # keras.utils.get_file turns a failed download into a bare Exception("URL fetch failure ...")
            if not isinstance(exc, OSError) and "URL fetch failure" not in str(exc):
                raise
            raise ModelError(
                f"cannot get ImageNet weights for keras:{arch}: they download on first use into "
                "~/.keras/models; connect once, or pass --weights FILE (a .weights.h5 file)"
            ) from exc
        return model, _application_preprocessing(arch, model)
    path = Path(name)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{path}: cannot load Keras model ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if weights is not None:
        model.load_weights(weights)
    return model, None


def default_preprocessing(model: Any) -> Preprocessing:
    """Raw 0..255 RGB pixels, channels-last, at the model's input size (224x224 if flexible):
    what a Keras model with its own ``Rescaling``/``Normalization`` layers expects."""
    shape = tuple(model.input_shape)
    h, w = (shape[1] or 224, shape[2] or 224) if len(shape) == 4 else (224, 224)
    channels = shape[3] if len(shape) == 4 and shape[3] in (1, 3) else 3
    return Preprocessing(
        mean=(0.0,) * channels,
        std=(1 / 255,) * channels,
        input_size=(int(h), int(w)),
        interpolation="bilinear",
        channels=int(channels),
        layout="NHWC",
    )


def _application_preprocessing(arch: str, model: Any) -> Preprocessing:
    """The model's input size and its ``keras.applications`` module's ``preprocess_input``."""
    import keras

    base = default_preprocessing(model)
    for module_name in dir(keras.applications):
        function = f"keras.applications.{module_name}.preprocess_input"
        if function in KNOWN_FUNCTIONS and getattr(getattr(keras.applications, module_name), arch, None) is not None:
            return Preprocessing(base.mean, base.std, base.input_size, "bilinear", base.channels, "NHWC", function)
    return base
