"""The high-level API: images in, predictions and explanations (maps, overlays) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from camlens import render
from camlens.adapters.backends import ExplainerFn, backend_for
from camlens.core.maps import normalize, upsample
from camlens.core.methods import Method, canonical_name
from camlens.core.scores import softmax
from camlens.core.targets import ALL, top_k
from camlens.errors import CamlensError, TargetError
from camlens.imageio import read_image, save_image, to_rgb
from camlens.models import DEFAULT_MODEL, LoadedModel, load_model, wrap_model
from camlens.models.labels import Labels
from camlens.models.preprocess import Preprocessing

ImageLike = str | Path | Image.Image | np.ndarray
TargetSpec = int | str | Sequence[int | str] | None


@dataclass(frozen=True)
class Prediction:
    """One class with its softmax probability."""

    index: int
    label: str
    probability: float

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "label": self.label, "probability": round(self.probability, 6)}


@dataclass(frozen=True)
class TargetRequest:
    """Which classes to explain, parsed once from a target spec (see :meth:`Lens.parse_targets`).

    ``best`` top classes per image first, then the fixed ``classes``; ``every`` means all
    classes in class order.
    """

    classes: tuple[int, ...] = ()
    best: int = 0
    every: bool = False

    def choose(self, logits: np.ndarray) -> np.ndarray:
        """``(N, K)`` class indices for a batch's logits."""
        if self.every:
            return np.tile(np.arange(logits.shape[1], dtype=np.int64), (logits.shape[0], 1))
        parts = [top_k(logits, self.best)] if self.best else []
        if self.classes:
            parts.append(np.tile(np.asarray(self.classes, dtype=np.int64), (logits.shape[0], 1)))
        return np.concatenate(parts, axis=1)


@dataclass
class Explanation:
    """One map: an image explained for one target class, by one method, at one layer.

    ``raw`` is the map at the layer's resolution, before normalisation; ``heatmap`` is it
    resized bilinearly to the original image and min-max scaled to [0, 1].
    """

    image: Image.Image = field(repr=False)
    source: str
    method: str
    layer: str
    target: Prediction
    predictions: list[Prediction]
    raw: np.ndarray = field(repr=False)

    @cached_property
    def heatmap(self) -> np.ndarray:
        """``(H, W)`` map at the original image size, in [0, 1] (all zeros if constant)."""
        return normalize(upsample(self.raw, (self.image.height, self.image.width)))

    def overlay(self, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        """The image with the colormapped heatmap blended over it."""
        return render.overlay(self.image, self.heatmap, colormap, alpha)

    def panel(self, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        """Original | heatmap | overlay, titled with method, class and probability."""
        return render.panel(self.image, self.heatmap, colormap, alpha, self.title)

    @property
    def title(self) -> str:
        t = self.target
        return f"{self.method} @ {self.layer}: {t.label} ({t.probability:.1%})"

    def save(
        self, path: str | Path, colormap: str = "jet", alpha: float = 0.5, *, panel: bool = False, overwrite: bool = False
    ) -> Path:
        """Write the overlay (or the panel) to ``path`` (PNG, JPEG... by suffix), atomically,
        refusing to replace an existing file unless ``overwrite``."""
        picture = self.panel(colormap, alpha) if panel else self.overlay(colormap, alpha)
        return save_image(picture, Path(path), overwrite)

    def _repr_png_(self) -> bytes:
        """The panel, so that an explanation shows itself in Jupyter."""
        import io

        buffer = io.BytesIO()
        self.panel().save(buffer, format="PNG")
        return buffer.getvalue()

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "method": self.method,
            "layer": self.layer,
            "target": self.target.to_dict(),
            "predictions": [p.to_dict() for p in self.predictions],
        }


class Lens:
    """A loaded model with its labels and preprocessing, ready to predict and explain.

    Args:
        model: a model name for :func:`camlens.models.load_model` (default: the bundled
            EfficientNet-Lite0), a :class:`~camlens.models.LoadedModel`, an ``nn.Module`` or a
            Keras 3 model (then give ``labels`` and ``preprocessing`` if they are not the
            defaults of :func:`camlens.models.wrap_model`; the model is used as it is).
        output: for a multi-output Keras model, the output to explain (index or name).
        trust_pickle: allow ``model`` to name a whole pickled ``nn.Module`` file, which runs
            any code the file holds (see :func:`camlens.models.load_model`).
    """

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        *,
        weights: str | Path | None = None,
        labels: str | Path | None = None,
        preprocessing: Preprocessing | None = None,
        device: str | torch.device = "auto",
        output: int | str | None = None,
        trust_pickle: bool = False,
    ) -> None:
        if isinstance(model, str):
            model = load_model(model, weights=weights, labels=labels, device=device, output=output, trust_pickle=trust_pickle)
        elif not isinstance(model, LoadedModel):
            model = wrap_model(model, labels=labels, preprocessing=preprocessing, output=output)
        self.loaded: LoadedModel = model
        self.backend = backend_for(model)
        self._explainers: dict[tuple[object, ...], ExplainerFn] = {}

    @property
    def labels(self) -> Labels:
        return self.loaded.labels

    def tensor(self, images: Sequence[Image.Image]) -> Any:
        """Preprocess RGB images into the model's input batch (a tensor on its device for
        PyTorch, a channels-last array for Keras)."""
        return self.backend.to_input(self.loaded, self.loaded.preprocessing(images))

    def predict(self, images: Sequence[ImageLike], top: int = 5) -> list[list[Prediction]]:
        """Top-``top`` predictions for each image (one forward pass, no gradients)."""
        logits = self.backend.logits(self.loaded, self.tensor([as_image(i) for i in images]))
        return [self._top(row, top) for row in softmax(logits)]

    def explain(
        self,
        images: Sequence[ImageLike],
        method: str | Method | Sequence[str | Method] = "gradcam",
        layer: Any = None,
        target: TargetSpec = None,
        top: int = 5,
        fuse: str | None = None,
    ) -> list[list[Explanation]]:
        """Explain each image; one forward pass for the batch whatever the number of methods,
        layers and targets.

        Args:
            target: ``None`` (the top class), a class index, a class name (any synonym, any
                case), ``"top-k"`` (the k best classes), ``"all"`` (every class), or a list.
            top: how many predictions to list with each explanation.
            fuse: with several layers, also a map fusing them (``mean``, ``max``, ``product``).

        Returns:
            Per image, explanations ordered by target, then method, then layer.
        """
        pictures = [as_image(i) for i in images]
        sources = [str(i) if isinstance(i, (str, Path)) else "<image>" for i in images]
        request = self.parse_targets(target)
        result = self.explainer(method, layer, fuse)(self.tensor(pictures), request.choose)
        probs = result.probabilities
        out: list[list[Explanation]] = []
        for i, picture in enumerate(pictures):
            preds = self._top(probs[i], top)
            items: list[Explanation] = []
            row = [int(c) for c in result.targets[i]]
            for cls in dict.fromkeys(row):  # a class asked for twice is explained once
                k = row.index(cls)
                tgt = Prediction(cls, self.labels[cls], float(probs[i, cls]))
                for m, by_layer in result.maps.items():
                    for name, maps in by_layer.items():
                        items.append(Explanation(picture, sources[i], m, name, tgt, preds, maps[i, k]))
            out.append(items)
        return out

    def features(self, image: ImageLike, layer: Any = None) -> tuple[str, np.ndarray]:
        """``(layer name, (C, h, w) activations)`` of one image at a layer (automatic if None)."""
        name, acts = self.backend.feature_maps(self.loaded, self.tensor([as_image(image)]), layer)
        return name, acts[0]

    def explainer(self, method: str | Method | Sequence[str | Method], layer: Any, fuse: str | None = None) -> ExplainerFn:
        """The (cached) explainer for these methods and layers on this model, so that automatic
        layers and the CAM head are found once, not once per batch."""
        key = (_method_key(method), _key(layer), fuse)
        if key not in self._explainers:
            self._explainers[key] = self.backend.explainer(self.loaded, method, layer, fuse)
        return self._explainers[key]

    def parse_targets(self, target: TargetSpec) -> TargetRequest:
        """A target spec as a :class:`TargetRequest` (names and indices checked here, once).

        Raises:
            TargetError: an unknown class name or index (with the closest names).
        """
        if target is None:
            return TargetRequest(best=1)
        specs = [target] if isinstance(target, (int, str)) else list(target)
        fixed: list[int] = []
        best = 0
        every = False
        for spec in specs:
            text = str(spec).strip().lower()
            if text == ALL:
                every = True
                continue
            if text.startswith("top-") or text.startswith("top"):
                count = text.removeprefix("top").lstrip("-")
                if count.isdigit() and int(count) > 0:
                    best = max(best, int(count))
                    continue
                if not count:
                    best = max(best, 1)
                    continue
            if isinstance(spec, bool):
                raise TargetError(f"invalid target {spec!r}")
            fixed.append(self.labels.index(spec))
        if every and (fixed or best):
            raise TargetError("target 'all' already explains every class; give it alone")
        return TargetRequest(tuple(dict.fromkeys(fixed)), best, every)

    def _top(self, probs: np.ndarray, top: int) -> list[Prediction]:
        order = np.argsort(-probs, kind="stable")[: max(1, top)]
        return [Prediction(int(j), self.labels[int(j)], float(probs[j])) for j in order]


def as_image(image: ImageLike) -> Image.Image:
    """Read a path, or convert a PIL image / ``(H, W[, C])`` uint8 array, to RGB."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise CamlensError(f"expected an (H, W) or (H, W, C) uint8 array, got {image.dtype} {image.shape}")
        return to_rgb(Image.fromarray(image))
    raise CamlensError(f"cannot read an image from {type(image).__name__}")


def _method_key(spec: str | Method | Sequence[str | Method]) -> tuple[object, ...]:
    """Methods by canonical name (``Grad-CAM`` and ``gradcam`` share an explainer), instances by identity."""
    items = [spec] if isinstance(spec, (str, Method)) else list(spec)
    return tuple(
        part for item in items
        for part in ([canonical_name(p) for p in item.split(",") if p.strip()] if isinstance(item, str) else [id(item)])
    )


def _key(spec: object) -> object:
    """A hashable cache key for a method/layer spec (modules and methods by identity)."""
    if isinstance(spec, (list, tuple)):
        return tuple(_key(s) for s in spec)
    return spec if isinstance(spec, str) or spec is None else id(spec)


@lru_cache(maxsize=4)
def _lens(model: str, device: str) -> Lens:
    return Lens(model, device=device)


def explain(
    image: ImageLike,
    model: Any = DEFAULT_MODEL,
    *,
    method: str = "gradcam",
    target: int | str | None = None,
    layer: Any = None,
    top: int = 5,
    device: str = "auto",
) -> Explanation:
    """Explain one image with one method, layer and target: the one-call API.

    >>> exp = camlens.explain("cat.jpg", target="tabby cat")   # doctest: +SKIP
    >>> exp.predictions, exp.heatmap, exp.save("cat_gradcam.png")  # doctest: +SKIP

    ``model`` is a name (loaded once and kept for later calls), a :class:`Lens`, an
    ``nn.Module`` or a Keras model; ``layer`` a layer name (``"outer/inner"`` for a layer of a
    nested Keras model), a module/layer object, or None for the automatic choice.
    """
    lens = model if isinstance(model, Lens) else _lens(model, device) if isinstance(model, str) else Lens(model)
    return lens.explain([image], method, layer, target, top)[0][0]
