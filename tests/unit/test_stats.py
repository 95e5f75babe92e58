"""Statistics: known effects are found, absent effects are not, p-values match references."""

from __future__ import annotations

import math
import random

import pytest

from allocscope.collector import stats


def _groups(rng: random.Random, n: int, effect: float) -> tuple[list[float], list[float]]:
    """Per-host ns/call: lognormal host-to-host spread (~10%), pilot scaled by ``effect``."""
    control = [100 * math.exp(rng.gauss(0, 0.1)) for _ in range(n)]
    pilot = [100 * effect * math.exp(rng.gauss(0, 0.1)) for _ in range(n)]
    return pilot, control


def test_known_41_percent_effect_is_detected() -> None:
    rng = random.Random(7)
    pilot, control = _groups(rng, 12, 1.41)
    ci = stats.bootstrap_ratio_ci(pilot, control, seed=1)
    assert ci.ratio is not None and ci.low is not None and ci.high is not None
    assert ci.excludes_one() and ci.low > 1.0
    assert ci.low <= ci.ratio <= ci.high
    assert 1.25 < ci.ratio < 1.6
    assert stats.mann_whitney_u(pilot, control).p_value < 0.05
    assert stats.welch_t(pilot, control)[2] < 0.05


def test_41_percent_effect_detected_in_most_trials() -> None:
    found = 0
    for seed in range(100):
        pilot, control = _groups(random.Random(seed), 12, 1.41)
        ci = stats.bootstrap_ratio_ci(pilot, control, n_boot=400, seed=seed)
        if ci.excludes_one() and stats.mann_whitney_u(pilot, control).p_value < 0.05:
            found += 1
    assert found >= 95


def test_no_effect_not_flagged_in_95_percent_of_trials() -> None:
    flagged_mw = flagged_both = 0
    trials = 300
    for seed in range(trials):
        pilot, control = _groups(random.Random(1000 + seed), 12, 1.0)
        p = stats.mann_whitney_u(pilot, control).p_value
        ci = stats.bootstrap_ratio_ci(pilot, control, n_boot=300, seed=seed)
        flagged_mw += p < 0.05
        flagged_both += p < 0.05 and ci.excludes_one()
    assert flagged_both <= 0.05 * trials
    assert flagged_mw <= 0.05 * trials


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 3.0]
    assert stats.bootstrap_ratio_ci(a, b, seed=3) == stats.bootstrap_ratio_ci(a, b, seed=3)
    med = stats.bootstrap_ratio_ci(a, b, stat="median", seed=3)
    assert med.ratio == pytest.approx(2.5 / 2.5)


def test_mann_whitney_exact_matches_hand_computation() -> None:
    # complete separation, 3 vs 3: P(U=0) = 1/20, two-sided 0.1
    r = stats.mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert r.method == "exact" and r.p_value == pytest.approx(0.1)
    # 4 vs 5 with U=1: P(U<=1) = 2/126
    r = stats.mann_whitney_u([1, 2, 3, 4.5], [4, 5, 6, 7, 8])
    assert r.p_value == pytest.approx(4 / 126)


def test_mann_whitney_ties_use_normal_approximation_with_tie_correction() -> None:
    a = [1, 1, 2, 2, 3, 3, 3, 4]
    b = [3, 4, 4, 5, 5, 5, 6, 6]
    r = stats.mann_whitney_u(a, b)
    assert r.method == "normal"
    # by hand: U1 = 3 x 0.5 (a=3 vs b=3) + 1 + 2 x 0.5 (a=4) = 3.5; tie groups 2,2,4,3,3,2
    # -> sum(t^3 - t) = 126; var = 64/12 * (17 - 126/240); z = (|3.5 - 32| - 0.5) / sqrt(var)
    assert r.statistic == pytest.approx(3.5)
    z = 28 / math.sqrt(64 / 12 * (17 - 126 / 240))
    assert r.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert 0.002 < r.p_value < 0.004
    assert stats.mann_whitney_u([2, 2, 2], [2, 2, 2]).p_value == 1.0


def test_welch_t_matches_reference() -> None:
    # by hand: t = -1.5 / sqrt(5/12 + 1/2) = -1.5667, Welch df = 6.98; p from the t table
    t, df, p = stats.welch_t([1, 2, 3, 4], [2, 3, 4, 5, 6])
    assert t == pytest.approx(-1.5667, abs=1e-3)
    assert df == pytest.approx(6.98, abs=0.01)
    assert p == pytest.approx(0.1613, abs=1e-3)
    assert stats.student_t_two_sided_p(2.228, 10) == pytest.approx(0.05, abs=1e-3)


def test_wilcoxon_signed_rank_exact_and_paired_bootstrap() -> None:
    assert stats.wilcoxon_signed_rank([1, 2, 3, 4, 5]).p_value == pytest.approx(2 / 32)
    assert stats.wilcoxon_signed_rank([0, 0]).p_value == 1.0
    on = [141.0, 150, 138, 145, 139, 142, 147, 140]
    off = [100.0, 104, 99, 103, 98, 101, 102, 100]
    ci = stats.paired_bootstrap_ratio_ci(on, off, seed=2)
    assert ci.low is not None and ci.low > 1.3 and ci.ratio == pytest.approx(sum(on) / sum(off))
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ratio_ci([1.0], [1.0, 2.0])


def test_degenerate_inputs() -> None:
    assert stats.bootstrap_ratio_ci([], [1.0]).ratio is None
    assert stats.bootstrap_ratio_ci([1.0], [0.0]).ratio is None
    one = stats.bootstrap_ratio_ci([2.0], [1.0])
    assert one.ratio == 2.0 and one.low is None
    with pytest.raises(ValueError):
        stats.welch_t([1.0], [1.0, 2.0])
