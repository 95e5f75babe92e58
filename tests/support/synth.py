"""A synthetic fleet: deterministic allocinfo snapshots for tests and ``scripts/bench-store``.

Real fleets are not available on a laptop, and tests need data whose answers are known: this
generator plants exactly the effects the named queries look for — a pilot/control difference,
outlier hosts, sites that grow after boot, a reboot, and two kernel builds whose line numbers
differ (so the line-free ``loose_key`` matters). It is vectorized with pyarrow.compute so the
benchmark can produce 100M+ rows without numpy.
"""
# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from allocscope.collector.host import HostMetadata
from allocscope.collector.result import Result
from allocscope.collector.snapshot import SNAPSHOT_SCHEMA, SNAPSHOT_SCHEMA_VERSION
from allocscope.collector.subsystem import default_map

START = 1_795_910_400.0  # 2026-11-29 00:00:00 UTC: fixed so generated answers never move
KERNELS = ("6.12.0-fleet-a", "6.12.0-fleet-b")
_DIRS = (
    ("mm", "slub.c"),
    ("mm", "page_alloc.c"),
    ("lib", "xarray.c"),
    ("fs", "dcache.c"),
    ("fs/ext4", "extents.c"),
    ("net/core", "skbuff.c"),
    ("net/ipv4", "tcp.c"),
    ("kernel", "fork.c"),
    ("drivers/net/ethernet/intel", "e1000e.c"),
    ("block", "bio.c"),
    ("security/selinux", "avc.c"),
    ("arch/x86/kernel", "cpu.c"),
)
MB = 1 << 20


@dataclass(frozen=True, slots=True)
class FleetSpec:
    hosts: int = 12
    sites: int = 60
    snapshots: int = 6
    step: float = 3600.0
    seed: int = 1

    @property
    def rows(self) -> int:
        return self.hosts * self.sites * self.snapshots


def hostname(h: int) -> str:
    return f"host{h:05d}"


def group_of(h: int) -> str:
    return "pilot" if h % 2 == 0 else "control"


def is_outlier(h: int, i: int) -> bool:
    """Host h is an outlier on site i (20x the fleet's bytes)."""
    return h % 7 == 5 and i % 10 == 7


def grows(i: int) -> bool:
    """Site i gains 3 MB per snapshot after each boot (the "> 10 MB post-boot" sites)."""
    return i % 20 == 3


def reboots(h: int) -> bool:
    """Host h reboots half way through the series (a new boot_id; counters restart)."""
    return h % 5 == 4


def pilot_factor(i: int) -> float:
    """Pilot hosts use 1.5x the bytes of control hosts on these sites."""
    return 1.5 if i % 8 == 1 else 1.0


def _site_columns(n: int, kernel: int) -> dict[str, pa.Array]:
    sub = default_map()
    files, lines, funcs, mods, keys, loose, subs = [], [], [], [], [], [], []
    for i in range(n):
        d, f = _DIRS[i % len(_DIRS)]
        file = f"{d}/{f}"
        line = 100 + 7 * i + (3 if kernel == 1 and i % 3 == 0 else 0)  # build b moved lines
        func = f"{f.split('.')[0]}_alloc_{i}"
        mod = "e1000e" if d.startswith("drivers") else ""
        files.append(file)
        lines.append(line)
        funcs.append(func)
        mods.append(mod)
        keys.append(f"{file}:{line}" + (f" [{mod}]" if mod else ""))
        loose.append((f"[{mod}]" if mod else "") + f"{file}:{func}")
        subs.append(sub.classify(file, func))
    return {
        "file": pa.array(files),
        "line": pa.array(lines, pa.int32()),
        "module": pa.array(mods),
        "function": pa.array(funcs),
        "site_key": pa.array(keys),
        "loose_key": pa.array(loose),
        "subsystem": pa.array(subs),
    }


def host_metadata(h: int, boot: int, spec: FleetSpec) -> HostMetadata:
    half = spec.snapshots // 2
    boot_time = START - 86400.0 + (half * spec.step if boot else 0.0) + (h % 60)
    return HostMetadata(
        hostname=hostname(h),
        kernel_release=KERNELS[h % 3 == 2],
        boot_id=f"boot-{h}-{boot}",
        boot_time=boot_time,
        cpus=16,
        cpu_model="Synthetic CPU",
        memory_bytes=64 << 30,
        mem_profiling="1" if group_of(h) == "pilot" else "0",
        labels={"group": group_of(h), "rack": f"r{h % 4}"},
    )


def fleet(
    spec: FleetSpec, *, by_time: bool = False
) -> Iterator[tuple[HostMetadata, float, pa.Table]]:
    """Yield (host, taken_at, snapshot table with snapshot metadata), host by host, or with
    ``by_time`` round by round (every host's first snapshot, then every host's second...), the
    order in which a real fleet produces them. Values do not depend on the order."""
    n = spec.sites
    sites = [_site_columns(n, 0), _site_columns(n, 1)]
    # Rows in site_key order, as the store keeps them (ingest then has nothing to sort).
    order = [pc.sort_indices(s["site_key"]) for s in sites]
    base = [4096.0 * (1 + (i * 2654435761) % 997) for i in range(n)]
    growth = pa.array([3.0 * MB if grows(i) else 0.0 for i in range(n)])
    extras = pa.array(["{}"] * n)
    numa = pa.array(["[]"] * n)
    accurate = pa.array([True] * n)

    def host_base(h: int) -> pa.Array:
        pilot = group_of(h) == "pilot"
        return pa.array(
            [
                base[i] * (pilot_factor(i) if pilot else 1.0) * (20.0 if is_outlier(h, i) else 1.0)
                for i in range(n)
            ]
        )

    bases: list[Any] = []

    def seed_of(h: int, k: int) -> Any:  # pyarrow's hint says str; an int seeds it too
        return spec.seed * 1_000_003 + h * 1009 + k

    if by_time:
        bases = [host_base(h) for h in range(spec.hosts)]
        pairs = [(h, k) for k in range(spec.snapshots) for h in range(spec.hosts)]
    else:
        pairs = [(h, k) for h in range(spec.hosts) for k in range(spec.snapshots)]
    hb = pa.array([], pa.float64())
    last_h = -1
    for h, k in pairs:
        kernel = int(h % 3 == 2)
        if by_time:
            hb = bases[h]
        elif h != last_h:
            hb = host_base(h)
            last_h = h
        boot = int(reboots(h) and k >= spec.snapshots // 2)
        host = host_metadata(h, boot, spec)
        since_boot = k - (spec.snapshots // 2 if boot else 0)
        taken = START + k * spec.step + (h % 60)
        noise = pc.add(
            0.9,
            pc.multiply(0.2, pc.random(n, initializer=seed_of(h, k))),
        )
        b = pc.add(pc.multiply(hb, noise), pc.multiply(growth, float(since_boot)))
        bytes_ = pc.cast(pc.floor(b), pa.int64())
        calls = pc.cast(pc.floor(pc.divide(b, 512.0)), pa.int64())
        cols = dict(sites[kernel])
        table = pa.table(
            {
                "hostname": pa.array([host.hostname] * n),
                "boot_id": pa.array([host.boot_id] * n),
                "kernel_release": pa.array([host.kernel_release] * n),
                "taken_at": pa.array([int(taken * 1e6)] * n, pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                ),
                "uptime_s": pa.array([taken - host.boot_time] * n),
                "mem_profiling": pa.array([host.mem_profiling] * n),
                "file": cols["file"],
                "line": cols["line"],
                "module": cols["module"],
                "function": cols["function"],
                "site_key": cols["site_key"],
                "loose_key": cols["loose_key"],
                "subsystem": cols["subsystem"],
                "bytes": bytes_,
                "calls": calls,
                "accurate": accurate,
                "extras": extras,
                "numa": numa,
            },
            schema=SNAPSHOT_SCHEMA,
        )
        meta = {
            b"allocscope.schema": str(SNAPSHOT_SCHEMA_VERSION).encode(),
            b"allocscope.kind": b"allocinfo-snapshot",
            b"allocscope.host": json.dumps(host.to_dict()).encode(),
            b"allocscope.allocinfo_version": b"2.0",
            b"allocscope.source": b"synthetic",
            b"allocscope.taken_at": repr(taken).encode(),
            b"allocscope.truncated": b"0",
        }
        yield host, taken, table.take(order[kernel]).replace_schema_metadata(meta)


def write_snapshot_files(directory: str, spec: FleetSpec) -> list[str]:
    """Write the fleet as snapshot files (what agents elsewhere produce); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for host, taken, table in fleet(spec):
        path = os.path.join(directory, f"{host.hostname}-{int(taken)}.parquet")
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    return paths


def results(spec: FleetSpec) -> list[Result]:
    """who-calls and overhead results for a few hosts, taken after the last snapshot."""
    out: list[Result] = []
    last = START + (spec.snapshots - 1) * spec.step
    for h in range(min(spec.hosts, 4)):
        host = host_metadata(h, int(reboots(h)), spec)
        i = 3  # a growing site
        site_func = f"{_DIRS[i % len(_DIRS)][1].split('.')[0]}_alloc_{i}"
        callers = [
            ("shmem_add_to_page_cache", 900 - 10 * h),
            ("add_to_swap_cache", 40 + h),
            ("[other]", 60),
        ]
        total = sum(c for _, c in callers)
        out.append(
            Result(
                kind="who-calls",
                host=host,
                start=last + 600 + h,
                duration=30.0,
                settings={"site": site_func},
                payload={
                    "site": site_func,
                    "backend": "tracepoint",
                    "total_calls": total,
                    "lost": 0,
                    "callers": [
                        {
                            "caller": name,
                            "calls": c,
                            "share": c / total,
                            "ci_low": max(0.0, c / total - 0.02),
                            "ci_high": min(1.0, c / total + 0.02),
                            "bytes": c * 512,
                        }
                        for name, c in callers
                    ],
                    "folded": {f"{name};{site_func}": c for name, c in callers},
                },
            )
        )
        out.append(
            Result(
                kind="overhead",
                host=host,
                start=last + 1200 + h,
                duration=60.0,
                settings={"frequency": 999},
                payload={
                    "seconds": 60.0,
                    "functions": [
                        {
                            "function": "__alloc_pages_noprof",
                            "kind": "page",
                            "present": True,
                            "inclusive_samples": 100 + 10 * h,
                            "self_samples": 20,
                            "inclusive_share": (100 + 10 * h) / 10000,
                            "self_share": 0.002,
                            "calls": 50000,
                            "calls_per_second": 50000 / 60.0,
                            "ns_per_call": (100 + 10 * h) * 1e6 / 50000,
                            "future_field": [1, 2],
                        },
                        {
                            "function": "__alloc_pages",
                            "kind": "page",
                            "present": False,
                            "inclusive_samples": 0,
                            "self_samples": 0,
                            "inclusive_share": None,
                            "self_share": None,
                            "calls": None,
                            "calls_per_second": None,
                            "ns_per_call": None,
                        },
                    ],
                },
            )
        )
    from support.synth_context import context_result, lifespan_result

    # two agent-like intervals of context and lifespan per host (at most 16 hosts: the
    # fleet benchmark generates 1,000)
    for h in range(min(spec.hosts, 16)):
        host = host_metadata(h, int(reboots(h)), spec)
        for k in range(2):
            t = last + 1800 + 300 * k + h
            out.append(context_result(h, host, t, 60.0))
            out.append(lifespan_result(h, host, t + 60, 60.0))
    return out


def populate(store_root: str, spec: FleetSpec, workdir: str) -> dict[str, int]:
    """A store holding the whole synthetic fleet and its results (tests, demos)."""
    from allocscope.collector.ingest import ingest
    from allocscope.collector.store import Store

    paths = write_snapshot_files(os.path.join(workdir, "snapshots"), spec)
    rdir = os.path.join(workdir, "results")
    os.makedirs(rdir, exist_ok=True)
    for n, r in enumerate(results(spec)):
        p = os.path.join(rdir, f"{r.kind}-{n}.json")
        r.write(p)
        paths.append(p)
    rep = ingest(Store(store_root), paths)
    if rep.skipped:
        raise RuntimeError(f"synthetic data did not ingest: {rep.skipped[0][1]}")
    return {"rows": rep.rows, "files": len(rep.imported)}
