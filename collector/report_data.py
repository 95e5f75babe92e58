"""Everything ``allocscope report`` shows, gathered as plain data for the HTML page.

Inputs combine freely: saved allocinfo files (``--file``; text or snapshot Parquet), a fleet
store (``--store``; Parquet under ``<store>/allocinfo/dt=*/``), and result files
(``--result``; who-calls, overhead, ab...). Allocinfo inputs of both kinds become one DuckDB
relation with the snapshot schema, so one set of SQL queries serves one host and a fleet of
thousands; the queries aggregate in DuckDB and only chart-sized answers (tens of hosts, top-N
sites, a few dozen time buckets) come back to Python.

Saved files become Arrow tables in collector/report_inputs.py; the store is read through the
one store relation (collector/store_read.py), so a damaged part is named here as in query.
This module is :func:`gather` and the allocinfo SQL (hosts, breakdowns, trend, changes,
pilot/control groups); the dataclasses it fills are collector/report_model.py's, and the
store's other datasets are read by report_store.py (hosts labels, callers, overhead) and
report_fleet.py (context, lifespan).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from allocscope.collector.allocinfo import AllocRecord
from allocscope.collector.containers import CONTAINER_FUNCTIONS, counted_once
from allocscope.collector.flame_diff import compare_results
from allocscope.collector.report_inputs import COLUMNS, load_files
from allocscope.collector.report_model import (
    CONTROL,
    GROUP_LABEL,
    OTHER_SUBSYSTEMS,
    PILOT,
    Breakdown,
    ChangeRow,
    GroupCompare,
    GroupRow,
    HostRow,
    ReportData,
    ResultEntry,
    SiteRow,
)
from allocscope.collector.report_store import store_labels, store_results
from allocscope.collector.result import read_result
from allocscope.collector.site import Site
from allocscope.collector.store_read import (
    NO_SNAPSHOTS,
    damaged_part,
    fetch,
    open_store,
    reading,
    relation_sql,
)
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.errors import AllocscopeError, InputError

__all__ = ["gather"]


def _top_subsystems(totals: list[tuple[str, int]], k: int) -> list[str]:
    names = [s for s, _ in totals]
    return names[:k] + ([OTHER_SUBSYSTEMS] if len(names) > k else [])


def _fold(
    rows: list[tuple[Any, str, float]], columns: list[Any], keep: list[str]
) -> dict[str, list[float]]:
    """(column, subsystem, bytes) rows -> subsystem -> value per column, rest folded."""
    index = {c: i for i, c in enumerate(columns)}
    keepset = set(keep)
    values = {s: [0.0] * len(columns) for s in keep}
    for col, sub, b in rows:
        if col not in index:
            continue
        name = sub if sub in keepset else OTHER_SUBSYSTEMS
        if name not in values:
            values[name] = [0.0] * len(columns)
        values[name][index[col]] += float(b)
    return values


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def gather(
    *,
    title: str,
    files: list[str] | None = None,
    store: str | None = None,
    results: list[str] | None = None,
    diff: Sequence[str] | None = None,
    diff_tag: str | None = None,
    top_n: int = 20,
    max_bars: int = 40,
    max_subsystems: int = 9,
    subsystems: SubsystemMap | None = None,
) -> ReportData:
    """Read every input and compute what the report shows."""
    import duckdb

    data = ReportData(title=title, generated_at=time.time())
    for path in results or []:
        data.results.append(ResultEntry(path, read_result(path)))
        data.sources.append(f"result {path}")
    if diff:
        if len(diff) != 2:
            raise AllocscopeError(f"--diff takes two result files, got {len(diff)}")
        (pa_, ra), (pb_, rb) = ((p, read_result(p)) for p in diff)
        data.diffs.append(compare_results((pa_, ra), (pb_, rb), top_n=top_n, key=diff_tag))
        for path, res in ((pa_, ra), (pb_, rb)):
            if path not in (results or []):
                data.results.append(ResultEntry(path, res))
                data.sources.append(f"result {path} (--diff)")
    if not files and not store:
        return data

    con = duckdb.connect()
    parts: list[str] = []
    labels: dict[str, dict[str, str]] = {}
    names: dict[tuple[str, int], str] = {}
    slab_objects: dict[tuple[str, int], int] = {}  # (host, snapshot ms) -> slabinfo objects
    cols = ", ".join(COLUMNS)
    st = open_store(store) if store else None
    store_rows = False
    if st is not None:
        with reading(st, "reading results from store"):
            store_results(con, data, st, top_n)
        store_rows = bool(st.files("allocinfo"))
        fleet = data.fleet_context or data.fleet_lifespan
        if not store_rows and not (data.fleet_callers or data.fleet_overhead or fleet):
            raise InputError(st.root, None, NO_SNAPSHOTS)
        if not store_rows:
            data.sources.append(f"store {store} (results only)")
    if st is not None and store_rows:
        src = relation_sql(st, "allocinfo")
        if st.files("hosts"):
            # The hosts row is a snapshot's commit record (collector/store.py): allocinfo rows
            # without one belong to a write that crashed half way and are not shown.
            # One read of the (small: a row per snapshot) hosts dataset serves both the commit
            # check and the labels.
            with reading(st):
                con.execute(
                    f"CREATE TEMP TABLE hosts_t AS SELECT * FROM {relation_sql(st, 'hosts')}"
                )
            con.execute(
                "CREATE TEMP TABLE committed AS SELECT DISTINCT hostname, taken_at FROM hosts_t"
            )
            slab_objects.update(_recorded_slab_objects(con))
            parts.append(
                f"SELECT {', '.join('s.' + c for c in COLUMNS)} FROM {src} s "
                "SEMI JOIN committed h ON s.hostname = h.hostname AND s.taken_at = h.taken_at"
            )
        else:
            parts.append(f"SELECT {cols} FROM {src}")
        with reading(st):
            labels.update(store_labels(con, st))
        data.sources.append(f"store {store}")
    if not parts and not files:
        return data
    if files:
        table, file_labels, names = load_files(files, subsystems or default_map(), slab_objects)
        con.register("file_rows", table)
        parts.append(f"SELECT {cols} FROM file_rows")
        labels.update(file_labels)
        data.sources.extend(f"allocinfo {p}" for p in files)
    try:
        # Snapshot time in whole ms, truncated (epoch_ms() rounds): the join key everywhere.
        con.execute("CREATE TEMP MACRO snap_ms(ts) AS epoch_us(ts) // 1000")
        con.execute("CREATE TEMP VIEW a AS " + " UNION ALL ".join(parts))
        _compute(con, data, labels, names, top_n, max_bars, max_subsystems)
        _counted(con, data, slab_objects)
    except duckdb.Error as e:
        hit = damaged_part(st, e) if st is not None else None
        if hit is not None:
            raise hit from None
        raise AllocscopeError(
            f"reading the allocinfo data failed: {str(e).splitlines()[0]}"
        ) from None
    return data


def _recorded_slab_objects(con: Any) -> dict[tuple[str, int], int]:
    """(host, snapshot ms) -> slab object bytes from the hosts rows that know them (store
    schema 2: pages minus overhead; an overhead of 0 may be clamped, and gives 0 again)."""
    have = {r[0] for r in fetch(con, "SELECT column_name FROM (DESCRIBE hosts_t)")}
    if not {"slab_page_bytes", "slab_overhead_bytes"} <= have:
        return {}  # every part predates the columns
    return {
        (h, int(ms)): int(objects)
        for h, ms, objects in fetch(
            con,
            """
        SELECT hostname, epoch_us(taken_at) // 1000, slab_page_bytes - slab_overhead_bytes
        FROM hosts_t WHERE slab_overhead_bytes IS NOT NULL AND slab_page_bytes IS NOT NULL""",
        )
    }


def _counted(con: Any, data: ReportData, slab_objects: dict[tuple[str, int], int]) -> None:
    """Each host's latest snapshot counted once (collector/containers.py decides which tags
    are containers; SQL only picks the few rows whose function may be one)."""
    if not data.hosts:
        return
    like = " OR ".join("function LIKE ?" for _ in CONTAINER_FUNCTIONS)
    found: dict[str, list[AllocRecord]] = {}
    for h, file, line, function, nbytes, calls in fetch(
        con,
        f"SELECT hostname, file, line, function, bytes, calls FROM latest WHERE {like}",
        [f"%{fn}%" for fn in CONTAINER_FUNCTIONS],
    ):
        site = Site(file or "", int(line or 0), function or "")
        found.setdefault(h, []).append(AllocRecord(site, int(nbytes or 0), int(calls or 0)))
    for host in data.hosts:
        recs = found.get(host.hostname, [])
        rest = (host.bytes - sum(r.bytes for r in recs), host.calls - sum(r.calls for r in recs))
        slab = slab_objects.get((host.hostname, round(host.last_t * 1000)))
        host.counted = counted_once(recs, slab_objects_bytes=slab, others=rest)


def _compute(
    con: Any,
    data: ReportData,
    labels: dict[str, dict[str, str]],
    names: dict[tuple[str, int], str],
    top_n: int,
    max_bars: int,
    max_subsystems: int,
) -> None:
    con.execute("""
        CREATE TEMP TABLE snap_sub AS
        SELECT hostname, snap_ms(taken_at) AS t, subsystem, any_value(boot_id) AS boot_id,
               any_value(kernel_release) AS kr, any_value(mem_profiling) AS mp,
               sum(bytes) AS b, sum(calls) AS c, count(*) AS n
        FROM a GROUP BY hostname, t, subsystem""")
    # Per snapshot totals; trends and per-snapshot bars read snap_sub, not the raw rows.
    con.execute("""
        CREATE TEMP TABLE snaps AS
        SELECT hostname, t, any_value(boot_id) AS boot_id, any_value(kr) AS kr,
               any_value(mp) AS mp, sum(b) AS b, sum(c) AS c, sum(n) AS n
        FROM snap_sub GROUP BY hostname, t""")
    con.execute("""
        CREATE TEMP TABLE latest AS
        SELECT a.* FROM a JOIN (SELECT hostname, max(t) AS t FROM snaps GROUP BY hostname) l
          ON a.hostname = l.hostname AND snap_ms(a.taken_at) = l.t""")
    for h, n, t0, t1, kr, mp, b, c, sites in fetch(
        con,
        """
        SELECT s.hostname, count(*), min(s.t), max(s.t),
               arg_max(s.kr, s.t), arg_max(s.mp, s.t), arg_max(s.b, s.t), arg_max(s.c, s.t),
               arg_max(s.n, s.t)
        FROM snaps s GROUP BY s.hostname ORDER BY s.hostname""",
    ):
        data.hosts.append(
            HostRow(
                h,
                labels.get(h, {}),
                kr or "",
                mp,
                int(n),
                t0 / 1000,
                t1 / 1000,
                int(b),
                int(c),
                int(sites),
            )
        )
    if not data.hosts:
        return
    data.subsystem_totals = [
        (s, int(b))
        for s, b in fetch(
            con,
            """
        SELECT subsystem, sum(bytes) AS b FROM latest GROUP BY subsystem ORDER BY b DESC,
        subsystem""",
        )
    ]
    keep = _top_subsystems(data.subsystem_totals, max_subsystems)
    keep_real = [s for s in keep if s != OTHER_SUBSYSTEMS]
    _bars(con, data, keep_real, max_bars, names)
    _trend(con, data, keep_real)
    data.top_sites = [
        SiteRow(*r)
        for r in fetch(
            con,
            """
        SELECT site_key, any_value(function), any_value(module), any_value(subsystem),
               sum(bytes) AS b, sum(calls), count(DISTINCT hostname)
        FROM latest GROUP BY site_key ORDER BY b DESC, site_key LIMIT ?""",
            [top_n],
        )
    ]
    _changes(con, data, top_n)
    _groups(con, data, top_n)


def _bars(
    con: Any, data: ReportData, keep: list[str], max_bars: int, names: dict[tuple[str, int], str]
) -> None:
    if len(data.hosts) == 1:
        host = data.hosts[0].hostname
        times = [
            t
            for (t,) in fetch(
                con,
                "SELECT t FROM snaps WHERE hostname = ? ORDER BY t DESC LIMIT ?",
                [host, max_bars],
            )
        ][::-1]
        rows = fetch(
            con,
            "SELECT t, subsystem, sum(b) FROM snap_sub WHERE hostname = ? AND t >= ? GROUP BY ALL",
            [host, times[0]],
        )
        data.bars_kind = "snapshot"
        labels = [names.get((host, t)) or _stamp(t / 1000) for t in times]
        if len(set(labels)) < len(labels):
            labels = [f"#{i + 1} " + lab for i, lab in enumerate(labels)]
        data.bars = Breakdown(labels, [t / 1000 for t in times], keep, _fold(rows, times, keep))
        if len(times) == 1:
            data.bars.columns = [host]
        return
    hosts = sorted(data.hosts, key=lambda h: -h.bytes)[:max_bars]
    # Group pilot/control hosts together, then by name, so the bars read as groups.
    hosts.sort(key=lambda h: (h.labels.get(GROUP_LABEL, "~"), h.hostname))
    hostnames = [h.hostname for h in hosts]
    con.execute("CREATE TEMP TABLE bar_hosts (hostname VARCHAR)")
    con.executemany("INSERT INTO bar_hosts VALUES (?)", [[n] for n in hostnames])
    rows = fetch(
        con,
        "SELECT hostname, subsystem, sum(bytes) FROM latest "
        "WHERE hostname IN (SELECT hostname FROM bar_hosts) GROUP BY ALL",
    )
    data.bars_kind = "host"
    cols = [
        f"{n} ({h.labels[GROUP_LABEL]})" if GROUP_LABEL in h.labels else n
        for n, h in zip(hostnames, hosts, strict=True)
    ]
    note = ""
    if len(data.hosts) > max_bars:
        note = f"the {max_bars} hosts with the most bytes of {len(data.hosts)}"
    data.bars = Breakdown(cols, [h.last_t for h in hosts], keep, _fold(rows, hostnames, keep), note)


def _trend(con: Any, data: ReportData, keep: list[str], max_points: int = 60) -> None:
    """Bytes per subsystem at up to ``max_points`` instants, each host's last value carried.

    Hosts snapshot at their own (jittered) times, so averaging "the hosts that happened to
    report in this bucket" makes a sawtooth out of a flat fleet. Instead, at each instant every
    host contributes its latest snapshot at or before it (an ASOF join), unless that is older
    than two collection intervals (a host that stopped reporting drops out).
    """
    t0, t1, distinct = fetch(con, "SELECT min(t), max(t), count(DISTINCT t) FROM snaps")[0]
    if distinct < 2:
        return
    (gap,) = fetch(
        con,
        """
        SELECT coalesce(median(gap), 0) FROM (
          SELECT t - lag(t) OVER (PARTITION BY hostname ORDER BY t) AS gap FROM snaps)
        WHERE gap > 0""",
    )[0]
    span = t1 - t0
    width = max(1, -(-(span + 1) // max_points), int(gap or 0))
    count = max(1, -(-(span + 1) // width))
    ends = [min(t0 + (k + 1) * width - 1, t1) for k in range(count)]
    ends[-1] = t1
    con.execute("CREATE TEMP TABLE tpoints (bk INTEGER, e BIGINT)")
    con.executemany("INSERT INTO tpoints VALUES (?, ?)", [[k, e] for k, e in enumerate(ends)])
    con.execute(
        """
        CREATE TEMP TABLE pick AS
        WITH hb AS (SELECT p.bk, p.e, h.hostname FROM tpoints p,
                    (SELECT DISTINCT hostname FROM snaps) h)
        SELECT hb.bk, hb.hostname, s.t FROM hb ASOF JOIN snaps s
          ON hb.hostname = s.hostname AND hb.e >= s.t
        WHERE s.t >= hb.e - ?""",
        [2 * width],
    )
    per_point = {
        bk: (int(n), tm / 1000)
        for bk, n, tm in fetch(con, "SELECT bk, count(*), max(t) FROM pick GROUP BY bk ORDER BY bk")
    }
    rows = fetch(
        con,
        """
        SELECT p.bk, s.subsystem, sum(s.b) FROM snap_sub s
        JOIN pick p ON s.hostname = p.hostname AND s.t = p.t
        GROUP BY ALL""",
    )
    points = sorted(per_point)
    if len(points) < 2:
        return
    values = _fold(rows, points, keep)
    for vals in values.values():
        for i, bk in enumerate(points):
            vals[i] /= per_point[bk][0]
    multi = len(data.hosts) > 1
    note = (
        "mean bytes per host; each host's latest snapshot at each instant"
        if multi
        else "bytes per snapshot"
    )
    data.trend = Breakdown(
        [_stamp(per_point[b][1]) for b in points],
        [per_point[b][1] for b in points],
        list(values),
        values,
        note,
    )


def _changes(con: Any, data: ReportData, top_n: int) -> None:
    """First vs last snapshot of every host that has two or more, summed over those hosts.

    Sites are matched by their line-free key so a kernel update between the two snapshots
    does not turn every site into a removal plus an addition.
    """
    con.execute(
        "CREATE TEMP TABLE fl AS SELECT hostname, min(t) AS t0, max(t) AS t1, "
        "arg_min(boot_id, t) AS b0, arg_max(boot_id, t) AS b1 FROM snaps "
        "GROUP BY hostname HAVING count(*) >= 2"
    )
    n, rebooted = fetch(con, "SELECT count(*), count(*) FILTER (WHERE b0 <> b1) FROM fl")[0]
    data.change_hosts = int(n)
    if not n:
        return
    if rebooted:
        data.notes.append(
            f"{rebooted} host(s) rebooted between their first and last snapshot: "
            "allocinfo counters restart at boot, so their changes include that."
        )
    data.top_changes = [
        ChangeRow(*r)
        for r in fetch(
            con,
            """
        WITH s AS (
            SELECT a.loose_key, snap_ms(a.taken_at) = fl.t1 AS is_last, a.site_key,
                   a.function, a.module, a.subsystem, a.bytes, a.calls
            FROM a JOIN fl ON a.hostname = fl.hostname
             AND (snap_ms(a.taken_at) = fl.t0 OR snap_ms(a.taken_at) = fl.t1))
        SELECT coalesce(arg_max(site_key, is_last::INT), any_value(site_key)),
               any_value(function), any_value(module), any_value(subsystem),
               coalesce(sum(bytes) FILTER (WHERE NOT is_last), 0) AS fb,
               coalesce(sum(bytes) FILTER (WHERE is_last), 0) AS lb,
               coalesce(sum(calls) FILTER (WHERE NOT is_last), 0),
               coalesce(sum(calls) FILTER (WHERE is_last), 0)
        FROM s GROUP BY loose_key
        HAVING lb <> fb
        ORDER BY abs(lb - fb) DESC, loose_key LIMIT ?""",
            [top_n],
        )
    ]


def _groups(con: Any, data: ReportData, top_n: int) -> None:
    groups = {h.hostname: h.labels.get(GROUP_LABEL, "").lower() for h in data.hosts}
    pilot = sorted(h for h, g in groups.items() if g == PILOT)
    control = sorted(h for h, g in groups.items() if g == CONTROL)
    if not pilot or not control:
        return
    con.execute("CREATE TEMP TABLE grp (hostname VARCHAR, g VARCHAR)")
    con.executemany(
        "INSERT INTO grp VALUES (?, ?)",
        [[h, PILOT] for h in pilot] + [[h, CONTROL] for h in control],
    )
    mp: dict[str, dict[str, int]] = {PILOT: {}, CONTROL: {}}
    for h in data.hosts:
        g = groups[h.hostname]
        if g in mp:
            key = h.mem_profiling if h.mem_profiling is not None else "absent"
            mp[g][key] = mp[g].get(key, 0) + 1

    def stats(key: str) -> list[GroupRow]:
        """Per-host bytes by ``key``, zero for hosts without it, then median/mean per group."""
        rows = fetch(
            con,
            f"""
            WITH per AS (
                SELECT hostname, {key} AS name, sum(bytes) AS b,
                       any_value(site_key) AS label, any_value(subsystem) AS sub
                FROM latest JOIN grp USING (hostname) GROUP BY hostname, name),
            names AS (SELECT name, any_value(label) AS label, any_value(sub) AS sub
                      FROM per GROUP BY name),
            filled AS (
                SELECT grp.g, n.name, n.label, n.sub, coalesce(per.b, 0) AS b
                FROM grp CROSS JOIN names n
                LEFT JOIN per ON per.hostname = grp.hostname AND per.name = n.name)
            SELECT name, any_value(label), any_value(sub),
                   median(b) FILTER (WHERE g = '{PILOT}'), median(b) FILTER (WHERE g = '{CONTROL}'),
                   avg(b) FILTER (WHERE g = '{PILOT}'), avg(b) FILTER (WHERE g = '{CONTROL}')
            FROM filled GROUP BY name""",
        )
        return [
            GroupRow(str(n), float(pm), float(cm), float(pa), float(ca), str(sub), str(lab))
            for n, lab, sub, pm, cm, pa, ca in rows
        ]

    total = stats("'total'")[0]
    total.subsystem = total.label = ""
    subs = sorted(stats("subsystem"), key=lambda r: -(r.pilot_median + r.control_median))
    sites = sorted(
        stats("loose_key"), key=lambda r: (-abs(r.pilot_median - r.control_median), r.name)
    )[:top_n]
    data.groups = GroupCompare(pilot, control, mp, total, subs, sites)
