"""Walking and running Keras 3 models layer by layer, nested sub-models included.

A layer is named by its path: ``("resnet50", "conv5_block3_out")`` for a layer inside a nested
model, written ``"resnet50/conv5_block3_out"`` (or the bare name when it is unique). Running a
model goes through Keras' own graph executor with a per-layer interception, so nested models
are executed inside the outer graph: no sub-model is built, nothing is rewired, the user's
model is not changed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras

from camlens.core.layouts import MAX_PREFIX, NHWC, TOKENS, Layout
from camlens.errors import LayerError

LayerPath = tuple[str, ...]
Hook = Callable[[LayerPath, Any], Callable[..., Any] | None]

_NOT_TARGETS = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Dropout,
    keras.layers.InputLayer,
)


def is_container(layer: Any) -> bool:
    """True for a nested model (functional or Sequential) whose layers camlens can enter."""
    return isinstance(layer, keras.Model) and bool(getattr(layer, "layers", None))


def walk(model: Any, prefix: LayerPath = ()) -> Iterator[tuple[LayerPath, Any]]:
    """Every layer with its path, in the model's (topological) layer order, depth first."""
    for layer in model.layers:
        path = (*prefix, layer.name)
        yield path, layer
        if is_container(layer):
            yield from walk(layer, path)


def name_of(path: LayerPath) -> str:
    return "/".join(path)


def resolve(model: Any, spec: str | Any) -> LayerPath:
    """Path of a layer given as ``"outer/inner"``, a bare unique name, or a layer object.

    Raises:
        LayerError: unknown or ambiguous name; the message lists close or candidate names.
    """
    layers = list(walk(model))
    if not isinstance(spec, str):
        for path, layer in layers:
            if layer is spec:
                return path
        raise LayerError(f"layer {getattr(spec, 'name', spec)!r} is not part of the model")
    parts = tuple(p for p in spec.strip().split("/") if p)
    matches = [p for p, _ in layers if p == parts] or [p for p, _ in layers if p[-len(parts) :] == parts]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise LayerError(f"layer name {spec!r} is ambiguous: {', '.join(name_of(p) for p in matches[:5])}")
    by_name = {name_of(p): name_of(p) for p, _ in layers} | {p[-1]: name_of(p) for p, _ in layers}
    close = list(dict.fromkeys(by_name[c] for c in difflib.get_close_matches(spec, list(by_name), n=5, cutoff=0.5)))
    hint = f"; did you mean {', '.join(close)}?" if close else "; `camlens layers MODEL` lists them"
    raise LayerError(f"model has no layer {spec!r}{hint}")


def output_shape(layer: Any) -> tuple[int | None, ...] | None:
    """A layer's symbolic output shape, or None if it has several outputs or none."""
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return None
    shape = getattr(out, "shape", None)
    return tuple(shape) if shape is not None else None


def spatial(shape: tuple[int | None, ...] | None) -> bool:
    """A ``(N, H, W, C)`` shape with more than one position (unknown sizes count as spatial)."""
    if shape is None or len(shape) != 4:
        return False
    h, w = shape[1], shape[2]
    return h is None or w is None or h * w > 1


def layout_of(model: Any, path: LayerPath) -> Layout | None:
    """A layer's layout, found from the model's graph: ``(N, h, w, C)`` outputs are NHWC
    (Keras is channels last); ``(N, L, C)`` tokens after a patch embedding, of its width ``C``,
    are tokens on that embedding's grid (the last ``(N, h, w, C)`` layer before them), with the
    ``L - h w`` (at most :data:`~camlens.core.layouts.MAX_PREFIX`) tokens beyond it first
    (class tokens). None when neither (state the layout: ``layout="tokens:1"``)."""
    layers = list(walk(model))
    where = [p for p, _ in layers].index(path)
    shape = output_shape(layers[where][1])
    if shape is None:
        return None
    if len(shape) == 4:
        return Layout(NHWC)
    if len(shape) != 3 or shape[1] is None:
        return None
    before = [output_shape(layer) for _, layer in layers[:where] if not is_container(layer)]
    grids = [s for s in before if s is not None and spatial(s) and None not in s[1:]]
    if not grids:
        return None
    _, h, w, channels = grids[-1]
    prefix = int(shape[1]) - int(h) * int(w)  # type: ignore[arg-type]
    same_width = shape[2] == channels  # the embedding's tokens, not a reshaped (channels, positions) view
    return Layout(TOKENS, prefix, (int(h), int(w))) if same_width and 0 <= prefix <= MAX_PREFIX else None  # type: ignore[arg-type]


def auto_layer(model: Any, backbone: bool = False, head: LayerPath | None = None) -> LayerPath:
    """The last layer with a spatial output that is not pooling, dropout or a nested model
    (whose inside is searched instead): the features that feed global pooling. On a
    transformer (token layers and a ``MultiHeadAttention`` after the last such layer), the
    input of the last attention: the ``LayerNormalization`` just before it, on the patch grid.

    With ``backbone`` (a segmentation head, whose last spatial layers are the head itself), the
    last stage of the last nested model (a ``keras.applications`` backbone) when there is one,
    else the last spatial layer before the ``head`` layer (the output convolution)."""
    layers = list(walk(model))
    if backbone and head is not None and head in [p for p, _ in layers]:
        layers = layers[: [p for p, _ in layers].index(head)]
    candidates = [(path, layer) for path, layer in layers
                  if spatial(output_shape(layer)) and not is_container(layer) and not isinstance(layer, _NOT_TARGETS)]
    if backbone:
        nested = [path for path, layer in layers if is_container(layer)]
        inside = [c for c in candidates if nested and c[0][: len(nested[-1])] == nested[-1]]
        candidates = inside or (candidates if head is not None else candidates[:-1])
    chosen = None
    for path, _ in candidates:
        chosen = path
    if not backbone:
        chosen = _last_attention_input(model, layers, chosen) or chosen
    if chosen is None:
        raise LayerError("found no layer with a spatial (N, H, W, C) output; give layer= explicitly")
    return chosen


def _last_attention_input(model: Any, layers: list[tuple[LayerPath, Any]], after: LayerPath | None) -> LayerPath | None:
    """The ``LayerNormalization`` right before the last ``MultiHeadAttention`` (after ``after``),
    when its output holds tokens on a grid."""
    paths = [p for p, _ in layers]
    start = paths.index(after) + 1 if after in paths else 0
    attention = [i for i in range(start, len(layers)) if isinstance(layers[i][1], keras.layers.MultiHeadAttention)]
    if not attention:
        return None
    norms = [i for i in range(start, attention[-1]) if isinstance(layers[i][1], keras.layers.LayerNormalization)]
    if not norms:
        return None
    layout = layout_of(model, paths[norms[-1]])
    return paths[norms[-1]] if layout is not None and layout.kind == TOKENS else None


def run(model: Any, inputs: Any, hook: Hook, descend: set[LayerPath], prefix: LayerPath = ()) -> Any:
    """Call ``model`` on ``inputs`` through its graph; ``hook(path, layer)`` may return a
    callable that replaces the layer's call. Nested models whose path is in ``descend`` are run
    the same way, so hooks reach their layers."""

    def operation(op: Any) -> Callable[..., Any]:
        path = (*prefix, op.name)
        if path in descend:
            return lambda *args, **kwargs: run(op, args[0] if len(args) == 1 else list(args), hook, descend, path)
        replacement = hook(path, op)
        return replacement if replacement is not None else op

    graph = model if _is_functional(model) else getattr(model, "_functional", None)
    if graph is not None:
        outputs = graph._run_through_graph(graph._standardize_inputs(inputs), operation_fn=operation)
        return outputs[0] if isinstance(outputs, Sequence) and len(outputs) == 1 else outputs
    x = inputs
    for layer in model.layers:
        x = operation(layer)(x)
    return x


def descend_set(paths: Sequence[LayerPath]) -> set[LayerPath]:
    """The nested models that must be entered to reach these layers."""
    return {p[:i] for p in paths for i in range(1, len(p))}


def _is_functional(model: Any) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)
