"""The byte-sampling estimators (collector/byte_sampling.py) against a simulation of the
kernel sampler (probes/sampler.bpf.h): a renewal process of sample points with gaps uniform on
[1, 2R - 1] laid over a stream of allocations of known sizes. The live and VM tests check the
same estimators against the kernel's own counts; this one checks the statistics: unbiased
totals, intervals that cover at about their nominal rate, exact census at R = 1."""

from __future__ import annotations

import random

from allocscope.collector.byte_sampling import (
    SAMPLER_FRAC_BITS,
    SAMPLER_W2_SHIFT,
    WeightSums,
    bytes_estimate,
    calls_estimate,
    poisson_interval,
    share,
)


def _simulate(sizes: list[tuple[str, int]], rate: int, rng: random.Random) -> dict[str, WeightSums]:
    """Integer arithmetic exactly as the header does it (one CPU)."""
    out: dict[str, WeightSums] = {}
    countdown = 1 + rng.randrange(2 * rate - 1) if rate > 1 else 1
    for key, s in sizes:
        c = countdown - s
        if c > 0:
            countdown = c
            continue
        k = 0
        while c <= 0:
            k += 1
            c += 1 + rng.randrange(2 * rate - 1) if rate > 1 else 1
        countdown = c
        cw = (rate << SAMPLER_FRAC_BITS) // s
        w = out.setdefault(key, WeightSums())
        w.add(
            WeightSums(
                k,
                k * rate,
                k * ((rate * rate) >> SAMPLER_W2_SHIFT),
                ((k * rate) << SAMPLER_FRAC_BITS) // s,
                k * ((cw * cw) >> SAMPLER_FRAC_BITS),
            )
        )
    return out


def _workload(rng: random.Random) -> list[tuple[str, int]]:
    """Caller a: 3 of 4 calls, 64-byte objects; caller b: 1 of 4 calls, 4096-byte pages."""
    return [("a", 64) if rng.random() < 0.75 else ("b", 4096) for _ in range(20000)]


def test_census_is_exact() -> None:
    rng = random.Random(1)
    work = _workload(rng)
    got = _simulate(work, 1, rng)
    for key in ("a", "b"):
        true_calls = sum(1 for k, _ in work if k == key)
        true_bytes = sum(s for k, s in work if k == key)
        c = calls_estimate(got[key], 1)
        b = bytes_estimate(got[key], 1)
        assert (c.low, c.value, c.high) == (true_calls, true_calls, true_calls)
        assert (b.low, b.value, b.high) == (true_bytes, true_bytes, true_bytes)


def test_intervals_cover_calls_bytes_and_shares() -> None:
    trials, covered = 200, {"calls": 0, "bytes": 0, "share_calls": 0, "share_bytes": 0}
    for seed in range(trials):
        rng = random.Random(seed)
        work = _workload(rng)
        got = _simulate(work, 64 * 1024, rng)
        a, b = got.get("a", WeightSums()), got.get("b", WeightSums())
        whole = WeightSums()
        whole.add(a)
        whole.add(b)
        true_calls_a = sum(1 for k, _ in work if k == "a")
        true_bytes_a = 64 * true_calls_a
        true_bytes = sum(s for _, s in work)
        c = calls_estimate(a, 64 * 1024)
        covered["calls"] += c.low <= true_calls_a <= c.high
        e = bytes_estimate(a, 64 * 1024)
        covered["bytes"] += e.low <= true_bytes_a <= e.high
        sc = share(a, whole, "calls")
        covered["share_calls"] += sc.ci_low <= true_calls_a / len(work) <= sc.ci_high
        sb = share(a, whole, "bytes")
        covered["share_bytes"] += sb.ci_low <= true_bytes_a / true_bytes <= sb.ci_high
    for what, n in covered.items():
        assert n >= 0.88 * trials, f"{what}: 95% interval covered {n}/{trials}"


def test_large_allocations_are_never_missed() -> None:
    """Every allocation at least 2R long holds a point (gaps are < 2R)."""
    rng = random.Random(7)
    work = [("big", 1 << 20)] * 50 + [("small", 32)] * 5000
    got = _simulate(work, 256 * 1024, rng)
    assert got["big"].hits >= 50 * 2


def test_nothing_sampled_is_not_nothing_allocated() -> None:
    e = bytes_estimate(WeightSums(), 4096)
    assert e.value == 0 and e.low == 0 and e.high > 4096
    low, high = poisson_interval(0)
    assert low == 0 and 3.6 < high < 3.8
