"""Named queries: what each finds in a fleet with planted effects, and the same answers on
DuckDB and Spark SQL over the same files."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need
from support import synth
from support.synth import FleetSpec

from allocscope.collector.query import (
    DuckDBEngine,
    QueryError,
    QueryResult,
    SparkEngine,
    bind,
    named_queries,
    run_named,
    run_sql,
    spark_session,
)
from allocscope.collector.store import Store

SPEC = FleetSpec(hosts=12, sites=60, snapshots=6)
PARAMS: dict[str, dict[str, str]] = {
    "site-change": {"from": "2026-11-29T01:00:00", "to": "2026-11-29T05:00:00"},
    "tag-callers": {"tag": "kmem_alloc_a"},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    d = tmp_path_factory.mktemp("fleet")
    synth.populate(str(d / "store"), SPEC, str(d / "work"))
    return Store(str(d / "store"))


@pytest.fixture(scope="module")
def duck(store: Store) -> Iterator[DuckDBEngine]:
    e = DuckDBEngine(store)
    yield e
    e.close()


@pytest.fixture(scope="module")
def spark(store: Store) -> Iterator[SparkEngine]:
    has_pyspark = importlib.util.find_spec("pyspark") is not None
    need(has_pyspark, "pyspark not installed (pip install '.[spark]')")
    need(
        shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME")),
        "no JDK (apt-get install openjdk-17-jre-headless)",
    )
    session = spark_session("allocscope-tests")
    e = SparkEngine(store, session)
    yield e
    session.stop()


def latest_rows(store: Store) -> dict[str, dict[str, int]]:
    """(hostname -> {loose_key: bytes}) at each host's latest snapshot, computed in Python."""
    ai = store.read("allocinfo", ["hostname", "taken_at", "loose_key", "bytes"]).to_pylist()
    last: dict[str, Any] = {}
    for r in ai:
        last[r["hostname"]] = max(last.get(r["hostname"], r["taken_at"]), r["taken_at"])
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in ai:
        if r["taken_at"] == last[r["hostname"]]:
            out[r["hostname"]][r["loose_key"]] += r["bytes"]
    return out


def test_every_named_query_is_covered() -> None:
    assert set(named_queries()) == {
        "top-sites",
        "subsystem-trend",
        "site-change",
        "outlier-hosts",
        "pilot-vs-control",
        "post-boot-growth",
        "callers-join",
        "overhead-join",
        "tag-callers",
        "tag-rates",
        "charged-by-subsystem",
        "pilot-vs-control-rates",
        "leaks-fleet",
        "lifespan-by-tag",
    }


def test_top_sites(duck: DuckDBEngine, store: Store) -> None:
    r = run_named(duck, "top-sites", {"limit": "7"})
    cur = latest_rows(store)
    totals: dict[str, int] = defaultdict(int)
    for sites in cur.values():
        for k, b in sites.items():
            totals[k] += b
    want = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:7]
    assert [(row[0], row[3]) for row in r.rows] == want
    assert all(row[2] == SPEC.hosts for row in r.rows)


def test_top_sites_label(duck: DuckDBEngine) -> None:
    r = run_named(duck, "top-sites", {"label": "group=pilot"})
    assert {row[2] for row in r.rows} == {SPEC.hosts // 2}


def test_outlier_hosts_finds_planted(duck: DuckDBEngine) -> None:
    # planted outliers are 20x the fleet (z in the hundreds); uniform noise on 12 hosts can
    # reach z ~ 4, so look above that
    r = run_named(duck, "outlier-hosts", {"min_bytes": "0", "z": "10"})
    # growing sites are legitimately "outliers" on rebooted hosts (their counters restarted)
    found = {(row[1], row[0]) for row in r.rows if not synth.grows(int(row[0].rsplit("_")[-1]))}
    rebooted = {(row[1], row[0]) for row in r.rows} - found
    assert {h for h, _ in rebooted} <= {
        synth.hostname(h) for h in range(SPEC.hosts) if synth.reboots(h)
    }
    planted = set()
    for h in range(SPEC.hosts):
        for i in range(SPEC.sites):
            if synth.is_outlier(h, i):
                d, f = synth._DIRS[i % len(synth._DIRS)]
                mod = "[e1000e]" if d.startswith("drivers") else ""
                planted.add((synth.hostname(h), f"{mod}{d}/{f}:{f.split('.')[0]}_alloc_{i}"))
    assert planted and found == planted
    assert all(abs(row[-1]) >= 10 for row in r.rows)


def test_pilot_vs_control(duck: DuckDBEngine) -> None:
    r = run_named(duck, "pilot-vs-control", {"limit": "100"})
    cols = r.columns
    by_site = {row[0]: dict(zip(cols, row, strict=True)) for row in r.rows}
    for site, row in by_site.items():
        i = int(site.rsplit("_", 1)[1])
        assert row["n_a"] == row["n_b"] == SPEC.hosts // 2
        if synth.pilot_factor(i) > 1 and not synth.grows(i) and i % 10 != 7:
            assert 1.3 < row["ratio"] < 1.7, (site, row)
            assert row["welch_t"] > 3
        elif synth.pilot_factor(i) == 1 and not synth.grows(i) and i % 10 != 7:
            assert 0.8 < row["ratio"] < 1.25, (site, row)
    top = r.rows[0]
    assert synth.pilot_factor(int(top[0].rsplit("_", 1)[1])) > 1


def test_post_boot_growth(duck: DuckDBEngine) -> None:
    r = run_named(duck, "post-boot-growth", {"limit": "1000"})
    assert r.rows
    hosts = set()
    for row in r.rows:
        i = int(row[1].rsplit("_", 1)[1])
        assert synth.grows(i) and row[6] >= 10 << 20
        hosts.add(row[0])
    # rebooted hosts are measured from their new boot: 2 snapshots x 3 MB < 10 MB
    assert not {synth.hostname(h) for h in range(SPEC.hosts) if synth.reboots(h)} & hosts
    assert hosts == {synth.hostname(h) for h in range(SPEC.hosts) if not synth.reboots(h)}


def test_site_change(duck: DuckDBEngine) -> None:
    r = run_named(duck, "site-change", PARAMS["site-change"] | {"limit": "3"})
    for row in r.rows:
        assert row[4] == row[3] - row[2]
        assert synth.grows(int(row[0].rsplit("_", 1)[1]))
    assert r.rows[0][5] == SPEC.hosts


def test_subsystem_trend_one_host(duck: DuckDBEngine, store: Store) -> None:
    r = run_named(duck, "subsystem-trend", {"host": "host00001"})
    ai = store.read("allocinfo", ["hostname", "taken_at", "subsystem", "bytes"]).to_pylist()
    want: dict[tuple[Any, str], int] = defaultdict(int)
    for x in ai:
        if x["hostname"] == "host00001":
            want[(x["taken_at"].replace(minute=0, second=0, microsecond=0), x["subsystem"])] += x[
                "bytes"
            ]
    got = {(row[0], row[1]): row[4] for row in r.rows}
    assert got == pytest.approx(dict(want))
    assert {row[2] for row in r.rows} == {1}


def test_callers_join(duck: DuckDBEngine, store: Store) -> None:
    r = run_named(duck, "callers-join")
    assert len(r.rows) == store.read("callers").num_rows
    for row in r.rows:
        d = dict(zip(r.columns, row, strict=True))
        assert d["site_bytes"] and d["est_bytes"] == pytest.approx(d["share"] * d["site_bytes"])
    # site_bytes is the site's bytes in the host's last snapshot before the capture
    cur = latest_rows(store)
    first = dict(zip(r.columns, r.rows[0], strict=True))
    mine = [b for k, b in cur[first["hostname"]].items() if k.endswith(":" + first["site"])]
    assert first["site_bytes"] == sum(mine)


def test_overhead_join(duck: DuckDBEngine, store: Store) -> None:
    r = run_named(duck, "overhead-join")
    d = [dict(zip(r.columns, row, strict=True)) for row in r.rows]
    assert {x["function"] for x in d} == {"__alloc_pages_noprof"}  # absent ones left out
    totals = {x["hostname"]: x for x in store.read("hosts").to_pylist()}
    for x in d:
        assert x["grp"] == synth.group_of(int(x["hostname"][4:]))
        assert (
            x["allocinfo_bytes"] == totals[x["hostname"]]["total_bytes"] or x["allocinfo_bytes"] > 0
        )


def test_params_are_checked_and_quoted(duck: DuckDBEngine) -> None:
    q = named_queries()["site-change"]
    with pytest.raises(QueryError, match="needs --param from"):
        bind(q, {})
    with pytest.raises(QueryError, match="no parameter 'nope'"):
        bind(q, {"from": "0", "to": "1", "nope": "x"})
    with pytest.raises(QueryError, match="not a time"):
        bind(q, {"from": "yesterday", "to": "1"})
    # a hostile value is a literal, not SQL
    r = run_named(duck, "top-sites", {"label": "group=x' OR '1'='1"})
    assert r.rows == []


def test_raw_sql(duck: DuckDBEngine) -> None:
    r = run_sql(duck, "SELECT COUNT(*) AS n FROM {allocinfo}")
    assert r.rows == [(SPEC.rows,)]
    with pytest.raises(QueryError, match="duckdb"):
        run_sql(duck, "SELECT nope FROM {hosts}")


def test_empty_store(tmp_path: Path) -> None:
    e = DuckDBEngine(Store(str(tmp_path)))
    for name in named_queries():
        assert run_named(e, name, PARAMS.get(name, {})).rows == []


def test_cli_formats(store: Store, cli: Any) -> None:
    rc, out, _ = cli("query", "--list")
    assert rc == 0 and "pilot-vs-control" in out and "--param from=<timestamp>" in out
    rc, out, _ = cli("query", "--store", store.root, "top-sites", "--param", "limit=3", "--csv")
    assert rc == 0 and out.splitlines()[0] == "site,subsystem,hosts,bytes,calls,max_site_bytes"
    assert len(out.splitlines()) == 4
    rc, out, _ = cli("query", "--store", store.root, "top-sites", "--json")
    import json

    doc = json.loads(out)
    assert doc["engine"] == "duckdb" and len(doc["rows"]) == 20
    rc, out, err = cli("query", "--store", store.root, "top-sites", "--param", "limit=x")
    assert rc == 2 and "--param limit" in err


def _same(a: QueryResult, b: QueryResult) -> None:
    assert a.columns == b.columns
    assert len(a.rows) == len(b.rows)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (a.columns, ra, rb)
            else:
                assert x == y, (a.columns, ra, rb)


@pytest.mark.spark
@pytest.mark.parametrize("name", sorted(named_queries()))
def test_same_answer_on_spark(name: str, duck: DuckDBEngine, spark: SparkEngine) -> None:
    params = PARAMS.get(name, {})
    a = run_named(duck, name, params)
    b = run_named(spark, name, params)
    assert a.rows, f"{name} returned nothing: the comparison would be empty"
    _same(a, b)


@pytest.mark.spark
def test_same_answer_on_spark_with_label_and_raw_sql(
    duck: DuckDBEngine, spark: SparkEngine
) -> None:
    for name, params in (
        ("subsystem-trend", {"label": "group=control", "bucket": "day"}),
        ("top-sites", {"label": "rack=r1", "limit": "5"}),
    ):
        _same(run_named(duck, name, params), run_named(spark, name, params))
    sql = (
        "SELECT subsystem, COUNT(*) AS n, SUM(bytes) AS b FROM {allocinfo} "
        "GROUP BY subsystem ORDER BY subsystem"
    )
    # raw SQL on Spark cannot be confined to the store: it needs the explicit opt-in
    with pytest.raises(QueryError, match="--unrestricted-sql"):
        run_sql(spark, sql)
    _same(
        run_sql(duck, sql), run_sql(SparkEngine(spark.store, spark.spark, unrestricted=True), sql)
    )
    hostile = {"label": "group=it's \\ odd"}
    assert (
        run_named(spark, "top-sites", hostile).rows
        == run_named(duck, "top-sites", hostile).rows
        == []
    )
