"""Checks of the library's public arguments, at the edge: a wrong type or value becomes a
one-line :class:`~camlens.errors.CamlensError` naming the parameter, never a raw exception
from deep inside NumPy, PIL or a framework."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from camlens.errors import CamlensError, ImageError, LayerError


def count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``.

    Raises:
        CamlensError: not an integer (a bool, a float, a string), or too small.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CamlensError(f"{name} must be an integer >= {minimum}, not {_shown(value)}")
    if value < minimum:
        raise CamlensError(f"{name} must be at least {minimum}, got {int(value)}")
    return int(value)


def number(value: Any, name: str, low: float, high: float) -> float:
    """``value`` as a ``float`` in ``[low, high]``.

    Raises:
        CamlensError: not a real number, or outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CamlensError(f"{name} must be a number between {low:g} and {high:g}, not {_shown(value)}")
    if not low <= float(value) <= high:
        raise CamlensError(f"{name} must be between {low:g} and {high:g}, not {float(value):g}")
    return float(value)


def path(value: Any, name: str) -> Path:
    """``value`` (a ``str`` or ``os.PathLike``) as a :class:`~pathlib.Path`.

    Raises:
        CamlensError: anything else.
    """
    if isinstance(value, Path):
        return value
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        return Path(value)
    raise CamlensError(f"{name} must be a file path, not {_shown(value)}")


def paths(values: Any, name: str) -> list[Path]:
    """One path, or a sequence of them, as a list of paths."""
    if isinstance(values, (str, Path)) or hasattr(values, "__fspath__"):
        return [path(values, name)]
    if not isinstance(values, (list, tuple)):
        raise CamlensError(f"{name} must be a list of file paths, not {_shown(values)}")
    return [path(v, name) for v in values]


def images(values: Any) -> list[Any]:
    """The ``images`` of a call as a list: one image (a path, PIL image or array) becomes a
    list of one.

    Raises:
        ImageError: an empty list.
        CamlensError: neither an image nor a list of images.
    """
    import numpy as np
    from PIL import Image

    if isinstance(values, (str, Path, Image.Image, np.ndarray)) or hasattr(values, "__fspath__"):
        return [values]
    if not isinstance(values, (list, tuple)):
        raise CamlensError(f"images must be an image (path, PIL image, uint8 array) or a list of them, not {_shown(values)}")
    if not values:
        raise ImageError("no images given")
    return list(values)


def layer_specs(layer: Any, layer_type: type | tuple[type, ...]) -> list[Any]:
    """A ``layer`` argument as a list of specs: ``None`` (the automatic layer), a name, a
    ``layer_type`` object (a module or Keras layer), or a non-empty list of names and objects.

    Raises:
        LayerError: an empty list, or an item of another type.
    """
    items = [layer] if layer is None or isinstance(layer, (str, layer_type)) else layer
    if not isinstance(items, (list, tuple)):
        raise LayerError(f"layer must be a layer name, a layer object or a list of them, not {_shown(layer)}")
    if not items:
        raise LayerError("layer is an empty list; give a layer name, or None for the automatic layer")
    for item in items:
        if item is not None and not isinstance(item, (str, layer_type)):
            raise LayerError(f"layer must be a layer name or a layer object, not {_shown(item)}")
    return list(items)


def _shown(value: Any) -> str:
    """A value as an error message shows it: its type, and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
