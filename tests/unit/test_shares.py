"""Share intervals: Wilson score with a finite-population correction for sampling."""

from __future__ import annotations

import random

import pytest

from allocscope.collector.shares import (
    fpc,
    scale_to_population,
    share_of,
    wilson_interval,
    z_for,
)


def test_z_for_common_levels() -> None:
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-5)
    assert z_for(0.99) == pytest.approx(2.575829, abs=1e-5)
    with pytest.raises(ValueError):
        z_for(1.0)


def test_wilson_matches_textbook_values() -> None:
    # Wilson (1927) / Newcombe (1998) example: 81 of 263 at 95% -> 0.2553..0.3662
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-4)
    assert high == pytest.approx(0.3662, abs=5e-4)


def test_wilson_stays_inside_unit_interval_at_extremes() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.2 < high < 0.35
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and 0.65 < low < 0.8
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_census_collapses_the_interval() -> None:
    # --sample 1: every event was walked; nothing left to estimate.
    assert fpc(1000, 1000) == 0.0
    s = share_of(750, 1000, population=1000)
    assert (s.ci_low, s.share, s.ci_high) == (0.75, 0.75, 0.75)


def test_fpc_narrows_the_interval() -> None:
    wide = wilson_interval(300, 1000)
    narrow = wilson_interval(300, 1000, population=2000)
    assert narrow[0] > wide[0] and narrow[1] < wide[1]
    assert fpc(10, None) == 1.0


def test_coverage_of_bernoulli_sampling_is_near_nominal() -> None:
    """Simulate the kernel: M events with a known caller mix, each kept w.p. 1/N."""
    rng = random.Random(7)
    population = [0] * 3000 + [1] * 1000  # true share of caller 0: 0.75
    hits = 0
    trials = 400
    for _ in range(trials):
        kept = [c for c in population if rng.random() < 1 / 10]
        k = sum(1 for c in kept if c == 0)
        low, high = wilson_interval(k, len(kept), 0.95, len(population))
        hits += low <= 0.75 <= high
    assert 0.92 <= hits / trials <= 0.99


def test_scale_to_population() -> None:
    assert scale_to_population(25, 100, 4000) == 1000
    assert scale_to_population(1, 0, 10) == 0
