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

from camlens import arguments, render
from camlens.adapters.backends import ExplainerFn, backend_for
from camlens.core.augment import Augment
from camlens.core.maps import normalize, upsample
from camlens.core.methods import Method, canonical_spec, methods_from
from camlens.core.record import MAX_BATCH, Progress
from camlens.core.targets import (
    ALL,
    SCORES,
    AllClasses,
    Class,
    Column,
    Detection,
    Finer,
    Probability,
    Segmentation,
    Sigmoid,
    Similarity,
    Target,
    Top,
)
from camlens.errors import CamlensError, ImageError, TargetError
from camlens.imageio import read_image, safe_part, save_image, to_rgb
from camlens.models import DEFAULT_MODEL, LoadedModel, load_model, wrap_model
from camlens.models.labels import Labels
from camlens.models.preprocess import Preprocessing

ImageLike = str | Path | Image.Image | np.ndarray
TargetSpec = int | str | Target | Sequence[int | str | Target] | None
MaskLike = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One class with its probability (softmax; for a segmentation model, its share of pixels;
    for a detector, its best detection score). ``index`` is -1 and ``probability`` None for a
    target that is not a class (a similarity, a custom score)."""

    index: int
    label: str
    probability: float | None

    def to_dict(self) -> dict[str, object]:
        p = None if self.probability is None else round(self.probability, 6)
        return {"index": self.index, "label": self.label, "probability": p}


@dataclass(frozen=True)
class BoxRequest:
    """A detection target given in the image's own pixels (``box:x0,y0,x1,y1[:label]``)."""

    box: tuple[float, float, float, float]
    label: int | None = None


@dataclass(frozen=True)
class TargetRequest:
    """Targets parsed once from a spec (see :meth:`Lens.parse_targets`): target kinds, plus
    boxes and a region mask given in each image's own pixels, converted per batch."""

    targets: tuple[Target, ...] = ()
    boxes: tuple[BoxRequest, ...] = ()
    mask: np.ndarray | None = None

    @property
    def every(self) -> bool:
        """Every class is explained (``all``)."""
        return any(isinstance(t, AllClasses) for t in self.targets)

    def check(self, picture: Image.Image) -> None:
        """Refuse a picture this request cannot explain (a mask of another size), in one line."""
        if self.mask is not None:
            _mask_for(self.mask, picture, (1, 1))

    def for_batch(self, pictures: Sequence[Image.Image], input_size: tuple[int, int]) -> list[Target]:
        """The target kinds for a batch of ``pictures`` resized to ``input_size``: boxes and
        the mask scaled from each picture's pixels to the model input's."""
        out = list(self.targets)
        h, w = input_size
        if self.mask is not None:
            masks = np.stack([_mask_for(self.mask, p, input_size) for p in pictures])
            out = [_with_mask(t, masks) for t in out or [Top(1)]]
        for b in self.boxes:
            scaled = [np.array([[b.box[0] * w / p.width, b.box[1] * h / p.height, b.box[2] * w / p.width,
                                 b.box[3] * h / p.height]]) for p in pictures]
            out.append(Detection(scaled, None if b.label is None else [b.label]))
        return out or [Top(1)]


def _with_mask(target: Target, masks: np.ndarray) -> Target:
    if isinstance(target, Class):
        return Segmentation(target.index, masks)
    if isinstance(target, Top) and target.k == 1:
        return Segmentation(None, masks)
    raise TargetError(f"mask= goes with one class (or the top class) of a segmentation model, not {target!r}")


def _mask_for(mask: np.ndarray, picture: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A mask at a picture's size resized (nearest) to the model input's."""
    if mask.shape != (picture.height, picture.width):
        raise TargetError(f"mask of {mask.shape[1]}x{mask.shape[0]} pixels does not fit an image of "
                          f"{picture.width}x{picture.height}")
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(small) > 127


_CLASS_KINDS = ("class", "probability", "sigmoid", "finer")


@dataclass
class Explanation:
    """One map: an image explained for one target, by one method, at one layer.

    ``raw`` is the map at the layer's resolution, before normalisation; ``heatmap`` is it
    resized bilinearly to the original image and min-max scaled to [0, 1]. ``kind`` is the
    target kind (``class``, ``segmentation``, ``similarity``, ``detection``...), ``score`` the
    explained score's value; ``region`` (a segmentation target's pixels) and ``box`` (a
    detection's) are in the original image's pixels and are outlined on overlays.
    """

    image: Image.Image = field(repr=False)
    source: str
    method: str
    layer: str
    target: Prediction
    predictions: list[Prediction]
    raw: np.ndarray = field(repr=False)
    kind: str = "class"
    score: float = float("nan")
    region: np.ndarray | None = field(default=None, repr=False)
    box: tuple[float, float, float, float] | None = None
    what: str = ""
    """The target's own name when it is not a class (``similar-to cat``, ``box 10,20,60,80``)."""

    @cached_property
    def heatmap(self) -> np.ndarray:
        """``(H, W)`` map at the original image size, in [0, 1] (all zeros if constant)."""
        return normalize(upsample(self.raw, (self.image.height, self.image.width)))

    def overlay(self, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        """The image with the colormapped heatmap blended over it (and the region or box the
        target explained outlined)."""
        picture = render.overlay(self.image, self.heatmap, colormap, alpha)
        return render.mark(picture, self.region, self.box) if self.region is not None or self.box else picture

    def panel(self, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        """Original | heatmap | overlay, titled with method, class and probability."""
        return render.panel(self.image, self.heatmap, colormap, alpha, self.title)

    @property
    def title(self) -> str:
        t = self.target
        value = f"{t.probability:.1%}" if t.probability is not None and self.kind in _CLASS_KINDS else f"score {self.score:.3g}"
        return f"{self.method} @ {self.layer}: {self.name} ({value})"

    @property
    def name(self) -> str:
        """What was explained, in words: the class label, ``similar-to cat``, ``box 10,20,60,80 (dog)``..."""
        if self.kind in _CLASS_KINDS:
            return self.target.label
        if self.kind == "segmentation":
            return f"{self.target.label} region"
        label = self.target.label.split(",")[0]
        return f"{self.what} ({label})" if self.target.index >= 0 and self.what else self.what or label

    @property
    def tag(self) -> str:
        """The part of an output file name that says what was explained."""
        first = safe_part(self.target.label.split(",")[0])
        if self.kind == "class":
            return f"{self.target.index}-{first}"
        if self.kind in _CLASS_KINDS:  # probability, sigmoid: the same class, another score
            return f"{self.target.index}-{first}-{self.kind}"
        if self.kind == "segmentation":
            return f"{self.target.index}-{first}-region"
        what = safe_part(self.what or self.kind)
        return f"{what}-{first}" if self.target.index >= 0 else what

    def save(
        self, path: str | Path, colormap: str = "jet", alpha: float = 0.5, *, panel: bool = False, overwrite: bool = False
    ) -> Path:
        """Write the overlay (or the panel) to ``path`` (PNG, JPEG... by suffix), atomically,
        refusing to replace an existing file unless ``overwrite``."""
        dest = arguments.path(path, "path")
        if dest.is_dir():
            raise CamlensError(f"{dest}: is a folder; give a file name such as {dest / 'map.png'}")
        picture = self.panel(colormap, alpha) if panel else self.overlay(colormap, alpha)
        return save_image(picture, dest, overwrite)

    def _repr_png_(self) -> bytes:
        """The panel, so that an explanation shows itself in Jupyter."""
        import io

        buffer = io.BytesIO()
        self.panel().save(buffer, format="PNG")
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        """The panel and the table of the top predictions, for Jupyter (every text escaped)."""
        import base64
        from html import escape

        image = base64.b64encode(self._repr_png_()).decode("ascii")
        rows = "".join(
            f"<tr><td>{p.index}</td><td>{escape(p.label)}</td>"
            f"<td>{'' if p.probability is None else f'{p.probability:.1%}'}</td></tr>"
            for p in self.predictions
        )
        return (f'<div><img src="data:image/png;base64,{image}" alt="{escape(self.title)}"/>'
                f"<p>{escape(self.source)}: {escape(self.title)}</p>"
                f"<table><thead><tr><th>class</th><th>label</th><th>probability</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></div>")

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "source": self.source,
            "method": self.method,
            "layer": self.layer,
            "kind": self.kind,
            "target": self.target.to_dict(),
            "score": None if np.isnan(self.score) else round(self.score, 6),
            "predictions": [p.to_dict() for p in self.predictions],
        }
        if self.box is not None:
            out["box"] = [round(float(v), 2) for v in self.box]
        return out


class Lens:
    """A loaded model with its labels and preprocessing, ready to predict and explain.

    Args:
        model: a model name for :func:`camlens.models.load_model` (default: the bundled
            EfficientNet-Lite0), a :class:`~camlens.models.LoadedModel`, an ``nn.Module`` or a
            Keras 3 model (then give ``labels`` and ``preprocessing`` if they are not the
            defaults of :func:`camlens.models.wrap_model`; the model is used as it is).
        output: the output to explain: a multi-output Keras model's (index or name), or a
            PyTorch model's tuple index or dict/``ModelOutput`` key.
        trust_pickle: allow ``model`` to name a whole pickled ``nn.Module`` file, which runs
            any code the file holds (see :func:`camlens.models.load_model`).
        headless: with a model name, drop its classifier so that it outputs an embedding.
        pretrained: False builds a named architecture with random weights (offline).
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
        headless: bool = False,
        pretrained: bool = True,
    ) -> None:
        if isinstance(model, Path):
            model = str(model)
        if isinstance(model, str):
            model = load_model(model, weights=weights, labels=labels, device=device, output=output, trust_pickle=trust_pickle,
                               headless=headless, pretrained=pretrained)
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
        """Top-``top`` predictions for each image (one forward pass, no gradients); none for an
        embedding model."""
        images, top = arguments.images(images), arguments.count(top, "top")
        if self.loaded.embedding:
            return [[] for _ in images]
        probs = self.backend.output(self.loaded, self.tensor([as_image(i) for i in images])).probabilities
        return [self._top(row, top) for row in probs]

    def explain(
        self,
        images: Sequence[ImageLike],
        method: str | Method | Sequence[str | Method] = "gradcam",
        layer: Any = None,
        target: TargetSpec | TargetRequest = None,
        top: int = 5,
        fuse: str | None = None,
        mask: MaskLike | None = None,
        layout: Any = None,
        *,
        max_batch: int = MAX_BATCH,
        progress: Progress | None = None,
        augment: Augment | None = None,
        prepared: np.ndarray | None = None,
    ) -> list[list[Explanation]]:
        """Explain each image; one forward pass for the batch whatever the number of methods,
        layers and targets.

        Args:
            target: ``None`` (the top class), a class index, a class name (any synonym, any
                case), ``"top-k"``, ``"all"``, ``"prob:CLASS"``, ``"sigmoid:CLASS"``,
                ``"finer"`` or ``"finer:CLASS"`` (Finer-CAM's score),
                ``"similar-to:IMAGE"`` (embedding models), ``"box:x0,y0,x1,y1[:CLASS]"``
                (detectors, image pixels), a :mod:`camlens.targets` kind, or a list of these;
                or a :class:`TargetRequest` parsed before (:meth:`parse_targets`). On a
                segmentation model a class means its predicted region.
            top: how many predictions to list with each explanation.
            fuse: with several layers, also a map fusing them (``mean``, ``max``, ``product``).
            mask: a region of the image (a file, a PIL image or an ``(H, W)`` array at the
                image's size, nonzero inside) whose class logits a segmentation target sums.
            layout: a PyTorch layer's layout when the model does not tell it (``"tokens:1"``).
            max_batch: inputs per extra forward pass of the methods that run the model again
                (Score-CAM, Ablation-CAM, RISE...): bounds their memory.
            progress: told ``(what, done, total)`` as those methods go (see
                :data:`camlens.core.record.Progress`).
            augment: average the maps over noisy, flipped or rescaled copies of each image
                (:class:`camlens.Augment`).
            prepared: the images already preprocessed by ``lens.loaded.preprocessing`` (as a
                decoding worker of :mod:`camlens.pipeline` does), used instead of doing it again.

        Returns:
            Per image, explanations ordered by target, then method, then layer.
        """
        images, top = arguments.images(images), arguments.count(top, "top")
        pictures = [as_image(i) for i in images]
        sources = [str(i) if isinstance(i, (str, Path)) else "<image>" for i in images]
        request = target if isinstance(target, TargetRequest) else self.parse_targets(target, mask)
        targets = request.for_batch(pictures, self.loaded.preprocessing.input_size)
        explainer = self.explainer(method, layer, fuse, layout, max_batch, augment)
        if prepared is not None and len(prepared) != len(pictures):
            raise CamlensError(f"prepared holds {len(prepared)} inputs for {len(pictures)} images")
        batch = self.loaded.preprocessing(pictures) if prepared is None else prepared
        result = explainer(self.backend.to_input(self.loaded, batch), targets, progress=progress)
        probs = result.probabilities
        out: list[list[Explanation]] = []
        for i, picture in enumerate(pictures):
            preds = [] if self.loaded.embedding else self._top(probs[i], top)
            items: list[Explanation] = []
            seen: set[tuple[str, int, str | None]] = set()
            for k, column in enumerate(result.columns):
                cls = int(column.classes[i])
                key = (column.kind, cls, column.label)
                if key in seen:  # a target asked for twice (a class, and the top class) is explained once
                    continue
                seen.add(key)
                details = self._details(column, i, picture, probs[i], float(result.scores[i, k]))
                for m, by_layer in result.maps.items():
                    for name, maps in by_layer.items():
                        items.append(Explanation(picture, sources[i], m, name, predictions=preds, raw=maps[i, k], **details))
            out.append(items)
        return out

    def _details(self, column: Column, i: int, picture: Image.Image, probs: np.ndarray, score: float) -> dict[str, Any]:
        """What one explanation says about its target: the class, the region or box in the
        picture's pixels, the score."""
        cls = int(column.classes[i])
        label = self.labels[cls] if 0 <= cls < len(self.labels) else column.label or column.kind
        probability = float(probs[cls]) if 0 <= cls < probs.shape[0] else None
        h, w = self.loaded.preprocessing.input_size
        region = box = None
        if column.regions is not None:
            small = Image.fromarray(column.regions[i].astype(np.uint8) * 255)
            region = np.asarray(small.resize((picture.width, picture.height), Image.Resampling.NEAREST)) > 127
        if column.boxes is not None and np.all(np.isfinite(column.boxes[i])):
            b = column.boxes[i]
            box = (float(b[0] * picture.width / w), float(b[1] * picture.height / h),
                   float(b[2] * picture.width / w), float(b[3] * picture.height / h))
        what = column.label or ""
        if box is not None and what.startswith("box "):  # a given box, in the picture's own pixels
            what = "box " + ",".join(f"{v:g}" for v in np.round(box, 1))
        return {"target": Prediction(cls, label, probability), "kind": column.kind, "score": score,
                "region": region, "box": box, "what": what}

    def features(self, image: ImageLike, layer: Any = None) -> tuple[str, np.ndarray]:
        """``(layer name, (C, h, w) activations)`` of one image at a layer (automatic if None)."""
        name, acts = self.backend.feature_maps(self.loaded, self.tensor([as_image(image)]), layer)
        return name, acts[0]

    def explainer(self, method: str | Method | Sequence[str | Method], layer: Any, fuse: str | None = None,
                  layout: Any = None, max_batch: int = MAX_BATCH, augment: Augment | None = None) -> ExplainerFn:
        """The (cached) explainer for these methods and layers on this model, so that automatic
        layers and the CAM head are found once, not once per batch."""
        methods_from(method)  # a bad method spec fails here, in one line
        max_batch = arguments.count(max_batch, "max_batch")
        key = (_method_key(method), _key(layer), fuse, _key(layout), max_batch, augment)
        if key not in self._explainers:
            self._explainers[key] = self.backend.explainer(self.loaded, method, layer, fuse, layout, max_batch, augment)
        return self._explainers[key]

    def parse_targets(self, target: TargetSpec, mask: MaskLike | None = None) -> TargetRequest:
        """A target spec as a :class:`TargetRequest`, names and indices checked here, once
        (see :meth:`explain` for the forms).

        Raises:
            TargetError: an unknown class name or index (with the closest names), a malformed
                box, an unreadable reference image or mask.
        """
        if isinstance(target, (float, dict, set, bytes)) and not isinstance(target, bool):
            raise TargetError(f"a target is a class index, a name, a spec string or a camlens target, not "
                              f"{type(target).__name__} {str(target)[:60]}")
        scalar = isinstance(target, (int, np.integer, str, Target))
        specs: list[Any] = [] if target is None else [target] if scalar else list(target)  # type: ignore[arg-type]
        best = 0
        fixed: list[Target] = []
        boxes: list[BoxRequest] = []
        for spec in specs:
            if isinstance(spec, Target):
                fixed.append(spec)
                continue
            if isinstance(spec, bool) or not isinstance(spec, (int, str, np.integer)):
                raise TargetError(f"invalid target {spec!r} ({type(spec).__name__}): a target is a class index, a name or "
                                  "a spec string"[:300])
            text = str(spec).strip()
            low = text.lower()
            kind, _, rest = text.partition(":")
            if low == ALL:
                fixed.append(AllClasses())
            elif low.startswith("top") and (low[3:].lstrip("-").isdigit() or low == "top"):
                count = int(low[3:].lstrip("-") or 1)
                if count < 1:
                    raise TargetError(f"invalid target {text!r}; top-K needs K >= 1")
                best = max(best, count)
            elif rest and kind.strip().lower() in ("prob", "probability"):
                fixed.append(Probability(self.labels.index(rest.strip())))
            elif rest and kind.strip().lower() == "sigmoid":
                fixed.append(Sigmoid(self.labels.index(rest.strip())))
            elif low == "finer":
                fixed.append(Finer())
            elif rest and kind.strip().lower() == "finer":
                fixed.append(Finer(self.labels.index(rest.strip())))
            elif rest and kind.strip().lower() == "similar-to":
                fixed.append(self._similar_to(rest.strip()))
            elif rest and kind.strip().lower() == "box":
                boxes.append(self._box(rest, text))
            else:
                fixed.append(Class(self.labels.index(int(spec) if isinstance(spec, np.integer) else spec)))
        if any(isinstance(t, AllClasses) for t in fixed) and (best or len(fixed) > 1 or boxes):
            raise TargetError("target 'all' already explains every class; give it alone")
        picked = ([Top(best)] if best else []) + fixed
        return TargetRequest(tuple(picked), tuple(boxes), None if mask is None else read_mask(mask))

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """``(N, D)`` the model's output vectors for images (an embedding model's embeddings)."""
        return self.backend.output(self.loaded, self.tensor([as_image(i) for i in arguments.images(images)])).array

    def _similar_to(self, path: str) -> Similarity:
        try:
            picture = read_image(path)
        except CamlensError as exc:
            raise TargetError(f"similar-to: {exc}") from None
        out = self.backend.output(self.loaded, self.tensor([picture]))
        if out.kind != SCORES:
            raise TargetError(f"similar-to:{path}: needs a model that outputs an embedding vector")
        return Similarity(out.array[0], name=f"similar-to {Path(path).stem}")

    def _box(self, rest: str, text: str) -> BoxRequest:
        coords, _, label = rest.partition(":")
        try:
            values = tuple(float(v) for v in coords.split(","))
        except ValueError:
            values = ()
        if len(values) != 4 or not all(np.isfinite(values)) or values[2] <= values[0] or values[3] <= values[1]:
            raise TargetError(f"invalid target {text!r}; a box is box:x0,y0,x1,y1[:CLASS] with x1 > x0 and y1 > y0")
        return BoxRequest(values, self.labels.index(label.strip()) if label.strip() else None)  # type: ignore[arg-type]

    def _top(self, probs: np.ndarray, top: int) -> list[Prediction]:
        order = np.argsort(-probs, kind="stable")[:top]
        return [Prediction(int(j), self.labels[int(j)] if j < len(self.labels) else f"class {j}", float(probs[j])) for j in order]


def read_mask(mask: MaskLike) -> np.ndarray:
    """A region as an ``(H, W)`` bool array: a file or PIL image (nonzero pixels inside), or an array.

    Raises:
        TargetError: an unreadable file, or not a 2-D mask.
    """
    if isinstance(mask, (str, Path)):
        try:
            mask = read_image(mask).convert("L")
        except CamlensError as exc:
            raise TargetError(f"mask: {exc}") from None
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    a = np.asarray(mask)
    if a.ndim != 2 or a.dtype == object:
        raise TargetError(f"a mask is an (H, W) array or a grayscale image, got shape {a.shape}")
    region = a > 0
    if not region.any():
        raise TargetError("the mask is empty: no pixel is inside the region")
    return region


def as_image(image: ImageLike) -> Image.Image:
    """Read a path, or convert a PIL image / ``(H, W[, C])`` uint8 array, to RGB."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise ImageError(f"the image is empty: {image.width}x{image.height}")
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ImageError(f"expected an (H, W) or (H, W, C) uint8 array with C = 1, 3 or 4, got {image.dtype} {image.shape}")
        if 0 in image.shape:
            raise ImageError(f"the image array is empty: shape {image.shape}")
        return to_rgb(Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image))
    raise ImageError(f"cannot read an image from {type(image).__name__}; give a path, a PIL image or a uint8 array")


def _method_key(spec: str | Method | Sequence[str | Method]) -> tuple[object, ...]:
    """Methods by canonical name and settings (``Grad-CAM`` and ``gradcam`` share an explainer),
    instances by identity."""
    items = [spec] if isinstance(spec, (str, Method, type)) else list(spec)
    return tuple(
        part for item in items
        for part in ([canonical_spec(p) for p in item.split(",") if p.strip()] if isinstance(item, str) else [id(item)])
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
