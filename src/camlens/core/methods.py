"""CAM methods: each a small class that maps a :class:`~camlens.core.record.LayerRecord` to maps.

A method states what it needs (:class:`~camlens.core.record.Need`) and how many backward
passes it costs per target; the adapter prepares only that. Channel-weighted methods implement
:meth:`ChannelWeighted.weights`; per-position and projection methods implement
:meth:`Method.maps`. Adding a method is one class with ``@register`` and its golden test; the
registry feeds ``camlens methods``, the CLI help, the README table and parametrised tests.

A method instance may also be bound to a model: ``GradCAM(model, layer="layer4")(batch)``
(PyTorch or Keras; see :func:`camlens.adapters.explainer_for`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from camlens.core.record import MAX_BATCH, AttentionMaps, LayerRecord, Need, Progress
from camlens.errors import CamlensError, MethodError

if TYPE_CHECKING:
    from camlens.core.result import CamResult
    from camlens.core.targets import Targets

_REGISTRY: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}


class Method(ABC):
    """A class activation map method.

    Subclasses set ``name`` (canonical registry key), ``title``, ``paper``, ``formula`` (one
    line, for listings), ``needs`` and ``backwards`` (backward passes per target beyond the
    shared forward), optionally ``aliases`` and ``cost`` (in words, for methods that run the model
    again), and implement :meth:`maps`.

    Args:
        model: optional; binds the method to a PyTorch module or Keras model so that calling
            it explains a batch (``with GradCAM(model, layer="layer4") as cam: cam(batch)``).
        layer: target layer(s) of the bound model; ``None`` for the automatic choice.
        output: the output to explain (see :class:`camlens.Explainer`).
        layout: a layer's layout when the model does not tell it (``"tokens:1"``).
        max_batch: inputs per extra forward pass, for methods that run the model again.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    needs: ClassVar[frozenset[Need]] = frozenset()
    backwards: ClassVar[int] = 0
    aliases: ClassVar[tuple[str, ...]] = ()
    formula: ClassVar[str]
    cost: ClassVar[str | None] = None
    """The cost per image in words, for methods whose cost is not a count of backward passes."""
    input_resolution: ClassVar[bool] = False
    """The maps come at the input's resolution (masks of the image), not the layer's."""

    def __init__(self, model: Any = None, layer: Any = None, *, output: int | str | None = None,
                 layout: Any = None, max_batch: int = MAX_BATCH) -> None:
        self._bound: Any = None
        if model is not None:
            from camlens.adapters import explainer_for  # the core imports no framework; adapters do, lazily

            self._bound = explainer_for(model, [self], layer, output=output, layout=layout, max_batch=max_batch)

    @abstractmethod
    def maps(self, record: LayerRecord) -> np.ndarray:
        """Return ``(N, K, h, w)`` raw maps (the layer's resolution, or the input's with
        :attr:`input_resolution`; not normalised)."""

    def __call__(self, batch: Any, targets: Targets = None, *, top: int | None = None,
                 progress: Progress | None = None) -> CamResult:
        """Explain ``batch`` with the bound model (see :class:`camlens.Explainer`)."""
        if self._bound is None:
            raise CamlensError(f"{type(self).__name__}() is not bound to a model; use {type(self).__name__}(model, layer=...)")
        result: CamResult = self._bound(batch, targets, top=top, progress=progress)
        return result

    def close(self) -> None:
        """Drop the bound explainer's references to the model; later calls fail."""
        if self._bound is not None:
            self._bound.close()

    def __enter__(self) -> Method:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ChannelWeighted(Method):
    """Methods of the form ``M = [ReLU](sum_k w_k A_k)``: subclasses give the weights."""

    relu: ClassVar[bool] = True

    @abstractmethod
    def weights(self, record: LayerRecord) -> np.ndarray:
        """Return ``(N, K, C)`` channel weights, one row per target (``(1, K, C)`` when the
        same for every sample)."""

    def feature_maps(self, record: LayerRecord) -> np.ndarray:
        """The ``(N, C, h, w)`` maps the weights apply to: the layer's activations."""
        return record.activations

    def maps(self, record: LayerRecord) -> np.ndarray:
        w = self.weights(record).astype(np.float32)
        a = self.feature_maps(record).astype(np.float32)
        m = np.matmul(w, a.reshape(*a.shape[:2], -1))  # BLAS: every class at once; (1, K, C) broadcasts
        m = m.reshape(a.shape[0], w.shape[1], *a.shape[2:])
        return np.maximum(m, 0.0) if self.relu else m


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name`` and its aliases.

    Raises:
        MethodError: the name or an alias is already taken (a duplicate fails at import).
    """
    keys = [_key(cls.name), *(_key(a) for a in cls.aliases)]
    for key in keys:
        if key in _ALIASES:
            raise MethodError(f"method name {key!r} of {cls.__name__} is already taken by {_ALIASES[key]!r}")
    _REGISTRY[cls.name] = cls
    _ALIASES.update(dict.fromkeys(keys, cls.name))
    return cls


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def method_names(without: frozenset[Need] | set[Need] = frozenset()) -> list[str]:
    """Canonical names of the registered methods, in registration order; ``without`` leaves out
    those that need any of it (e.g. ``{Need.ATTENTION}``: the methods that work on any CNN)."""
    return [name for name, cls in _REGISTRY.items() if not cls.needs & set(without)]


def method_classes() -> list[type[Method]]:
    """All registered method classes, in registration order."""
    return list(_REGISTRY.values())


def method_table() -> list[dict[str, Any]]:
    """One row per registered method (what ``camlens methods`` and the web app list): name,
    aliases, settings, title, paper, needs, cost per image, formula."""
    rows = []
    for cls in method_classes():
        needs = ", ".join(sorted(n.value for n in cls.needs)) or "activations"
        b = cls.backwards
        cost = cls.cost or "1 forward" + (f" + {b} backward{'s' if b > 1 else ''} per target" if b else "")
        rows.append({"name": cls.name, "aliases": list(cls.aliases), "settings": parameters(cls), "title": cls.title,
                     "paper": cls.paper, "needs": needs, "cost": cost, "formula": cls.formula})
    return rows


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or an alias, any case, ``-``/``_``/spaces ignored
    (``Grad-CAM``, ``GradCAM`` and ``grad_cam`` are ``gradcam``).

    Raises:
        MethodError: unknown name (with close names).
    """
    key = _key(name)
    if key not in _ALIASES:
        import difflib

        close = difflib.get_close_matches(key, list(_ALIASES), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(dict.fromkeys(_ALIASES[c] for c in close))}?" if close else ""
        raise MethodError(f"unknown method {name!r}{hint} (choose from {', '.join(_REGISTRY)})")
    return _ALIASES[key]


_BINDING = frozenset({"self", "model", "layer", "output", "layout", "max_batch", "kwargs"})


def parameters(cls: type[Method]) -> list[str]:
    """The settings a method class takes by keyword (``masks``, ``cells``... for RISE)."""
    import inspect

    return [p for p in inspect.signature(cls.__init__).parameters if p not in _BINDING]


def get_method(name: str) -> Method:
    """A new instance of the registered method ``name`` (see :func:`canonical_name`), with
    settings after colons: ``"rise:masks=1000:cells=5"``, ``"reciprocam:gaussian=true"``.

    Raises:
        MethodError: an unknown name or setting, or a value of the wrong kind.
    """
    base, *settings = name.split(":")
    cls = _REGISTRY[canonical_name(base)]
    if not settings:
        return cls()
    known = parameters(cls)
    given: dict[str, Any] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        key = key.strip()
        if not sep or key not in known:
            takes = f"takes {', '.join(known)} (as {cls.name}:NAME=VALUE)" if known else "takes no settings"
            raise MethodError(f"method {name!r}: {cls.name} {takes}, not {setting!r}")
        given[key] = _value(text.strip())
    try:
        return cls(**given)
    except CamlensError as exc:
        raise MethodError(f"method {name!r}: {exc}") from None


def canonical_spec(spec: str) -> str:
    """A method name with its settings (``"RISE:masks=1000"``) as ``"rise:masks=1000"``, checked."""
    get_method(spec)
    base, sep, settings = spec.strip().partition(":")
    return canonical_name(base) + sep + settings.replace(" ", "")


def _value(text: str) -> object:
    """A setting's value: an int, a float, true/false, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def methods_from(spec: str | Method | Sequence[str | Method]) -> list[Method]:
    """Methods from a name, an instance, or a sequence of those (names may be comma-separated);
    a method named twice is kept once.

    Raises:
        MethodError: an unknown name, nothing given, or one method with two different settings
            (results are keyed by the method's name).
    """
    if not isinstance(spec, (str, Method, type, list, tuple)):
        raise MethodError(f"method must be a method name, a camlens Method or a list of them, not {type(spec).__name__}")
    items = [spec] if isinstance(spec, (str, Method, type)) else list(spec)
    out: dict[str, Method] = {}
    for item in items:
        if isinstance(item, type) and issubclass(item, Method) and not getattr(item, "__abstractmethods__", None):
            item = item()
        if isinstance(item, Method):
            _add(out, item)
            continue
        if not isinstance(item, str):
            raise MethodError(f"a method is a name or a camlens Method, not {type(item).__name__}")
        for part in item.split(","):
            if part.strip():
                _add(out, get_method(part))
    if not out:
        raise MethodError("no method given")
    return list(out.values())


def _add(chosen: dict[str, Method], method: Method) -> None:
    earlier = chosen.setdefault(method.name, method)
    if earlier is not method and repr(earlier) != repr(method):
        raise MethodError(f"{method.name} is asked for twice with different settings ({earlier!r}, {method!r}); "
                          "results are keyed by the method's name: run them separately")


def _require(array: np.ndarray | None, what: str, method: str) -> np.ndarray:
    if array is None:
        raise MethodError(f"{method} needs {what}, which the adapter did not capture")
    return array


def _grads(record: LayerRecord, method: str) -> np.ndarray:
    return _require(record.gradients, "gradients", method).astype(np.float64)


@register
class CAM(ChannelWeighted):
    r"""Class Activation Mapping (Zhou et al., CVPR 2016, "Learning Deep Features for
    Discriminative Localization", arXiv:1512.04150).

    For a network ending in features :math:`A_k` -> global average pooling -> linear layer,

    .. math:: M^c(x, y) = \sum_k w^c_k A_k(x, y)

    where :math:`w^c` is the linear layer's weight row for class :math:`c`. The map is not
    rectified (the paper keeps its sign); its spatial mean equals the class logit minus the bias.
    """

    name = "cam"
    formula = "sum_k w^c_k A_k, w^c the classifier row (not rectified)"
    title = "CAM"
    paper = "Zhou et al., CVPR 2016"
    needs = frozenset({Need.CLASS_WEIGHTS})
    relu = False

    def weights(self, record: LayerRecord) -> np.ndarray:
        return _require(record.class_weights, "the classifier's class weights", "CAM")

    def feature_maps(self, record: LayerRecord) -> np.ndarray:
        return record.features if record.features is not None else record.activations


@register
class GradCAM(ChannelWeighted):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391).

    .. math::
        \alpha^c_k = \frac{1}{hw} \sum_{x,y} \frac{\partial y^c}{\partial A_k(x, y)}, \qquad
        M^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A_k\Big)

    with :math:`y^c` the pre-softmax score of class :math:`c`.
    """

    name = "gradcam"
    formula = "ReLU(sum_k mean_xy(g_k) A_k)"
    title = "Grad-CAM"
    paper = "Selvaraju et al., ICCV 2017"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1

    def weights(self, record: LayerRecord) -> np.ndarray:
        return _require(record.gradients, "gradients", "Grad-CAM").mean(axis=(3, 4), dtype=np.float64)


def _plusplus_alpha(g: np.ndarray, a: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Eq. 19's :math:`g^2 / (2 g^2 + \\sum_{ab} A_{ab} g^3)` (+ ``eps``), 0 where ``g`` is 0."""
    g2 = g * g
    denom = 2.0 * g2 + a.sum(axis=(-2, -1), keepdims=True)[:, None] * g2 * g + eps
    safe = np.where(denom != 0.0, denom, 1.0)
    return np.where((g != 0.0) & (denom != 0.0), g2 / safe, 0.0)


@register
class GradCAMPlusPlus(ChannelWeighted):
    r"""Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063), Eq. 19 with the
    exponential score :math:`Y^c = \exp(y^c)`.

    With :math:`g = \partial y^c / \partial A_k(i, j)`, the higher derivatives of
    :math:`\exp(y^c)` are :math:`\exp(y^c)\,g^2` and :math:`\exp(y^c)\,g^3` for a piecewise
    linear network, and :math:`\exp(y^c)` cancels in

    .. math::
        \alpha^{kc}_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{a,b} A_k(a, b)\, g_{ij}^3}, \qquad
        w^c_k = \sum_{i,j} \alpha^{kc}_{ij}\, \mathrm{ReLU}(g_{ij}), \qquad
        M^c = \mathrm{ReLU}\Big(\sum_k w^c_k A_k\Big)

    :math:`\alpha` is 0 where the gradient (hence numerator and denominator) is 0. The remaining
    positive factor :math:`\exp(y^c)` of :math:`\partial Y^c/\partial A` scales every weight of a
    sample alike and is dropped, so maps stay finite for large logits. No ``eps``: see
    ``gradcam++-pgc`` for pytorch-grad-cam's form and ``gradcam++-authors`` for the authors' code.
    """

    name = "gradcam++"
    formula = "ReLU(sum_k w_k A_k), w_k = sum_ij alpha_ij ReLU(g_ij), alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)"
    title = "Grad-CAM++"
    paper = "Chattopadhay et al., WACV 2018 (Eq. 19)"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1
    aliases = ("gradcampp", "gradcamplusplus")

    def weights(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "Grad-CAM++")
        alpha = _plusplus_alpha(g, record.activations.astype(np.float64))
        return (alpha * np.maximum(g, 0.0)).sum(axis=(3, 4))


@register
class GradCAMPlusPlusAuthors(ChannelWeighted):
    r"""Grad-CAM++ as the authors' code computes it (adityac94/Grad_CAM_plus_plus,
    ``misc/utils.py``, since its May 2018 "improved heatmap generation" commit).

    :math:`\alpha` as in Eq. 19 (a zero denominator replaced by 1), then normalised per channel
    over the positions with a positive gradient, so each weight is an :math:`\alpha`-weighted
    mean of the positive gradients:

    .. math::
        w^c_k = \frac{\sum_{ij} \alpha^{kc}_{ij} \mathrm{ReLU}(g_{ij})}{\sum_{ij: g_{ij} > 0} \alpha^{kc}_{ij}},
        \qquad M^c = \mathrm{ReLU}\Big(\sum_k w^c_k A_k\Big)

    The code's global factor :math:`\exp(y^c)` (which overflows float32 above about 88) is
    dropped, as it cancels in any normalised map; the code's final ``/max`` is display scaling.
    """

    name = "gradcam++-authors"
    formula = "as gradcam++, alpha renormalised per channel over positions with g > 0"
    title = "Grad-CAM++ (authors' code)"
    paper = "Chattopadhay et al., WACV 2018; adityac94/Grad_CAM_plus_plus"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1
    aliases = ("gradcam++-code",)

    def weights(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "Grad-CAM++ (authors)")
        alpha = _plusplus_alpha(g, record.activations.astype(np.float64))
        positive = np.maximum(g, 0.0)
        norm = np.where(positive != 0.0, alpha, 0.0).sum(axis=(3, 4), keepdims=True)
        alpha = alpha / np.where(norm != 0.0, norm, 1.0)
        return (alpha * positive).sum(axis=(3, 4))


@register
class GradCAMPlusPlusPGC(ChannelWeighted):
    r"""Grad-CAM++ as pytorch-grad-cam computes it (``GradCAMPlusPlus``, grad-cam 1.5):
    Eq. 19 with :math:`\epsilon = 10^{-6}` added to :math:`\alpha`'s denominator,

    .. math:: \alpha_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{ab} A_{ab}\, g_{ij}^3 + 10^{-6}}

    For small gradients (a few 1e-4, common at the last layer) the :math:`\epsilon` dominates
    and the weights drift towards :math:`\sum \mathrm{ReLU}(g)^3`; use it to reproduce that
    library's numbers, ``gradcam++`` for the paper's.
    """

    name = "gradcam++-pgc"
    formula = "as gradcam++, with 1e-6 added to alpha's denominator"
    title = "Grad-CAM++ (pytorch-grad-cam, eps 1e-6)"
    paper = "Chattopadhay et al., WACV 2018; jacobgil/pytorch-grad-cam"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1
    aliases = ("gradcam++-pytorch-grad-cam", "gradcam++-eps")
    eps: ClassVar[float] = 1e-6

    def weights(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "Grad-CAM++ (pytorch-grad-cam)")
        alpha = _plusplus_alpha(g, record.activations.astype(np.float64), self.eps)
        return (alpha * np.maximum(g, 0.0)).sum(axis=(3, 4))


@register
class XGradCAM(ChannelWeighted):
    r"""XGrad-CAM (Fu et al., BMVC 2020, "Axiom-based Grad-CAM", arXiv:2008.02312).

    .. math::
        w^c_k = \sum_{x,y} \frac{A_k(x, y)}{\sum_{a,b} A_k(a, b)} \frac{\partial y^c}{\partial A_k(x, y)},
        \qquad M^c = \mathrm{ReLU}\Big(\sum_k w^c_k A_k\Big)

    A channel whose activations sum to 0 gets weight 0 (no ``eps``).
    """

    name = "xgradcam"
    formula = "ReLU(sum_k w_k A_k), w_k = sum_xy A_k g_k / sum_xy A_k"
    title = "XGrad-CAM"
    paper = "Fu et al., BMVC 2020"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1

    def weights(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "XGrad-CAM")
        a = record.activations.astype(np.float64)[:, None]
        total = a.sum(axis=(3, 4))
        return np.where(total != 0.0, (g * a).sum(axis=(3, 4)) / np.where(total != 0.0, total, 1.0), 0.0)


@register
class HiResCAM(Method):
    r"""HiResCAM (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks", arXiv:2011.08891).

    .. math:: M^c(x, y) = \sum_k \frac{\partial y^c}{\partial A_k(x, y)} A_k(x, y)

    Not rectified, as in the paper: for a global-average-pooling -> linear head it equals CAM
    divided by :math:`hw` exactly (the paper's Theorem), sign included. pytorch-grad-cam
    rectifies it.
    """

    name = "hirescam"
    formula = "sum_k g_k * A_k (element-wise; not rectified)"
    title = "HiResCAM"
    paper = "Draelos & Carin, arXiv:2011.08891, 2020"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1

    def maps(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "HiResCAM")
        return (g * record.activations.astype(np.float64)[:, None]).sum(axis=2).astype(np.float32)


@register
class GradCAMElementWise(Method):
    r"""Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``; no paper): the
    gradient-activation product rectified per channel before the channel sum,

    .. math:: M^c(x, y) = \sum_k \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A_k(x, y)} A_k(x, y)\Big)
    """

    name = "gradcam-elementwise"
    formula = "sum_k ReLU(g_k * A_k)"
    title = "Element-wise Grad-CAM"
    paper = "jacobgil/pytorch-grad-cam (no paper)"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1
    aliases = ("elementwise-gradcam",)

    def maps(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "Element-wise Grad-CAM")
        return np.maximum(g * record.activations.astype(np.float64)[:, None], 0.0).sum(axis=2).astype(np.float32)


@register
class LayerCAM(Method):
    r"""Layer-CAM (Jiang et al., IEEE TIP 2021, "LayerCAM: Exploring Hierarchical Class
    Activation Maps for Localization"): each position weighted by its own positive gradient,

    .. math:: M^c(x, y) = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A_k(x, y)}\Big) A_k(x, y)\Big)

    The paper's ``tanh`` rescaling of shallow layers is a fusion step (see
    :func:`camlens.core.fusion.fuse`), not part of each layer's map.
    """

    name = "layercam"
    formula = "ReLU(sum_k ReLU(g_k) * A_k)"
    title = "Layer-CAM"
    paper = "Jiang et al., IEEE TIP 2021"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1

    def maps(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "Layer-CAM")
        m = (np.maximum(g, 0.0) * record.activations.astype(np.float64)[:, None]).sum(axis=2)
        return np.maximum(m, 0.0).astype(np.float32)


@register
class ShapleyCAM(ChannelWeighted):
    r"""Shapley-CAM (Cai 2025, "CAMs as Shapley Value-based Explainers", arXiv:2501.06261):
    Grad-CAM's weights with the second-order term of the Taylor expansion of the score,

    .. math::
        w^c_k = \frac{1}{hw} \sum_{x,y} \Big(g - \tfrac12 H A\Big)_k(x, y), \qquad
        M^c = \mathrm{ReLU}\Big(\sum_k w^c_k A_k\Big)

    with :math:`g = \partial y^c / \partial A` and :math:`H = \partial^2 y^c / \partial A^2`.
    Where the network after the layer is piecewise linear, :math:`HA = 0` and it equals Grad-CAM.
    """

    name = "shapleycam"
    formula = "ReLU(sum_k w_k A_k), w_k = mean_xy(g - H A / 2)_k"
    title = "Shapley-CAM"
    paper = "Cai, arXiv:2501.06261, 2025"
    needs = frozenset({Need.GRADIENTS, Need.HESSIAN})
    backwards = 2

    def weights(self, record: LayerRecord) -> np.ndarray:
        g = _grads(record, "Shapley-CAM")
        ha = _require(record.hessian_products, "second-order gradients", "Shapley-CAM").astype(np.float64)
        return (g - 0.5 * ha).mean(axis=(3, 4))


def principal_projection(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Projection of each position onto the first principal component of ``rows``: ``R v1``
    for the first right singular vector ``v1`` of the centred ``R``, computed from the
    eigenvectors of the smaller of ``R R^T`` and ``R^T R`` (the same vector, several times
    faster than an SVD of a 49 x 1280 matrix).

    Args:
        rows: ``(P, C)``: positions x channels, centred per channel here.
        reference: ``(P,)`` a map the projection is made to agree with in sign.

    The SVD's sign is arbitrary (pytorch-grad-cam issues #315, #364), so it is fixed: the
    projection is flipped when its dot product with ``reference`` is negative (for a zero dot
    product, when its largest-magnitude entry is negative).
    """
    centred = rows - rows.mean(axis=0, keepdims=True)
    if not np.any(centred):
        return np.zeros(rows.shape[0])
    positions, channels = centred.shape
    if positions <= channels:  # R v1 = s1 u1, from the small positions x positions Gram matrix
        values, vectors = np.linalg.eigh(centred @ centred.T)
        projection = vectors[:, -1] * np.sqrt(max(float(values[-1]), 0.0))
    else:  # from the channels x channels scatter matrix
        projection = centred @ np.linalg.eigh(centred.T @ centred)[1][:, -1]
    return _oriented(projection, reference)


def _oriented(projection: np.ndarray, reference: np.ndarray) -> np.ndarray:
    dot = float(projection @ reference)
    if dot == 0.0:
        dot = float(projection[np.argmax(np.abs(projection))])
    return projection if dot >= 0 else -projection


def _per_image_projection(stack: np.ndarray, reference: np.ndarray, project: Any) -> np.ndarray:
    """``project(rows, ref)`` over every ``(C, h, w)`` of ``stack`` ``(N, K, C, h, w)``."""
    n, k, c, h, w = stack.shape
    out = np.empty((n, k, h, w), dtype=np.float32)
    for i in range(n):
        for j in range(k):
            rows = stack[i, j].reshape(c, h * w).T
            out[i, j] = project(rows, reference[i, j].reshape(-1)).reshape(h, w)
    return np.maximum(out, 0.0)


@register
class EigenCAM(Method):
    r"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299): the projection of the
    layer's activations on their first principal component; class-agnostic, no gradients.

    With :math:`R` the ``(hw, C)`` matrix of positions x channels centred per channel (as
    pytorch-grad-cam does) and :math:`v_1` its first right singular vector,
    :math:`M = \mathrm{ReLU}(R v_1)`. The sign of :math:`v_1` is fixed so that the projection
    agrees with the channel mean of :math:`A` (see :func:`principal_projection`); every target
    of an image gets the same map.
    """

    name = "eigencam"
    formula = "ReLU(first principal component of A), sign fixed; class-agnostic"
    title = "Eigen-CAM"
    paper = "Muhammad & Yeasin, IJCNN 2020"

    def maps(self, record: LayerRecord) -> np.ndarray:
        a = record.activations.astype(np.float64)[:, None]
        one = _per_image_projection(a, a.mean(axis=2), principal_projection)
        return np.repeat(one, record.targets.shape[1], axis=1)


@register
class EigenGradCAM(Method):
    r"""Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``): Eigen-CAM of the class-specific
    products :math:`g \odot A` (:math:`g = \partial y^c / \partial A`), so each target has its
    own map; the sign agrees with the channel sum of :math:`g \odot A` (HiResCAM's map)."""

    name = "eigengradcam"
    formula = "ReLU(first principal component of g * A), sign fixed"
    title = "Eigen-Grad-CAM"
    paper = "jacobgil/pytorch-grad-cam, after Muhammad & Yeasin 2020"
    needs = frozenset({Need.GRADIENTS})
    backwards = 1

    def maps(self, record: LayerRecord) -> np.ndarray:
        product = _grads(record, "Eigen-Grad-CAM") * record.activations.astype(np.float64)[:, None]
        return _per_image_projection(product, product.sum(axis=2), principal_projection)


@register
class KPCACAM(Method):
    r"""KPCA-CAM (Karmani et al., arXiv:2410.00267, 2024): Eigen-CAM with kernel PCA.

    The ``(hw, C)`` activations, centred per channel, are projected on the first component of
    scikit-learn's ``KernelPCA`` (sigmoid kernel :math:`\tanh(\gamma \langle x, y\rangle + 1)`,
    :math:`\gamma = 1/C`, as pytorch-grad-cam's ``KPCA_CAM``); :math:`M = \mathrm{ReLU}` of it,
    the sign fixed against the channel mean of :math:`A` as for Eigen-CAM.
    """

    name = "kpcacam"
    formula = "ReLU(first kernel-PCA component of A, sigmoid kernel), sign fixed"
    title = "KPCA-CAM"
    paper = "Karmani et al., arXiv:2410.00267, 2024"
    kernel: ClassVar[str] = "sigmoid"

    def maps(self, record: LayerRecord) -> np.ndarray:
        a = record.activations.astype(np.float64)[:, None]
        one = _per_image_projection(a, a.mean(axis=2), self._project)
        return np.repeat(one, record.targets.shape[1], axis=1)

    def _project(self, rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import KernelPCA

        centred = rows - rows.mean(axis=0, keepdims=True)
        if not np.any(centred):
            return np.zeros(rows.shape[0])
        kpca = KernelPCA(n_components=1, kernel=self.kernel, gamma=1.0 / rows.shape[1], random_state=0)
        return _oriented(kpca.fit_transform(centred)[:, 0], reference)


@register
class AttentionRollout(Method):
    r"""Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in
    Transformers", arXiv:2005.00928).

    Per block :math:`l`, the heads' mean attention :math:`\bar A_l` plus the residual
    connection, renormalised: :math:`\hat A_l = (\bar A_l + I) / 2`; the rollout is their
    product :math:`R = \hat A_L \cdots \hat A_1`, and the map is the class token's row of
    :math:`R` over the patch tokens (the mean row when the model has no prefix token). It does
    not depend on the target: every target of a sample gets the same map. No head discarding,
    no gradients.
    """

    name = "rollout"
    aliases = ("attention-rollout",)
    formula = "class token's row of prod_l (mean_heads A_l + I) / 2, over the patches"
    title = "Attention rollout"
    paper = "Abnar & Zuidema, ACL 2020"
    needs = frozenset({Need.ATTENTION})

    def maps(self, record: LayerRecord) -> np.ndarray:
        attention = _attention(record, "attention rollout")
        n, length = attention.probabilities[0].shape[0], attention.tokens
        rollout = np.broadcast_to(np.eye(length), (n, length, length)).copy()
        for probs in attention.probabilities:
            a = probs.astype(np.float64).mean(axis=1) + np.eye(length)
            rollout = (a / a.sum(axis=-1, keepdims=True)) @ rollout
        one = _patch_map(_query_row(rollout, attention.prefix)[:, None], attention, record, "attention rollout")
        return np.repeat(one, record.targets.shape[1], axis=1)


@register
class GradientRollout(Method):
    r"""Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers", arXiv:2103.15679), the class-specific rollout.

    Per block :math:`l`, the heads' mean of the positive part of the attention weighted by
    its gradient, :math:`\bar A_l = E_h[(\nabla A_l \odot A_l)^+]`; relevance starts at
    :math:`R = I` and accumulates :math:`R \leftarrow R + \bar A_l R` from the first block to
    the last. The map is the class token's row of :math:`R` over the patch tokens (the mean
    row without a prefix token). One backward pass per target, down to the first block.
    """

    name = "gradrollout"
    aliases = ("gradient-rollout", "chefer")
    formula = "class token's row of R, R <- R + mean_heads(relu(dS/dA_l * A_l)) R, block by block"
    title = "Gradient rollout"
    paper = "Chefer et al., ICCV 2021"
    needs = frozenset({Need.ATTENTION, Need.ATTENTION_GRADIENTS})
    backwards = 1

    def maps(self, record: LayerRecord) -> np.ndarray:
        attention = _attention(record, "gradient rollout")
        grads = record.attention_gradients
        if grads is None or len(grads) != len(attention.probabilities):
            raise MethodError("gradient rollout needs the gradients of every block's attention")
        n, k, length = grads[0].shape[0], grads[0].shape[1], attention.tokens
        relevance = np.broadcast_to(np.eye(length), (n, k, length, length)).copy()
        for probs, grad in zip(attention.probabilities, grads, strict=True):
            weighted = np.maximum(grad.astype(np.float64) * probs.astype(np.float64)[:, None], 0.0).mean(axis=2)
            relevance = relevance + weighted @ relevance
        return _patch_map(_query_row(relevance, attention.prefix), attention, record, "gradient rollout")


@register
class LeGrad(Method):
    r"""LeGrad (Bousselham et al., ICCV 2025, "LeGrad: An Explainability Method for Vision
    Transformers via Feature Formation Sensitivity", arXiv:2404.03214).

    Each block :math:`l` is scored on its own: its output tokens' mean through the model's
    final norm and head gives :math:`s_l` (the targets' scores of that intermediate
    representation). The block's map is the positive part of :math:`\partial s_l / \partial
    A_l` (gradient with respect to its attention probabilities, not multiplied by them), averaged
    over heads and query tokens, at the patch keys; the map is the mean over all blocks. Like
    the reference implementation and torchcam, the tokens' mean includes the prefix tokens.
    """

    name = "legrad"
    formula = "mean_l mean_(heads, queries) relu(d s_l / d A_l), s_l = head(norm(mean tokens of block l))"
    title = "LeGrad"
    paper = "Bousselham et al., ICCV 2025"
    needs = frozenset({Need.LAYERWISE_GRADIENTS})
    backwards = 1

    def maps(self, record: LayerRecord) -> np.ndarray:
        attention, grads = record.attention, record.layerwise_gradients
        if attention is None or not grads:
            raise MethodError("LeGrad needs the gradients of every block's attention, which the adapter did not capture")
        total = sum(np.maximum(g.astype(np.float64), 0.0).mean(axis=(2, 3)) for g in grads)
        return _patch_map(np.asarray(total) / len(grads), attention, record, "LeGrad")


def _attention(record: LayerRecord, what: str) -> AttentionMaps:
    attention = record.attention
    if attention is None or not attention.probabilities:
        raise MethodError(f"{what} needs a transformer's attention maps, which the adapter did not capture")
    return attention


def _query_row(relevance: np.ndarray, prefix: int) -> np.ndarray:
    """``(..., L)``: the class token's row of ``(..., L, L)``, or the mean row without prefix tokens."""
    return relevance[..., 0, :] if prefix else relevance.mean(axis=-2)


def _patch_map(rows: np.ndarray, attention: AttentionMaps, record: LayerRecord, what: str) -> np.ndarray:
    """``(N, K, L)`` token scores as ``(N, K, h, w)`` maps over the patch tokens, on the record's grid."""
    h, w = attention.grid
    if (h, w) != tuple(record.activations.shape[2:]):
        raise MethodError(f"{what} gives a {h}x{w} map; the layer {record.layer!r} has a "
                          f"{record.activations.shape[2]}x{record.activations.shape[3]} grid (pick a token layer)")
    return rows[..., attention.prefix:].reshape(*rows.shape[:2], h, w)
