"""Turning images into the model's input tensor: resize the whole image, scale, normalise."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from camlens.errors import CamlensError

_KERAS_APPLICATION_MODULES = frozenset({
    "convnext", "densenet", "efficientnet", "efficientnet_v2", "inception_resnet_v2", "inception_v3",
    "mobilenet", "mobilenet_v2", "mobilenet_v3", "nasnet", "resnet", "resnet50", "resnet_v2", "vgg16",
    "vgg19", "xception",
})
KNOWN_FUNCTIONS = frozenset(f"keras.applications.{m}.preprocess_input" for m in _KERAS_APPLICATION_MODULES)
"""The only functions a :class:`Preprocessing` (and so a checkpoint file) may name."""

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """The model's own input config.

    The whole image is resized to ``input_size = (height, width)``, with no centre crop, so a
    map covers every pixel of the picture the user sees. ``channels`` is 3 (RGB) or 1
    (grayscale models; ``mean`` and ``std`` then hold one value each). Pixels are scaled to
    [0, 1] and normalised with ``mean``/``std`` unless ``function`` names one of the
    ``keras.applications`` modules' ``preprocess_input`` (e.g.
    ``"keras.applications.resnet50.preprocess_input"``; the full list is
    :data:`KNOWN_FUNCTIONS`), which then receives the 0..255 pixels instead. No other function
    can be named: a checkpoint file's preprocessing must not be able to call arbitrary code.
    ``layout`` is ``"NCHW"`` (PyTorch) or ``"NHWC"`` (Keras).

    Raises:
        CamlensError: ``function`` is not in :data:`KNOWN_FUNCTIONS`.
    """

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    input_size: tuple[int, int] = (224, 224)
    interpolation: str = "bicubic"
    channels: int = 3
    layout: str = "NCHW"
    function: str | None = None

    def __post_init__(self) -> None:
        size = self.input_size
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
            raise CamlensError(f"input_size must be (height, width) of positive integers, not {size!r}")
        if self.channels not in (1, 3):
            raise CamlensError(f"channels must be 3 (RGB) or 1 (grayscale), not {self.channels!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(np.atleast_1d(values)) not in (1, self.channels):
                raise CamlensError(f"{name} must hold 1 or {self.channels} values (one per channel), got {values!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise CamlensError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if self.function is not None and self.function not in KNOWN_FUNCTIONS:
            raise CamlensError(
                f"preprocessing function {str(self.function)[:100]!r} is not allowed; known: the "
                f"preprocess_input of keras.applications.{{{','.join(sorted(_KERAS_APPLICATION_MODULES))}}}"
            )

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return a float32 batch for PIL images, in :attr:`layout`."""
        h, w = self.input_size
        resample = _RESAMPLE.get(self.interpolation, Image.Resampling.BICUBIC)
        mode = "L" if self.channels == 1 else "RGB"
        arrays = [np.asarray(img.convert(mode).resize((w, h), resample), dtype=np.float32) for img in images]
        x: np.ndarray = np.stack(arrays).reshape(len(arrays), h, w, self.channels)
        if self.function is not None:
            x = np.asarray(_import(self.function)(x), dtype=np.float32)
        else:
            x = (x / 255.0 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x if self.layout == "NHWC" else x.transpose(0, 3, 1, 2), dtype=np.float32)

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly form (for checkpoints and run summaries)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=tuple(data.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(data.get("std", cls.std)),  # type: ignore[arg-type]
            input_size=tuple(data.get("input_size", cls.input_size)),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", cls.interpolation)),
            channels=int(data.get("channels", cls.channels)),  # type: ignore[call-overload]
            layout=str(data.get("layout", cls.layout)),
            function=data.get("function"),  # type: ignore[arg-type]
        )


def _import(dotted: str) -> Callable[[np.ndarray], np.ndarray]:
    """The allow-listed function ``dotted`` (checked again here, whatever built the object)."""
    if dotted not in KNOWN_FUNCTIONS:
        raise CamlensError(f"preprocessing function {dotted[:100]!r} is not allowed")
    module = dotted.removesuffix(".preprocess_input").removeprefix("keras.applications.")
    applications = importlib.import_module("keras.applications")
    return getattr(applications, module).preprocess_input  # type: ignore[no-any-return]
