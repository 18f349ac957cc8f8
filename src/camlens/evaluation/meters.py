"""Scores accumulated over a dataset exactly, so that a run split over processes (``torchrun``)
gives the result of one process bit for bit.

Counts and the MaxBoxAccV2 hit matrix are sums of integers, exact anyway. Float scores
(Average Drop, deletion and insertion AUCs and curves) are summed by :class:`ExactSum`: every
float64 is an integer multiple of 2**-1074 (the smallest subnormal), so each value is added as
that integer (Python integers do not overflow) and the sum is divided only at the end, once and
correctly rounded. The order in which images are added, how they are grouped in batches and how
partial sums are merged then change nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from camlens.arguments import count as whole
from camlens.errors import CamlensError
from camlens.evaluation.faithfulness import Curves
from camlens.evaluation.localization import LocalizationMeter, LocalizationProtocol

UNIT_BITS = 1074
"""Every finite float64 is an integer multiple of ``2**-UNIT_BITS``."""

_MANTISSA_BITS = 53

_MAX_SHIFT = 4 * UNIT_BITS
"""The largest power of two a stored sum may have as a factor (float64s reach 2**2098 units;
this leaves room for sums of any count): a bound on what :meth:`ExactSum.from_json` builds."""


def units(values: npt.ArrayLike) -> list[int]:
    """Each finite float64 of ``values`` (flattened) as the exact integer ``value * 2**1074``."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise CamlensError("only finite floats are whole multiples of 2**-1074")
    mantissa, exponent = np.frexp(x)  # x = mantissa * 2**exponent, 0.5 <= |mantissa| < 1 (or 0)
    whole = np.ldexp(mantissa, _MANTISSA_BITS).astype(np.int64)  # exact: at most 53 significant bits
    shifts = exponent.astype(np.int64) + (UNIT_BITS - _MANTISSA_BITS)
    # a negative shift only drops zero bits (x is a multiple of 2**-1074), so >> is exact there too
    return [m << s if s >= 0 else m >> -s for m, s in zip(whole.tolist(), shifts.tolist(), strict=True)]


class ExactSum:
    """The exact sum of float64 values of shape ``shape`` (``()``: numbers; ``(J,)``: curves),
    added a value (or curve) at a time. Non-finite values (NaN, infinities) are summed apart, as
    floats: their sum does not depend on the order either, and it wins over the finite part."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.shape = tuple(shape)
        size = math.prod(self.shape)
        self.units = [0] * size
        self.special = [0.0] * size

    def add(self, values: npt.ArrayLike) -> None:
        """Add ``values`` of shape ``(N, *shape)``: N numbers (or curves), each on its own (or
        one, of shape ``shape``)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim == len(self.shape):
            x = x[None]
        if x.shape[1:] != self.shape:
            raise CamlensError(f"values of shape {x.shape} do not add to sums of shape {self.shape}")
        rows = x.reshape(x.shape[0], -1)
        finite = np.isfinite(rows)
        exact = units(np.where(finite, rows, 0.0))
        width = rows.shape[1]
        for j in range(width):
            self.units[j] += sum(exact[j::width])
        if not finite.all():
            for i, j in zip(*np.nonzero(~finite), strict=True):
                self.special[j] += float(rows[i, j])

    def merge(self, other: ExactSum) -> None:
        """Add ``other``'s values to these."""
        if other.shape != self.shape:
            raise CamlensError(f"cannot merge sums of shape {other.shape} into sums of shape {self.shape}")
        self.units = [a + b for a, b in zip(self.units, other.units, strict=True)]
        self.special = [a + b for a, b in zip(self.special, other.special, strict=True)]

    def mean(self, count: int, scale: int = 1) -> np.ndarray:
        """``scale * sum / count``, correctly rounded to float64 (int / int division is)."""
        if count < 1:
            raise CamlensError("the mean of no values")
        out = [s if s != 0.0 else scale * u / (count << UNIT_BITS) for u, s in zip(self.units, self.special, strict=True)]
        return np.array(out, dtype=np.float64).reshape(self.shape)

    def to_json(self) -> dict[str, Any]:
        """The sums as JSON values: each integer as ``[odd, shift]`` (``odd << shift``, 0 as
        ``[0, 0]``), short for the sums of a few floats, which end in many zero bits; the
        non-finite parts as floats (``NaN``, ``Infinity``: Python's JSON)."""
        pairs = []
        for u in self.units:
            shift = (u & -u).bit_length() - 1 if u else 0
            pairs.append([u >> shift, shift])
        return {"shape": list(self.shape), "units": pairs, "special": list(self.special)}

    @classmethod
    def from_json(cls, data: Any) -> ExactSum:
        """The sums :meth:`to_json` wrote.

        Raises:
            CamlensError: ``data`` is not such sums.
        """
        try:
            shape = tuple(whole(n, "a sum's shape", 0) for n in data["shape"])
            pairs, special = data["units"], data["special"]
            if len(pairs) != math.prod(shape) or len(special) != len(pairs):
                raise CamlensError(f"sums of shape {shape} with {len(pairs)} values")
            out = cls(shape)
            for j, (odd, shift) in enumerate(pairs):
                if isinstance(odd, bool) or not isinstance(odd, int) or whole(shift, "shift", 0) > _MAX_SHIFT:
                    raise CamlensError("a value that is not [integer, shift]")
                out.units[j] = odd << shift
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in special):
                raise CamlensError("non-finite parts that are not numbers")
            out.special = [float(v) for v in special]
        except (KeyError, TypeError, ValueError) as exc:
            raise CamlensError(f"not stored sums ({type(exc).__name__}: {exc})") from None
        return out


class FaithfulnessMeter:
    """Running faithfulness scores of one method: Average Drop, Increase in Confidence, and the
    deletion and insertion AUCs and curves (summed exactly, see :class:`ExactSum`)."""

    def __init__(self) -> None:
        self.count = 0
        self.increase = 0
        self.drop = ExactSum()
        self.deletion = ExactSum()
        self.insertion = ExactSum()
        self.fractions: np.ndarray | None = None
        self.deletion_curve: ExactSum | None = None
        self.insertion_curve: ExactSum | None = None

    def update(self, drop: npt.ArrayLike, increase: npt.ArrayLike, curves: Curves) -> None:
        """Add a batch: per-image drop fractions and increase indicators, and their curves."""
        drops = np.asarray(drop, dtype=np.float64)
        self.count += len(drops)
        self.increase += int(np.asarray(increase).astype(np.int64).sum())
        self.drop.add(drops)
        self.deletion.add(curves.deletion_auc)
        self.insertion.add(curves.insertion_auc)
        if self.fractions is None:
            self.fractions = curves.fractions
            self.deletion_curve = ExactSum(curves.fractions.shape)
            self.insertion_curve = ExactSum(curves.fractions.shape)
        elif not np.array_equal(self.fractions, curves.fractions):
            raise CamlensError("deletion/insertion curves sampled at other fractions than the earlier batches'")
        assert self.deletion_curve is not None and self.insertion_curve is not None
        self.deletion_curve.add(curves.deletion)
        self.insertion_curve.add(curves.insertion)

    def merge(self, other: FaithfulnessMeter) -> None:
        """Add ``other``'s images to these."""
        if other.fractions is None:
            return
        if self.fractions is None:
            self.fractions = other.fractions
            self.deletion_curve, self.insertion_curve = ExactSum(other.fractions.shape), ExactSum(other.fractions.shape)
        elif not np.array_equal(self.fractions, other.fractions):
            raise CamlensError("cannot merge deletion/insertion curves sampled at different fractions")
        assert self.deletion_curve is not None and self.insertion_curve is not None
        assert other.deletion_curve is not None and other.insertion_curve is not None
        self.count += other.count
        self.increase += other.increase
        for mine, theirs in ((self.drop, other.drop), (self.deletion, other.deletion), (self.insertion, other.insertion),
                             (self.deletion_curve, other.deletion_curve), (self.insertion_curve, other.insertion_curve)):
            mine.merge(theirs)

    def summary(self) -> dict[str, float]:
        """Average Drop and Increase in Confidence in %, mean deletion and insertion AUCs."""
        if not self.count:
            return {}
        n = self.count
        return {
            "average_drop": float(self.drop.mean(n, 100)),
            "increase_in_confidence": 100 * self.increase / n,
            "deletion_auc": float(self.deletion.mean(n)),
            "insertion_auc": float(self.insertion.mean(n)),
        }

    def mean_curves(self) -> dict[str, np.ndarray]:
        """The mean deletion and insertion curves (at :attr:`fractions`)."""
        if self.deletion_curve is None or self.insertion_curve is None:
            raise CamlensError("no deletion/insertion curve was measured")
        return {"deletion": self.deletion_curve.mean(self.count), "insertion": self.insertion_curve.mean(self.count)}

    def to_json(self) -> dict[str, Any]:
        """The meter as JSON values, exactly (see :meth:`ExactSum.to_json`)."""
        curves = self.deletion_curve, self.insertion_curve
        return {"count": self.count, "increase": self.increase, "drop": self.drop.to_json(),
                "deletion": self.deletion.to_json(), "insertion": self.insertion.to_json(),
                "fractions": None if self.fractions is None else self.fractions.tolist(),
                "curves": None if self.fractions is None else [c.to_json() for c in curves if c is not None]}

    @classmethod
    def from_json(cls, data: Any) -> FaithfulnessMeter:
        """The meter :meth:`to_json` wrote.

        Raises:
            CamlensError: ``data`` is not such a meter.
        """
        out = cls()
        try:
            out.count, out.increase = whole(data["count"], "count", 0), whole(data["increase"], "increase", 0)
            out.drop, out.deletion, out.insertion = (ExactSum.from_json(data[k]) for k in ("drop", "deletion", "insertion"))
            if any(s.shape != () for s in (out.drop, out.deletion, out.insertion)):
                raise CamlensError("scores that are not numbers")
            if data["fractions"] is not None:
                fractions = np.array(data["fractions"], dtype=np.float64)
                out.deletion_curve, out.insertion_curve = (ExactSum.from_json(c) for c in data["curves"])
                if fractions.ndim != 1 or not np.isfinite(fractions).all():
                    raise CamlensError("fractions that are not a list of numbers")
                if any(c.shape != fractions.shape for c in (out.deletion_curve, out.insertion_curve)):
                    raise CamlensError("curves of another length than their fractions")
                out.fractions = fractions
            elif data["curves"] is not None:
                raise CamlensError("curves without fractions")
        except (KeyError, TypeError, ValueError) as exc:
            raise CamlensError(f"not a stored faithfulness meter ({type(exc).__name__}: {exc})") from None
        return out


class MethodMeter:
    """Everything accumulated for one method: localization and faithfulness."""

    def __init__(self, protocol: LocalizationProtocol) -> None:
        self.localization = LocalizationMeter(protocol)
        self.faithfulness = FaithfulnessMeter()

    def merge(self, other: MethodMeter) -> None:
        """Add ``other``'s images to these."""
        self.localization.merge(other.localization)
        self.faithfulness.merge(other.faithfulness)

    def to_json(self) -> dict[str, Any]:
        """The meter as JSON values, exactly."""
        return {"localization": self.localization.to_json(), "faithfulness": self.faithfulness.to_json()}

    @classmethod
    def from_json(cls, data: Any, protocol: LocalizationProtocol) -> MethodMeter:
        """The meter :meth:`to_json` wrote, of a run with localization ``protocol``.

        Raises:
            CamlensError: ``data`` is not such a meter.
        """
        if not isinstance(data, dict):
            raise CamlensError("not a stored method meter")
        out = cls(protocol)
        out.localization = LocalizationMeter.from_json(data.get("localization"), protocol)
        out.faithfulness = FaithfulnessMeter.from_json(data.get("faithfulness"))
        return out

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.localization.count:
            out.update(self.localization.summary())
        out.update(self.faithfulness.summary())
        return out
