"""The fleet report's lifespan intervals: the single capture's rule (n = min(objects' Kish n,
kept addresses' Kish n), exact binomial order-statistic ranks, the mean's design effect) from
the store's sums, with a host's intervals combined as if they kept the same addresses."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import synth
from support.synth import FleetSpec, host_metadata
from support.synth_context import _ADDR, KSYMS

from allocscope.collector import lifespan
from allocscope.collector.allocinfo import AllocinfoSnapshot
from allocscope.collector.payloads import LifespanPayload
from allocscope.collector.report_fleet import (
    HostClusters,
    addr_n,
    fleet_lifespan,
    lifespan_intervals,
)
from allocscope.collector.result import Result
from allocscope.collector.snapshot import snapshot_table
from allocscope.collector.store import Store
from allocscope.collector.store_fleet import lifespan_table
from allocscope.probes.lifespan import (
    LIFE_SHIFT,
    NR_SLOTS,
    AddrSum,
    LifeEntry,
    LifeKey,
    LifespanSettings,
    Weights,
)

T = synth.START + 7200.0
SHIFT, RATE, SIZE = 2, 4096, 256
CW = ((RATE << 8) // SIZE) << SHIFT  # one point's calls weight, 1/256 units (64 calls)
ADDRS, PER_ADDR = 16, 3


def _raw(addr_sums: bool = True) -> lifespan.RawLifespan:
    """16 kept addresses of one key, 3 freed objects each, alike per address."""
    key = LifeKey(_ADDR["caller_one"], 0, 0, 1)
    hist_n, hist_w, hist_w2 = [0] * NR_SLOTS, [0] * NR_SLOTS, [0] * NR_SLOTS
    life_sum = 0
    sums = []
    for a in range(ADDRS):
        life = 1 << (12 + a % 6)
        slot = life.bit_length() - 1
        hist_n[slot] += PER_ADDR
        hist_w[slot] += PER_ADDR * CW
        hist_w2[slot] += PER_ADDR * ((CW * CW) >> 8)
        life_sum += PER_ADDR * CW * (life >> LIFE_SHIFT)
        sums.append(AddrSum(key, 0x9000 + 64 * a, Weights(PER_ADDR, 0, 0, PER_ADDR * CW, 0)))
    n = ADDRS * PER_ADDR
    entry = LifeEntry(
        key,
        Weights(n, n * (RATE << SHIFT), 0, n * CW, 0),
        n,
        0,
        0,
        0,
        life_sum,
        tuple(hist_n),
        tuple(hist_w),
        tuple(hist_w2),
    )
    return lifespan.RawLifespan(
        settings=LifespanSettings(sample_rate=RATE, addr_shift=SHIFT),
        defines={},
        backend="raw_tracepoint",
        counters={"tracked": n},
        tracked=[],
        lifespans=[entry],
        stacks={0: (_ADDR["caller_one"],)},
        tags={},
        addr_sums=sums if addr_sums else [],
        start_ns=0,
        end_ns=0,  # no window: no cap, as the fleet (a fleet histogram spans many windows)
    )


def _commit(store: Store, h: int, at: float, raw: lifespan.RawLifespan) -> LifespanPayload:
    host = host_metadata(h, 0, FleetSpec())
    payload = lifespan.build_payload(raw, KSYMS, view="lifespan")
    res = Result(
        kind="lifespan",
        host=host,
        start=at - 60,
        duration=60.0,
        settings={},
        payload=payload.to_dict(),
    )
    table = lifespan_table(res, "x", taken_at=at, source="agent")
    snap = snapshot_table(AllocinfoSnapshot(None, [], "none", taken_at=at), host)
    store.commit_snapshot(snap, host, at, extra=[("lifespan", table)])
    return payload


def _tag(store: Store) -> dict[str, float]:
    fl = fleet_lifespan(store, 5)
    assert fl is not None and len(fl.tags) == 1
    return fl.tags[0]


def test_one_capture_in_the_store_gets_the_capture_s_own_intervals(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    payload = _commit(store, 0, T, _raw())
    life = payload.rows[0].lifespan
    assert life is not None and life.addr_calls == ADDRS * PER_ADDR * CW / 256
    assert life.n_eff == pytest.approx(ADDRS)  # the addresses', not the 48 objects'
    got = _tag(store)
    assert got["n_draws"] == pytest.approx(life.n_eff)
    assert got["rows_by_objects"] == 0
    for name in ("p50_ns", "p90_ns", "mean_ns"):
        iv = getattr(life, name)
        assert got[f"{name}_low"] == pytest.approx(iv.low), name
        assert got[f"{name}_high"] == pytest.approx(iv.high), name
    assert 0 < got["mean_ns_low"] < got["mean_ns"] < got["mean_ns_high"]


def test_a_host_s_intervals_do_not_add_addresses_but_hosts_do(tmp_path: Path) -> None:
    one = Store(str(tmp_path / "one"))
    for i in range(4):  # four intervals of one host: maybe the same 16 addresses each time
        _commit(one, 0, T + 300 * i, _raw())
    assert _tag(one)["n_draws"] == pytest.approx(ADDRS)
    many = Store(str(tmp_path / "many"))
    for h in range(4):  # four hosts: independent addresses
        _commit(many, h, T, _raw())
    assert _tag(many)["n_draws"] == pytest.approx(4 * ADDRS)


def test_rows_without_address_sums_count_objects_and_say_so(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    payload = _commit(store, 0, T, _raw(addr_sums=False))
    life = payload.rows[0].lifespan
    assert life is not None and life.addr_calls is None
    got = _tag(store)
    assert got["n_draws"] == pytest.approx(ADDRS * PER_ADDR) and got["rows_by_objects"] == 1


def test_addr_n_is_the_worst_case_within_a_host() -> None:
    assert addr_n([]) is None
    # one host, two rows of Q = 4 each: (2 + 2)^2 = 16 bounds the merged sum of squares
    assert addr_n([HostClusters(calls=8.0, root_sq=4.0)]) == pytest.approx(4.0)
    assert addr_n([HostClusters(4.0, 2.0), HostClusters(4.0, 2.0)]) == pytest.approx(8.0)
    w = [0.0] * NR_SLOTS
    w2 = [0.0] * NR_SLOTS
    w[12], w2[12] = 10.0, 1.0  # 100 objects' worth
    got = lifespan_intervals(w, w2, 10.0 * 6000, [HostClusters(10.0, 10.0)])
    assert got["n_draws"] == pytest.approx(1.0)  # one address: nothing bounds a p90
    assert got["p90_ns_low"] == 0.0
