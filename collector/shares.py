"""Caller shares and confidence intervals that reflect in-kernel sampling.

How the numbers arise: every event that passes the site filter is counted (``M`` events in the
window); each one independently has its stack walked with probability ``1/N`` (a Bernoulli
sample from ``bpf_get_prandom_u32() % N == 0``), giving ``n`` sampled stacks of which ``k``
resolve to a given caller. The share we report is ``p = k / n``.

Why a Wilson score interval: conditional on ``n``, the sampled events are a simple random
sample without replacement of the window's ``M`` events, so ``k`` is hypergeometric and, for the
sizes seen here, close to binomial(n, P) where ``P`` is the caller's true share in the window.
The Wald interval ``p +- z*sqrt(p(1-p)/n)`` collapses to zero width at ``k = 0`` or ``k = n`` and
undercovers for small shares (exactly the "other 4%" callers people care about); Wilson's
interval stays inside [0, 1] and keeps near-nominal coverage down to a handful of samples.

Why a finite-population correction: the question is "who called the site *during this
window*", and the population is the window's ``M`` events. Sampling without replacement
shrinks the variance by ``(M - n) / (M - 1)``; we scale ``z**2`` by it. With ``--sample 1``
every event is walked (``n = M``), the share is a census and the interval collapses to the
point -- which is right: there is no sampling error left, only the lost-stack count, which
is shown separately. With ``N > 1`` the correction is ~``1 - 1/N``.

Why weights: the automatic mode changes N as the event rate changes (N rises in a burst to
hold the CPU budget). A sample drawn at 1-in-N stands for N events, so each sample is weighted
by its epoch's N (Horvitz-Thompson): ``p = sum(w_i, caller) / sum(w_i, all)``. Unequal weights
carry less information than as many equal ones; the interval uses Kish's effective sample
size ``n_eff = (sum w)^2 / sum w^2`` with ``k_eff = p * n_eff``. With one N (``--sample N``)
every weight is equal and this is exactly the plain Wilson interval on ``k`` of ``n``.

Stack walks that fail (stack map full, hash full) are assumed missing at random: they shrink
``n`` but do not bias ``p``. They are always reported next to the shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


def z_for(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def fpc(sampled: float, population: int | None) -> float:
    """Finite-population correction ``(M - n) / (M - 1)`` in [0, 1]; 1 when M is unknown."""
    if population is None or population <= 1 or sampled <= 0:
        return 1.0
    if sampled >= population:
        return 0.0
    return (population - sampled) / (population - 1)


def wilson_interval(
    k: float, n: float, confidence: float = 0.95, population: int | None = None
) -> tuple[float, float]:
    """Wilson score interval for ``k`` of ``n``, with the finite-population correction.

    Returns (0, 1) when ``n == 0``: no samples, no information.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n * (1 + 1e-12):
        raise ValueError(f"need 0 <= k <= n, got k={k} n={n}")
    p = k / n
    z2 = z_for(confidence) ** 2 * fpc(n, population)
    if z2 == 0.0:
        return (p, p)
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) * math.sqrt(z2) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends (no float dust)
    high = 1.0 if k >= n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True, slots=True)
class Share:
    """One caller's share of a site's sampled events, with its interval."""

    k: int
    n: int
    share: float
    ci_low: float
    ci_high: float


def share_of(k: int, n: int, confidence: float = 0.95, population: int | None = None) -> Share:
    low, high = wilson_interval(k, n, confidence, population)
    return Share(k, n, k / n if n else 0.0, low, high)


def scale_to_population(k: int, n: int, population: int) -> int:
    """Estimated events for a caller: its share of the counted population, rounded."""
    if n <= 0:
        return 0
    return round(population * k / n)


@dataclass(slots=True)
class Weighted:
    """Samples of one group: raw count, sum of weights, sum of squared weights."""

    k: int = 0
    w: float = 0.0
    w2: float = 0.0

    def add(self, count: int, weight: float) -> None:
        self.k += count
        self.w += count * weight
        self.w2 += count * weight * weight

    @property
    def n_eff(self) -> float:
        """Kish's effective sample size."""
        return self.w * self.w / self.w2 if self.w2 else 0.0


def weighted_share(
    group: Weighted, total: Weighted, confidence: float = 0.95, population: int | None = None
) -> Share:
    """A group's share of the site's weighted samples, with a Kish-Wilson interval."""
    if total.w <= 0:
        return Share(group.k, total.k, 0.0, 0.0, 1.0)
    p = group.w / total.w
    n_eff = total.n_eff
    if group.k == total.k:
        k_eff = n_eff
    else:
        k_eff = p * n_eff
    low, high = wilson_interval(k_eff, n_eff, confidence, population)
    return Share(group.k, total.k, p, min(low, p), max(high, p))
