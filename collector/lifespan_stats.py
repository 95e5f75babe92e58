"""Lifespan statistics from weighted log2 histograms, with intervals (docs/design/lifespan.md).

The probe adds each freed, tracked object to slot ``floor(log2(lifespan_ns))`` with its
calls weight ``w`` (the inverse of its inclusion probability) and ``w**2``. From a slot
vector:

* **Quantiles.** The weighted CDF, interpolated geometrically inside a slot (lifespans spread
  over decades; a slot is a factor of two). The interval is an order-statistic interval on
  Kish's effective sample size ``n_eff = (sum w)^2 / sum w^2``: the Wilson interval of the
  probability ``q`` with ``n_eff`` trials gives ``(q_lo, q_hi)``, and the quantile interval is
  ``[start of the slot holding q_lo, end of the slot holding q_hi]``: it includes the
  histogram's own resolution, so a census (every weight 1) still reports the slot its
  quantile falls in, never a false point.
* **Mean.** ``sum(w L) / sum(w)`` from the probe's exact running sum (64 ns resolution); its
  variance as a ratio estimator, ``sum w_i^2 (L_i - mean)^2 / (sum w)^2``, is taken with each
  object at its slot's geometric middle; the interval is normal, clipped at 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

FRAC = 256.0  # calls weights are in 1/256 units (SAMPLER_FRAC_BITS)


@dataclass(frozen=True, slots=True)
class Interval:
    value: float
    low: float
    high: float


def slot_bounds(i: int) -> tuple[int, int]:
    """Slot ``i`` holds [2^i, 2^(i+1)) ns; slot 0 also holds 0."""
    return (0 if i == 0 else 1 << i), 1 << (i + 1)


def _slot_mid(i: int) -> float:
    lo, hi = slot_bounds(i)
    return math.sqrt(max(lo, 1) * hi) if i else 1.0


def n_eff(w: Sequence[float], w2: Sequence[float]) -> float:
    s, s2 = sum(w), sum(w2)
    return s * s / s2 if s2 > 0 else 0.0


def _locate(w: Sequence[float], q: float) -> tuple[int, float]:
    """(slot, fraction inside it) where the weighted CDF reaches q."""
    total = sum(w)
    target = q * total
    acc = 0.0
    last = 0
    for i, x in enumerate(w):
        if x <= 0:
            continue
        last = i
        if acc + x >= target:
            return i, (target - acc) / x
        acc += x
    return last, 1.0


def quantile_value(w: Sequence[float], q: float) -> float:
    i, frac = _locate(w, q)
    lo, hi = slot_bounds(i)
    if i == 0:
        return frac * hi
    return float(lo * math.pow(hi / lo, frac))


def wilson(q: float, n: float, confidence: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    d = 1 + z * z / n
    c = (q + z * z / (2 * n)) / d
    h = z * math.sqrt(q * (1 - q) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def quantile(
    w: Sequence[float], w2: Sequence[float], q: float, confidence: float = 0.95
) -> Interval:
    """The ``q`` quantile of the slot weights with its order-statistic interval."""
    value = quantile_value(w, q)
    q_lo, q_hi = wilson(q, n_eff(w, w2), confidence)
    lo_slot, _ = _locate(w, max(q_lo, 1e-12))
    hi_slot, _ = _locate(w, q_hi)
    low = float(slot_bounds(lo_slot)[0])
    high = float(slot_bounds(hi_slot)[1])
    return Interval(value, min(low, value), max(high, value))


def mean(
    w: Sequence[float], w2: Sequence[float], weighted_sum: float, confidence: float = 0.95
) -> Interval:
    """Mean lifespan: ``weighted_sum`` is ``sum w L`` (ns x weight units)."""
    total = sum(w)
    if total <= 0:
        return Interval(0.0, 0.0, 0.0)
    m = weighted_sum / total
    var = sum(x2 * (_slot_mid(i) - m) ** 2 for i, x2 in enumerate(w2) if x2 > 0) / total**2
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(var)
    return Interval(m, max(0.0, m - half), m + half)
