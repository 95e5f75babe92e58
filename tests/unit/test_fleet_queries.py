"""The context/lifespan named queries against the same numbers computed in Python from the
stored sums with the capture's own estimators (collector/byte_sampling.py, shares.py,
lifespan_stats.py): the SQL combines across hosts and intervals exactly as one capture does.
(The DuckDB == Spark comparison of every named query is in test_queries.py.)"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from support import synth
from support.synth import FleetSpec
from support.synth_context import PILOT_TAG, TAGS

from allocscope.collector import lifespan_stats
from allocscope.collector.byte_sampling import total
from allocscope.collector.query import DuckDBEngine, run_named
from allocscope.collector.shares import Weighted, weighted_share
from allocscope.collector.store import Store

SPEC = FleetSpec(hosts=8, sites=20, snapshots=3)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    d = tmp_path_factory.mktemp("fleetctx")
    synth.populate(str(d / "store"), SPEC, str(d / "work"))
    return Store(str(d / "store"))


@pytest.fixture(scope="module")
def duck(store: Store) -> DuckDBEngine:
    return DuckDBEngine(store)


def rows(r: Any) -> list[dict[str, Any]]:
    return [dict(zip(r.columns, x, strict=True)) for x in r.rows]


def close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-9, abs=1e-9)


def test_tag_callers_combines_sums(duck: DuckDBEngine, store: Store) -> None:
    ctx = [x for x in store.read("context").to_pylist() if x["function"] == "kmem_alloc_a"]
    tag = [x for x in ctx if x["row_kind"] == "tag"]
    t = {k: sum(x[k] for x in tag) for k in ("hits", "calls", "calls_var", "bytes", "bytes_var")}
    by: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for x in ctx:
        if x["row_kind"] == "caller":
            for k in ("hits", "calls", "calls_var", "bytes", "bytes_var"):
                by[x["caller"]][k] += x[k]
    got = rows(run_named(duck, "tag-callers", {"tag": "kmem_alloc_a"}))
    assert {g["caller"] for g in got} == set(by) == {"caller_one", "caller_two"}
    # every host, both intervals: the combination really spans hosts and intervals
    assert all(g["hosts"] == SPEC.hosts and g["intervals"] == 2 * SPEC.hosts for g in got)
    for g in got:
        c = by[g["caller"]]
        rate = 4096.0
        calls = total(c["calls"], c["calls_var"], max(1.0, rate / 8))
        b = total(c["bytes"], c["bytes_var"], rate)
        for name, e in (("calls", calls), ("bytes", b)):
            assert close(g[name], e.value) and close(g[f"{name}_low"], e.low)
            assert close(g[f"{name}_high"], e.high)
        share = weighted_share(
            Weighted(int(c["hits"]), c["bytes"], c["bytes_var"]),
            Weighted(int(t["hits"]), t["bytes"], t["bytes_var"]),
        )
        assert close(g["byte_share"], share.share)
        assert close(g["byte_share_low"], share.ci_low)
        assert close(g["byte_share_high"], share.ci_high)
    # the combined interval is narrower than any one interval's (more points)
    one = [x for x in ctx if x["row_kind"] == "caller" and x["caller"] == "caller_one"][0]
    e1 = total(one["bytes"], one["bytes_var"], 4096.0)
    g1 = [g for g in got if g["caller"] == "caller_one"][0]
    assert (g1["bytes_high"] - g1["bytes_low"]) / g1["bytes"] < (e1.high - e1.low) / e1.value


def test_tag_rates_per_host_seconds(duck: DuckDBEngine, store: Store) -> None:
    ctx = [x for x in store.read("context").to_pylist() if x["row_kind"] == "tag"]
    secs: dict[str, float] = defaultdict(float)
    for h, _t, s in {(x["hostname"], x["taken_at"], x["interval_s"]) for x in ctx}:
        secs[h] += s
    want: dict[str, float] = defaultdict(float)
    for x in ctx:
        want[x["tag"]] += x["bytes"] / secs[x["hostname"]]
    got = rows(run_named(duck, "tag-rates", {}))
    assert {g["tag"]: g["bytes_per_s"] for g in got} == pytest.approx(want)
    assert [g["bytes_per_s"] for g in got] == sorted((g["bytes_per_s"] for g in got), reverse=True)
    assert all(g["bytes_per_s_low"] < g["bytes_per_s"] < g["bytes_per_s_high"] for g in got)


def test_charged_by_subsystem(duck: DuckDBEngine, store: Store) -> None:
    ctx = [x for x in store.read("context").to_pylist() if x["row_kind"] == "tag"]
    got = {g["subsystem"]: g for g in rows(run_named(duck, "charged-by-subsystem", {}))}
    for sub, g in got.items():
        mine = [x for x in ctx if x["subsystem"] == sub]
        charged = sum(x["charged_bytes"] or 0.0 for x in mine)
        assert close(g["charged_bytes"], charged)
        assert close(g["uncharged_bytes"], sum(x["bytes"] for x in mine) - charged)
        assert 0 < g["charged_share_low"] < g["charged_share"] < g["charged_share_high"] < 1


def test_pilot_vs_control_rates_finds_planted(duck: DuckDBEngine) -> None:
    got = rows(run_named(duck, "pilot-vs-control-rates", {}))
    top = got[0]
    assert top["tag"] == TAGS[PILOT_TAG].tag
    assert top["n_a"] == top["n_b"] == SPEC.hosts // 2
    assert 2.0 < top["ratio"] < 4.0 and top["welch_t"] > 3


def test_leaks_fleet(duck: DuckDBEngine, store: Store) -> None:
    got = rows(run_named(duck, "leaks-fleet", {}))
    # only caller_one keeps objects past the threshold (synth_context)
    assert [(g["tag"], g["caller"]) for g in got] == [(TAGS[0].tag, "caller_one")]
    life = [x for x in store.read("lifespan").to_pylist() if x["row_kind"] == "row"]
    last: dict[str, Any] = {}
    for x in life:
        last[x["hostname"]] = max(last.get(x["hostname"], x["taken_at"]), x["taken_at"])
    want = sum(
        x["old_bytes"]
        for x in life
        if x["taken_at"] == last[x["hostname"]] and x["caller"] == "caller_one"
    )
    assert close(got[0]["old_bytes"], want) and got[0]["hosts"] == SPEC.hosts


def test_lifespan_by_tag_quantiles(duck: DuckDBEngine, store: Store) -> None:
    life = store.read("lifespan").to_pylist()
    got = {g["tag"]: g for g in rows(run_named(duck, "lifespan-by-tag", {}))}
    assert set(got) == {t.tag for t in TAGS}
    for tag, g in got.items():
        w = [0.0] * 48
        w2 = [0.0] * 48
        for x in life:
            if x["row_kind"] == "hist" and x["tag"] == tag:
                w[x["slot"]] += x["hist_calls"]
                w2[x["slot"]] += x["hist_calls_var"]
        for q, col in ((0.5, "p50_ns"), (0.9, "p90_ns"), (0.99, "p99_ns")):
            assert close(g[col], lifespan_stats.quantile_value(w, q))
        assert close(g["n_eff"], lifespan_stats.n_eff(w, w2))
        assert close(g["freed_calls"], sum(w))  # every freed object is in one bucket


def test_uncommitted_agent_rows_are_not_counted(tmp_path: Path, store: Store) -> None:
    """An agent interval's rows count only once its hosts record exists (the commit)."""

    def rates() -> dict[str, float]:
        return {
            g["tag"]: g["bytes_per_s"]
            for g in rows(run_named(DuckDBEngine(store), "tag-rates", {}))
        }

    before = rates()
    t = store.read("context")
    path = store.part_path("context", "2026-11-29", "host00000", 1)
    for source, counted in (("agent", False), ("ingest", True)):
        col = pa.array([source] * len(t))
        store.write_part(
            "context", t.set_column(t.schema.get_field_index("source"), "source", col), path
        )
        try:
            after = rates()
        finally:
            os.unlink(path)
        assert (after != pytest.approx(before)) is counted, source
