"""Estimates from byte-weighted samples (probes/sampler.bpf.h), with confidence intervals.

The kernel side drops sample points on the allocated bytes with a mean gap of R bytes; an
allocation of ``s`` bytes holds ``k`` points with ``E[k] = s / R``. Per key (tag or site,
caller stack, charged or not) it sums, over the window, the fields of
:class:`WeightSums`. From them:

* **bytes** allocated: ``sum(k R)``; **calls**: ``sum(k R / s)``. Both are Horvitz-Thompson
  style totals, unbiased whatever the sizes, and unbiased across changes of R because every
  point carries the R it was drawn with.
* **Variance.** Points fall as a (near-)Poisson process, so each allocation's ``k`` is
  Poisson(s/R) and allocations are independent: ``Var(bytes_hat) = sum(s R)``, estimated
  without bias by ``sum(k R^2)`` (the ``bytes_w2`` sum); likewise ``Var(calls_hat)`` by
  ``sum(k (R/s)^2)``.
* **Rate changes.** The variance is floored at the key's exposure, ``value * R_mean`` with
  ``R_mean`` the window's byte-weighted mean R (:func:`exposure_var`): a key seen only in a
  low-R epoch is not made to look precise by the points a high-R epoch did not give it.
* **Intervals for totals.** A total is a weighted count; with Kish's effective number of
  points ``n_eff = (sum w)^2 / sum w^2`` it behaves like ``n_eff`` Poisson points of mean
  weight ``sum w / n_eff``. The interval is the exact (Garwood) Poisson interval for
  ``n_eff`` scaled by that weight, which stays honest for a handful of points where a normal
  interval would dip below zero. With no point at all the lower bound is 0 and the upper is
  the 95% Poisson bound (3.69 points) times one point's weight: nothing sampled does not
  mean nothing allocated.
* **Shares** (a caller's share of its tag's calls or bytes): the ratio ``A / T`` of two
  totals over the same points, with the interval of :func:`collector.shares.weighted_share`
  (Wilson on Kish's effective sample size), which keeps near-nominal coverage for the small
  "other 4%" shares people care about.
* **Census.** R = 1 puts a point on every byte: every weight is exact, the variance sums
  are zero, and every interval collapses to the point.

The fixed-point scales (SAMPLER_FRAC_BITS, SAMPLER_W2_SHIFT) mirror the C header and are
checked against it by tests/unit/test_bpf_constants.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

from allocscope.collector.shares import Share, Weighted, weighted_share

SAMPLER_FRAC_BITS = 8  # probes/sampler.bpf.h
SAMPLER_RATE_MAX = 1 << 24
SAMPLER_W2_SHIFT = 16

_FRAC = float(1 << SAMPLER_FRAC_BITS)
_W2 = float(1 << SAMPLER_W2_SHIFT)


@dataclass(slots=True)
class WeightSums:
    """The raw sums of ``struct sample_weight`` for one key (or any union of keys)."""

    hits: int = 0
    bytes_w: int = 0
    bytes_w2: int = 0
    calls_w: int = 0
    calls_w2: int = 0

    def add(self, other: WeightSums) -> None:
        self.hits += other.hits
        self.bytes_w += other.bytes_w
        self.bytes_w2 += other.bytes_w2
        self.calls_w += other.calls_w
        self.calls_w2 += other.calls_w2

    @property
    def bytes(self) -> float:
        """Estimated bytes allocated."""
        return float(self.bytes_w)

    @property
    def calls(self) -> float:
        """Estimated calls."""
        return self.calls_w / _FRAC

    @property
    def bytes_var(self) -> float:
        return self.bytes_w2 * _W2

    @property
    def calls_var(self) -> float:
        return self.calls_w2 / _FRAC

    def weighted(self, what: str) -> Weighted:
        """As :class:`~collector.shares.Weighted` (k, sum w, sum w^2) for share intervals."""
        if what == "bytes":
            return Weighted(self.hits, self.bytes, self.bytes_var)
        if what == "calls":
            return Weighted(self.hits, self.calls, self.calls_var)
        raise ValueError(f"what must be 'bytes' or 'calls', not {what!r}")


@dataclass(frozen=True, slots=True)
class Estimate:
    """A total with its confidence interval."""

    value: float
    low: float
    high: float
    var: float = 0.0  # the total's variance: additive, so fleet sums combine exactly


def _chi2_quantile(p: float, dof: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (relative error < 1e-3 for
    dof >= 2, and ~1% at dof = 2 -- plenty for an interval's edge)."""
    if dof <= 0:
        return 0.0
    z = NormalDist().inv_cdf(p)
    a = 2.0 / (9.0 * dof)
    return dof * max(0.0, 1.0 - a + z * math.sqrt(a)) ** 3


def poisson_interval(n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Garwood's interval for a Poisson mean after observing ``n`` (may be fractional)."""
    alpha = 1.0 - confidence
    low = 0.0 if n <= 0 else _chi2_quantile(alpha / 2, 2 * n) / 2
    high = _chi2_quantile(1 - alpha / 2, 2 * n + 2) / 2
    return low, high


def total(value: float, var: float, one_point: float, confidence: float = 0.95) -> Estimate:
    """A weighted total ``value`` with variance ``var``; ``one_point`` is the weight one
    sample point would carry (R for bytes), used for the upper bound when nothing was seen."""
    if value <= 0:
        _, high = poisson_interval(0, confidence)
        return Estimate(0.0, 0.0, high * max(one_point, 0.0), max(var, 0.0))
    if var <= 0:  # a census: exact
        return Estimate(value, value, value, 0.0)
    n_eff = value * value / var
    scale = value / n_eff
    low, high = poisson_interval(n_eff, confidence)
    return Estimate(value, min(low * scale, value), max(high * scale, value), var)


def mean_rate(epochs: Iterable[tuple[float, float]]) -> float | None:
    """The byte-weighted mean R of a window's rate epochs, ``(R, bytes allocated)`` each:
    the R an average byte of the window was sampled at (None when nothing was allocated)."""
    num = den = 0.0
    for rate, nbytes in epochs:
        if nbytes > 0:
            num += rate * nbytes
            den += nbytes
    return num / den if den > 0 else None


def bytes_estimate(
    s: WeightSums, rate: float, confidence: float = 0.95, window_rate: float | None = None
) -> Estimate:
    """Bytes; ``window_rate`` (:func:`mean_rate`) floors the variance at the key's exposure
    (see :func:`exposure_var`)."""
    return total(s.bytes, exposure_var(s.bytes_var, s.bytes, window_rate), rate, confidence)


def calls_estimate(
    s: WeightSums,
    rate: float,
    confidence: float = 0.95,
    min_size: int = 8,
    window_rate: float | None = None,
) -> Estimate:
    """Calls; with no point seen, the upper bound assumes allocations of ``min_size`` bytes
    (8, the smallest kmalloc cache), the case where one point stands for the most calls."""
    var = s.calls_var
    if window_rate is not None and s.bytes > 0 and s.calls > 0:
        # Var(calls) = sum (R/s)^2 E[k] = calls * R_mean / s_mean at the window's mean R
        var = max(var, s.calls * window_rate / (s.bytes / s.calls))
    return total(s.calls, var, max(1.0, float(rate) / max(1, min_size)), confidence)


def exposure_var(observed: float, value: float, window_rate: float | None) -> float:
    """The larger of a total's observed variance ``sum k R^2`` and its exposure variance
    ``value * R_mean``: what the variance is when the key's bytes were spread over the window
    like all bytes were (``sum_e R_e^2 E[k_e]`` with ``E[k_e] = share * bytes_e / R_e``).

    Why: the observed sum only sees rate epochs the key had points in. When R rises during a
    window (the rate keeper's first adjustment can raise it 20x after 0.1 s), a key whose few
    points all fell in the low-R epoch looks precise, while the high-R epoch that held most of
    its bytes contributed no point and no variance (CI, 2026-12-07: alloc_empty_file under
    200,000 open/close, 63 points, estimate 43% of the truth, 99.9% interval up to 64% of
    it). With one R the two variances are equal in expectation, so a steady window keeps its
    intervals (tests/unit/test_byte_sampling.py).
    """
    if window_rate is None or value <= 0:
        return observed
    return max(observed, value * window_rate)


def share(part: WeightSums, whole: WeightSums, what: str, confidence: float = 0.95) -> Share:
    """``part``'s share of ``whole``'s bytes or calls, with a Kish-Wilson interval."""
    return weighted_share(part.weighted(what), whole.weighted(what), confidence)
