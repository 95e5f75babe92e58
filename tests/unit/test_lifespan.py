"""lifespan/leaks estimation without BPF: the statistics, the cluster estimator's coverage by
simulation, and payload building from synthetic map contents (census and sampled)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from allocscope.collector import lifespan, lifespan_stats
from allocscope.collector.byte_sampling import WeightSums
from allocscope.collector.kallsyms import Kallsyms, Symbol
from allocscope.collector.lifespan import RawLifespan, _Row, build_payload, cluster_estimates
from allocscope.collector.payloads import LifespanPayload, LifespanRow
from allocscope.probes.lifespan import (
    LIFE_SHIFT,
    NR_SLOTS,
    SRC_PAGE,
    LifeEntry,
    LifeKey,
    LifespanSettings,
    TrackedObject,
    Weights,
)

FRAC = 256


def weights(size: int, rate: int, shift: int, k: int) -> WeightSums:
    """The weights lifespan.bpf.c gives an object of ``size`` bytes with ``k`` byte points
    (sampler.bpf.h's fixed point, scaled by the address stage; byte-stage variances only,
    as addr_sums holds them)."""
    cw = (rate << 8) // size
    return WeightSums(
        k,
        (k * rate) << shift,
        (k * ((rate * rate) >> 16)) << (2 * shift),
        (((k * rate) << 8) // size) << shift,
        (k * ((cw * cw) >> 8)) << (2 * shift),
    )


def test_quantiles_and_mean_of_a_census_histogram() -> None:
    w = [0.0] * NR_SLOTS
    w[10] = 100.0  # lifespans in [1024, 2048) ns
    w[20] = 100.0  # [1 Mi, 2 Mi) ns
    w2 = list(w)  # census: every weight 1
    p50 = lifespan_stats.quantile(w, w2, 0.5)
    assert 1024 <= p50.value <= 2048 and p50.low == 1024
    p90 = lifespan_stats.quantile(w, w2, 0.9)
    assert (1 << 20) <= p90.value < (1 << 21) and p90.low >= 1024 and p90.high == 1 << 21
    m = lifespan_stats.mean(w, w2, 100 * 1500.0 + 100 * 1_500_000.0)
    assert m.value == (1500.0 + 1_500_000.0) / 2 and m.low < m.value < m.high
    assert lifespan_stats.n_eff(w, w2) == 200.0


def test_quantile_interval_narrows_with_more_effective_objects() -> None:
    w = [0.0] * NR_SLOTS
    for i in range(8, 24):
        w[i] = 10.0
    few = lifespan_stats.quantile(w, [x * 5 for x in w], 0.9)  # n_eff 32
    many = lifespan_stats.quantile(w, [x / 5 for x in w], 0.9)  # n_eff 800
    assert few.high - few.low > many.high - many.low


def _simulate_clusters(rng: random.Random, shift: int, rate: int) -> tuple[float, _Row]:
    """A slab cache reusing 80 addresses, each allocated a Poisson-ish number of times; the
    address stage keeps 1 in 2^shift, the byte stage draws Poisson(size / rate) points."""
    size = 256
    row = _Row()
    truth = 0.0
    for addr in range(80):
        n = int(rng.expovariate(1 / 400)) + 1  # uneven cluster sizes
        truth += n
        if rng.random() >= 1 / (1 << shift):
            continue
        acc = WeightSums()
        for _ in range(n):
            k = _poisson(rng, size / rate)
            if k:
                acc.add(weights(size, rate, shift, k))
        if acc.hits:
            row.clusters[addr] = acc
    return truth, row


def _poisson(rng: random.Random, lam: float) -> int:
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def test_cluster_intervals_cover_the_truth_at_their_level() -> None:
    rng = random.Random(12)
    shift, rate = 2, 4096
    covered = trials = 0
    errors = []
    for _ in range(400):
        truth, row = _simulate_clusters(rng, shift, rate)
        calls, _ = cluster_estimates(row, 1 / (1 << shift), rate << shift, 0.95, freed=False)
        trials += 1
        covered += calls.low <= truth <= calls.high
        errors.append(calls.value - truth)
    coverage = covered / trials
    assert 0.90 <= coverage <= 0.99, coverage
    # unbiased: the mean error is small against the spread of the estimates
    mean_err = sum(errors) / len(errors)
    sd = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert abs(mean_err) < 3 * sd / math.sqrt(len(errors)), (mean_err, sd)


def test_independent_object_intervals_would_undercover_clusters() -> None:
    """Why addr_sums exists: treating a reused address's allocations as independent objects
    gives intervals far too narrow."""
    rng = random.Random(5)
    shift, rate = 2, 4096
    covered = 0
    for _ in range(200):
        truth, row = _simulate_clusters(rng, shift, rate)
        total = WeightSums()
        for w in row.clusters.values():
            total.add(w)
        from allocscope.collector.byte_sampling import calls_estimate

        e = calls_estimate(total, rate << shift)
        covered += e.low <= truth <= e.high
    assert covered / 200 < 0.8


def _simulate_clustered_lifespans(rng: random.Random, shift: int, rate: int) -> tuple[float, _Row]:
    """Objects at one address live alike (a LIFO freelist gives an address the same place in
    each batch): address a's objects live ``L_a`` times a 10% jitter, ``L_a`` log-uniform over
    1 us..1 ms. Returns the population's true p90 and the row the probe would fill."""
    size = 256
    row = _Row()
    lives: list[float] = []
    for addr in range(80):
        base = 2 ** rng.uniform(10, 20)
        n = int(rng.expovariate(1 / 400)) + 1
        kept = rng.random() < 1 / (1 << shift)
        acc = WeightSums()
        for _ in range(n):
            life = base * math.exp(rng.gauss(0, 0.1))
            lives.append(life)
            k = _poisson(rng, size / rate) if kept else 0
            if not k:
                continue
            w = weights(size, rate, shift, k)
            acc.add(w)
            i = min(int(life).bit_length() - 1, NR_SLOTS - 1)
            row.hist_n[i] += 1
            row.hist_w[i] += int(w.calls)
            row.hist_w2[i] += int(w.calls * w.calls) >> 8  # the probe keeps w^2 per slot
            row.life_w_sum += int(w.calls) * (int(life) >> LIFE_SHIFT)
            row.freed_n += 1
        if acc.hits:
            row.clusters[addr] = acc
    lives.sort()
    return lives[int(0.9 * len(lives))], row


def test_lifespan_intervals_count_addresses_not_objects() -> None:
    """The CI failure this guards: object-level n_eff (hundreds) from a few dozen addresses gave
    a p90 interval that missed the census. Counted per address, the interval covers."""
    rng = random.Random(7)
    shift, rate = 2, 4096
    trials = by_addr = by_obj = 0
    for _ in range(300):
        truth, row = _simulate_clustered_lifespans(rng, shift, rate)
        if row.freed_n < 20:
            continue
        trials += 1
        clustered = lifespan._lifespan(row, 0.95, clustered=True)
        naive = lifespan._lifespan(row, 0.95, clustered=False)
        assert clustered is not None and naive is not None
        assert clustered.n_eff <= naive.n_eff
        by_addr += clustered.p90_ns.low <= truth <= clustered.p90_ns.high
        by_obj += naive.p90_ns.low <= truth <= naive.p90_ns.high
    assert trials > 200
    assert by_addr / trials >= 0.95, (by_addr, by_obj, trials)
    assert by_obj / trials < 0.8, (by_addr, by_obj, trials)


KS = Kallsyms(
    [
        Symbol(0x1000, "alloc_empty_file", ""),
        Symbol(0x1100, "path_openat", ""),
        Symbol(0x1200, "alloc_file_pseudo", ""),
        Symbol(0x1300, "anon_pipe_write", ""),
        Symbol(0x1400, "__alloc_frozen_pages_noprof", ""),
        Symbol(0x1500, "kmem_cache_alloc_noprof", ""),
        Symbol(0x1600, "do_syscall_64", ""),
        Symbol(0x1700, "_etext", ""),
    ]
)
CHURN = LifeKey(0x1010, 0, 1, 1)  # alloc_empty_file <- path_openat
HELD = LifeKey(0x1010, 0, 2, 1)  # alloc_empty_file <- alloc_file_pseudo
PAGE = LifeKey(0, 0, 3, SRC_PAGE)  # [page_alloc] <- anon_pipe_write
STACKS = {
    1: (0x1510, 0x1010, 0x1110, 0x1610),
    2: (0x1510, 0x1010, 0x1210, 0x1610),
    3: (0x1410, 0x1310, 0x1610),
}
ONE = Weights(1, 256, 0, FRAC, 0)  # census weights of a 256-byte object
PAGE_W = Weights(4096, 4096, 0, FRAC, 0)


def _entry(key: LifeKey, lifespans_ns: list[int], missed: int = 0) -> LifeEntry:
    n = [0] * NR_SLOTS
    w = [0] * NR_SLOTS
    for life in lifespans_ns:
        i = min(life.bit_length() - 1, NR_SLOTS - 1)
        n[i] += 1
        w[i] += FRAC
    k = len(lifespans_ns)
    freed = Weights(k, 256 * k, 0, FRAC * k, 0)
    return LifeEntry(
        key,
        freed,
        len(lifespans_ns),
        missed,
        missed * FRAC,
        missed * 256,
        sum(FRAC * (life >> LIFE_SHIFT) for life in lifespans_ns),
        tuple(n),
        tuple(w),
        tuple((x * x) >> 8 for x in w),
    )


def census_raw() -> RawLifespan:
    end = 10_000_000_000
    tracked = (
        [TrackedObject(0xA000 + i, HELD, end - 3_000_000_000, 256, ONE) for i in range(5)]
        + [TrackedObject(0xB000 + i, PAGE, end - 2_000_000_000, 4096, PAGE_W) for i in range(3)]
        + [TrackedObject(0xC000, CHURN, end - 1000, 256, ONE)]
    )
    return RawLifespan(
        settings=LifespanSettings.census(),
        defines={"TRACK_PAGES": True, "PAGE_FREE_BATCHED": True},
        backend="raw_tracepoint",
        counters={"alloc_events": 20, "missed_free": 1, "track_full": 0},
        tracked=tracked,
        lifespans=[_entry(CHURN, [1500, 2500, 900, 3000], missed=1)],
        stacks=STACKS,
        tags={},
        addr_sums=[],
        start_ns=end - 5_000_000_000,
        end_ns=end,
    )


def _row(p: LifespanPayload, site: str, caller: str) -> LifespanRow:
    for r in p.rows:
        if r.site == site and r.caller == caller:
            return r
    raise AssertionError((site, caller))


def test_census_payload_is_exact_per_site_and_caller() -> None:
    p = build_payload(census_raw(), KS, view="lifespan")
    churn = _row(p, "alloc_empty_file", "path_openat")
    assert churn.allocated_calls.value == 6  # 4 freed + 1 live + 1 missed free
    assert churn.freed_calls.value == 4 and churn.missed_frees == 1
    assert churn.live_calls.value == churn.live_calls.low == churn.live_calls.high == 1
    assert churn.lifespan is not None and 1024 <= churn.lifespan.p50_ns.value <= 4096
    assert abs(churn.lifespan.mean_ns.value - (1500 + 2500 + 900 + 3000) / 4) <= 64
    held = _row(p, "alloc_empty_file", "alloc_file_pseudo")
    assert held.live_calls.value == 5 and held.old_calls.value == 5 and held.lifespan is None
    page = _row(p, lifespan.PAGE_SITE, "anon_pipe_write")
    assert page.live_bytes.value == 3 * 4096 and page.source == "mm_page_alloc"
    assert p.tag_mode == "call-site" and p.older_than_ns == lifespan.DEFAULT_OLDER_NS
    assert any("allocated again" in n for n in p.notes)
    assert "mm_page_free_batched" in p.traced_frees and p.untraced_frees


def test_leaks_view_orders_by_old_bytes_and_keeps_only_live_rows() -> None:
    p = build_payload(census_raw(), KS, view="leaks", older_ns=2_500_000_000)
    assert [(r.site, r.caller) for r in p.rows] == [
        ("alloc_empty_file", "alloc_file_pseudo"),  # 5 x 256 B, 3 s old
        (lifespan.PAGE_SITE, "anon_pipe_write"),  # 12 KiB, but only 2 s old
        ("alloc_empty_file", "path_openat"),  # 1 live, 1 us old
    ]
    held = p.rows[0]
    assert held.old_bytes.value == 5 * 256 and p.rows[1].old_bytes.value == 0
    assert held.stacks == {
        "do_syscall_64;alloc_file_pseudo;alloc_empty_file;kmem_cache_alloc_noprof": 5
    }
    assert held.age_hist and all(s.low_ns <= 3_000_000_000 < s.high_ns for s in held.age_hist)


def test_leaks_view_says_missed_frees_can_be_false_leaks_and_names_their_rows() -> None:
    p = build_payload(census_raw(), KS, view="leaks", older_ns=2_500_000_000)
    note = next(n for n in p.notes if "false leaks" in n)
    # path_openat's key had a missed free and has a live object: the one suspect row
    assert "alloc_empty_file <- path_openat" in note and "alloc_file_pseudo" not in note
    assert "filtered task" not in note
    raw = census_raw()
    raw.settings = dataclasses.replace(raw.settings, pid=42)
    assert any("by the filtered task" in n for n in build_payload(raw, KS, view="leaks").notes)
    assert not any("false leaks" in n for n in build_payload(census_raw(), KS).notes)
    raw = census_raw()
    raw.counters = {**raw.counters, "missed_free": 0}
    assert not any("false leaks" in n for n in build_payload(raw, KS, view="leaks").notes)


def test_a_full_lifespans_map_is_said_in_notes_and_counters() -> None:
    raw = census_raw()
    raw.counters = {**raw.counters, "lives_full": 7}
    p = build_payload(raw, KS, view="lifespan")
    assert p.counters["lives_full"] == 7
    assert p.to_dict()["counters"]["lives_full"] == 7
    assert any(n.startswith("7 freed (or missed-free) tracked objects") for n in p.notes)
    from allocscope.reports import lifespan as report

    assert "lifespans map was full" in report.text(p, 5)
    assert not any("lifespans map" in n for n in build_payload(census_raw(), KS).notes)


def test_default_older_is_one_second_or_half_a_short_window() -> None:
    assert lifespan.default_older_ns(60_000_000_000) == 1_000_000_000
    assert lifespan.default_older_ns(1_000_000_000) == 500_000_000


def test_settings_refuse_weights_that_would_overflow() -> None:
    import pytest

    from allocscope.errors import AllocscopeError

    with pytest.raises(AllocscopeError, match="overflow"):
        LifespanSettings(sample_rate=1 << 20, addr_shift=8).check()
    LifespanSettings(sample_rate=4096, addr_shift=5).check()


def test_tables_show_both_views_and_neutralise_hostile_names() -> None:
    from allocscope.reports import lifespan as report

    raw = census_raw()
    raw.notes.append("site \x1b[31mred\x1b[0m")
    life = report.text(build_payload(raw, KS, view="lifespan"), 10)
    assert "alloc_empty_file" in life and "path_openat" in life and "p50 life" in life
    assert "not traced" in life and "\x1b" not in life
    leaks = report.text(build_payload(raw, KS, view="leaks", older_ns=2_500_000_000), 10)
    assert "older than 2.5s" in leaks and "old bytes" in leaks
    assert "#1 alloc_empty_file <- alloc_file_pseudo: 5 sampled old objects" in leaks
    assert leaks.index("alloc_file_pseudo") < leaks.index("anon_pipe_write")


def test_cli_usage_errors_before_any_probe(cli: Any) -> None:
    rc, _out, err = cli("lifespan", "--census", "--rate", "8")
    assert rc != 0 and "--census is --rate 1 --page-rate 1 --addr-shift 0" in err
    rc, _out, err = cli("leaks", "--confidence", "1.5")
    assert rc != 0 and "--confidence must be in (0, 1)" in err
    rc, _out, err = cli("lifespan", "--rate", "1048576", "--addr-shift", "8")
    assert rc != 0 and "overflow" in err
    rc, _out, err = cli("top", "--exact-frees")
    assert rc != 0 and "--exact-frees needs --live" in err


def test_a_continuous_probe_s_interval_is_the_growth_and_carries_live_objects() -> None:
    """collect --lifespan reads one attached probe per interval (agent_capture.diff_lifespan):
    freed histograms are the growth since the last read; an object allocated before the
    interval is live and aging in it, but not one of its allocations."""
    from allocscope.collector.agent_capture import diff_lifespan

    first = census_raw()
    first.counters.update(free_events=10, free_kept=10)
    end2 = first.end_ns + 5_000_000_000
    again = census_raw()
    again.lifespans = [_entry(CHURN, [1500, 2500, 900, 3000, 700, 40_000], missed=1)]
    again.counters.update(free_events=25, free_kept=25, alloc_events=50)
    again.tracked = [dataclasses.replace(o) for o in first.tracked] + [
        TrackedObject(0xD000, HELD, end2 - 1_000, 256, ONE)  # allocated in interval 2
    ]
    again.start_ns, again.end_ns = first.end_ns, end2
    second = diff_lifespan(again, first)
    assert second.carried_before_ns == second.start_ns == first.end_ns
    assert second.counters["free_events"] == 15 and second.counters["free_filtered"] == 0
    (entry,) = second.lifespans
    assert entry.freed_n == 2 and entry.missed_n == 0
    p = build_payload(second, KS, view="leaks", older_ns=2_500_000_000)
    churn = _row(p, "alloc_empty_file", "path_openat")
    assert churn.freed_calls.value == 2 and churn.lifespan is not None
    held = _row(p, "alloc_empty_file", "alloc_file_pseudo")
    assert held.live_calls.value == 6  # 5 carried + 1 new: all outstanding
    assert held.old_calls.value == 5  # the carried ones are 8 s old now
    assert held.allocated_calls.value == 1  # only the new one was allocated in this interval
    assert diff_lifespan(first, None) is first


def test_page_rows_bound_what_they_did_not_see_with_the_page_gap() -> None:
    """Pages have their own sampler (--page-rate): a page row's 'none seen' upper bound is
    one page point's weight, (page_rate << shift) / page size calls; a slab row's is
    (rate << shift) / 8 (the smallest kmalloc)."""
    raw = census_raw()
    raw.settings = LifespanSettings(sample_rate=4096, page_rate=16384, addr_shift=5)
    raw.tracked = []
    raw.lifespans = [_entry(CHURN, [1500]), _entry(PAGE, [2000])]
    p = build_payload(raw, KS)
    assert p.page_sample_rate == 16384 and p.sample_rate == 4096
    page = _row(p, lifespan.PAGE_SITE, "anon_pipe_write")
    churn = _row(p, "alloc_empty_file", "path_openat")
    assert page.live_calls.value == churn.live_calls.value == 0
    assert page.live_calls.high / churn.live_calls.high == pytest.approx(
        (16384 / 4096) / (4096 / 8)
    )
    assert page.live_bytes.high / churn.live_bytes.high == pytest.approx(4)
