"""Statistics for comparing groups of measurements, in pure Python (no scipy on fleet hosts).

Why these tests: per-host allocator costs are few (a dozen hosts per group), skewed and
sometimes tied, so the headline p-value is the rank-based Mann-Whitney U (exact for small
groups without ties, normal approximation with tie correction otherwise); Welch's t is
reported alongside for readers who expect it. The effect is a ratio (pilot/control), with a
percentile bootstrap CI from a seeded RNG so the same inputs always print the same interval.
For ``ab --toggle`` windows are paired (adjacent on/off), so the paired bootstrap and the
Wilcoxon signed-rank test are used instead.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_SEED = 20241
EXACT_MAX_N = 30  # exact Mann-Whitney distribution up to this many per group


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


STATS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": _mean,
    "median": lambda xs: float(statistics.median(xs)),
}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of sorted data, q in [0, 1]."""
    if not sorted_xs:
        raise ValueError("empty")
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class RatioCI:
    """stat(a)/stat(b) with a (1-alpha) percentile bootstrap interval."""

    ratio: float | None
    low: float | None
    high: float | None
    n_boot: int

    def excludes_one(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 1 or self.high < 1)


def bootstrap_ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    stat: str = "mean",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> RatioCI:
    """Ratio of ``stat`` of two independent groups, each resampled with replacement."""
    f = STATS[stat]
    if not a or not b:
        return RatioCI(None, None, None, 0)
    point = _ratio(f(a), f(b))
    if point is None or len(a) < 2 or len(b) < 2:
        return RatioCI(point, None, None, 0)
    rng = random.Random(seed)
    na, nb = len(a), len(b)
    reps: list[float] = []
    for _ in range(n_boot):
        ra = [a[rng.randrange(na)] for _ in range(na)]
        rb = [b[rng.randrange(nb)] for _ in range(nb)]
        r = _ratio(f(ra), f(rb))
        if r is not None:
            reps.append(r)
    if not reps:
        return RatioCI(point, None, None, 0)
    reps.sort()
    return RatioCI(point, _percentile(reps, alpha / 2), _percentile(reps, 1 - alpha / 2), len(reps))


def paired_bootstrap_ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> RatioCI:
    """mean(a)/mean(b) for paired samples: pairs are resampled together."""
    if len(a) != len(b):
        raise ValueError("paired samples need equal lengths")
    if not a:
        return RatioCI(None, None, None, 0)
    point = _ratio(_mean(a), _mean(b))
    n = len(a)
    if point is None or n < 2:
        return RatioCI(point, None, None, 0)
    rng = random.Random(seed)
    reps: list[float] = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        r = _ratio(math.fsum(a[i] for i in idx), math.fsum(b[i] for i in idx))
        if r is not None:
            reps.append(r)
    if not reps:
        return RatioCI(point, None, None, 0)
    reps.sort()
    return RatioCI(point, _percentile(reps, alpha / 2), _percentile(reps, 1 - alpha / 2), len(reps))


# --- ranks ---------------------------------------------------------------------------------


def rankdata(xs: Sequence[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) and the sizes of tie groups."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True, slots=True)
class TestResult:
    statistic: float
    p_value: float
    method: str


def _mw_exact_counts(m: int, n: int) -> list[int]:
    """Number of arrangements giving each U in 0..m*n (no ties), by the standard recurrence."""
    # f[j][u] for the current i: arrangements of i x's and j y's with U = u.
    prev = [[1] + [0] * (m * n) for _ in range(n + 1)]  # i = 0: only U = 0
    for i in range(1, m + 1):
        cur = [[0] * (m * n + 1) for _ in range(n + 1)]
        cur[0][0] = 1
        for j in range(1, n + 1):
            for u in range(i * j + 1):
                # last element is an x (adds j to U) or a y
                v = prev[j][u - j] if u >= j else 0
                cur[j][u] = v + cur[j - 1][u]
        prev = cur
    return prev[n]


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided Mann-Whitney U test of a vs b.

    Exact null distribution when there are no ties and both groups have at most EXACT_MAX_N
    values; otherwise the normal approximation with tie-corrected variance and continuity
    correction.
    """
    m, n = len(a), len(b)
    if m == 0 or n == 0:
        raise ValueError("both groups need values")
    ranks, ties = rankdata([*a, *b])
    r1 = math.fsum(ranks[:m])
    u1 = r1 - m * (m + 1) / 2
    u = min(u1, m * n - u1)
    if not ties and m <= EXACT_MAX_N and n <= EXACT_MAX_N:
        counts = _mw_exact_counts(m, n)
        total = math.comb(m + n, m)
        k = int(math.floor(u + 1e-9))
        p = 2 * sum(counts[: k + 1]) / total
        return TestResult(u1, min(1.0, p), "exact")
    nn = m + n
    tie_term = sum(t**3 - t for t in ties) / (nn * (nn - 1))
    var = m * n / 12 * ((nn + 1) - tie_term)
    if var <= 0:
        return TestResult(u1, 1.0, "normal")
    z = (abs(u1 - m * n / 2) - 0.5) / math.sqrt(var)
    return TestResult(u1, min(1.0, 2 * normal_sf(max(z, 0.0))), "normal")


def wilcoxon_signed_rank(diffs: Sequence[float]) -> TestResult:
    """Two-sided Wilcoxon signed-rank test of paired differences (zeros dropped)."""
    d = [x for x in diffs if x != 0]
    n = len(d)
    if n == 0:
        return TestResult(0.0, 1.0, "none")
    ranks, ties = rankdata([abs(x) for x in d])
    w_plus = math.fsum(r for r, x in zip(ranks, d, strict=True) if x > 0)
    w = min(w_plus, n * (n + 1) / 2 - w_plus)
    if not ties and n <= 25:
        # counts[s] = subsets of {1..n} summing to s
        top = n * (n + 1) // 2
        counts = [1] + [0] * top
        for k in range(1, n + 1):
            for s in range(top, k - 1, -1):
                counts[s] += counts[s - k]
        p = 2 * sum(counts[: int(math.floor(w + 1e-9)) + 1]) / 2**n
        return TestResult(w_plus, min(1.0, p), "exact")
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    if var <= 0:
        return TestResult(w_plus, 1.0, "normal")
    z = (abs(w_plus - mean) - 0.5) / math.sqrt(var)
    return TestResult(w_plus, min(1.0, 2 * normal_sf(max(z, 0.0))), "normal")


# --- Welch's t -----------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the regularized incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c = 1.0
    d = 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    if df <= 0 or math.isnan(t):
        return 1.0
    return betainc(df / 2, 0.5, df / (df + t * t))


def welch_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t: (t, df, two-sided p)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t needs at least 2 values per group")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    diff = _mean(a) - _mean(b)
    if se2 == 0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff), 0.0, 1.0 if diff == 0 else 0.0)
    t = diff / math.sqrt(se2)
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, student_t_two_sided_p(t, df)
