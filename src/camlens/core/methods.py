"""CAM methods as small classes over :class:`~camlens.core.capture.Capture`.

A method states what it needs from the adapter (``needs_gradients``, ``needs_class_weights``)
and turns a capture into raw maps at layer resolution. Adding a method is one class here plus
``@register``; adapters never contain per-method code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from camlens.core.capture import Capture
from camlens.core.maps import weighted_sum
from camlens.errors import MethodError

_REGISTRY: dict[str, type[Method]] = {}


class Method(ABC):
    """A class activation map method.

    Subclasses set ``name`` (the CLI/registry key), ``needs_gradients``, ``needs_class_weights``
    and ``relu`` (whether the weighted sum is rectified, as the method's paper says), and
    implement :meth:`weights`.
    """

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False
    needs_class_weights: ClassVar[bool] = False
    relu: ClassVar[bool] = True

    @abstractmethod
    def weights(self, capture: Capture) -> np.ndarray:
        """Return ``(N, C)`` channel weights for the capture's targets."""

    def __call__(self, capture: Capture) -> np.ndarray:
        """Return ``(N, h, w)`` raw maps: ``sum_k w_k A_k``, rectified when ``relu`` is set."""
        maps = weighted_sum(self.weights(capture), capture.activations)
        return np.maximum(maps, 0.0) if self.relu else maps


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Names of all registered methods, in registration order."""
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    """Instantiate a registered method by name (case-insensitive; ``grad-cam`` == ``gradcam``)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    aliases = {m.replace("-", "").replace("_", ""): m for m in _REGISTRY}
    if key not in aliases:
        raise MethodError(f"unknown method {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[aliases[key]]()


def methods_from(spec: str | Method | Sequence[str | Method]) -> list[Method]:
    """Methods from a name, an instance, or a sequence of those.

    Raises:
        MethodError: an unknown name, or an empty sequence.
    """
    items = [spec] if isinstance(spec, (str, Method)) else list(spec)
    if not items:
        raise MethodError("no method given")
    return [get_method(m) if isinstance(m, str) else m for m in items]


def _require(array: np.ndarray | None, what: str, method: str) -> np.ndarray:
    if array is None:
        raise MethodError(f"{method} needs {what}, which the adapter did not capture")
    return array


@register
class CAM(Method):
    r"""Class Activation Mapping (Zhou et al., CVPR 2016, "Learning Deep Features for
    Discriminative Localization", arXiv:1512.04150).

    For a network ending in features :math:`A_k` -> global average pooling -> linear layer,

    .. math:: M^c(x, y) = \sum_k w^c_k A_k(x, y)

    where :math:`w^c` is the linear layer's weight row for class :math:`c`. The map is not
    rectified (the paper keeps its sign); its spatial mean equals the class logit minus the bias.
    """

    name = "cam"
    needs_class_weights = True
    relu = False

    def weights(self, capture: Capture) -> np.ndarray:
        return _require(capture.class_weights, "the classifier's class weights", "CAM")


@register
class GradCAM(Method):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391).

    .. math::
        \alpha^c_k = \frac{1}{hw} \sum_{x,y} \frac{\partial y^c}{\partial A_k(x, y)}, \qquad
        M^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A_k\Big)

    with :math:`y^c` the pre-softmax score of class :math:`c`.
    """

    name = "gradcam"
    needs_gradients = True

    def weights(self, capture: Capture) -> np.ndarray:
        grads = _require(capture.gradients, "gradients", "Grad-CAM")
        return grads.mean(axis=(2, 3))


@register
class GradCAMPlusPlus(Method):
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
    sample alike and is dropped, as in the authors' code, so maps stay finite for large logits.
    """

    name = "gradcam++"
    needs_gradients = True

    def weights(self, capture: Capture) -> np.ndarray:
        g = _require(capture.gradients, "gradients", "Grad-CAM++").astype(np.float64)
        a = capture.activations.astype(np.float64)
        g2 = g * g
        denom = 2.0 * g2 + a.sum(axis=(2, 3), keepdims=True) * g2 * g
        safe = np.where(denom != 0.0, denom, 1.0)
        alpha = np.where((g != 0.0) & (denom != 0.0), g2 / safe, 0.0)
        return (alpha * np.maximum(g, 0.0)).sum(axis=(2, 3)).astype(np.float32)
