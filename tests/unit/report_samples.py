"""Inputs for the report tests: who-calls/overhead results, fleet stores, PNG decoding.

Results are built with the real contracts (``Result``; the overhead payload through
``collector.overhead_payload.window_payload``) so the report is tested against the shapes the verbs
write. Stores are written with the real ``collector.store.Store`` from the synthetic fleet.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from allocscope.collector.host import HostMetadata
from allocscope.collector.result import Result

HOST = HostMetadata(
    hostname="testhost",
    kernel_release="6.12.0-test",
    boot_id="b1",
    boot_time=1_700_000_000.0,
    cpus=4,
    cpu_model="Test CPU",
    memory_bytes=8 << 30,
    mem_profiling="1",
    labels={"group": "pilot"},
)

# Root first, caller chain, then the site (the who-calls --folded order).
SHMEM = (
    "entry_SYSCALL_64_after_hwframe;do_syscall_64;ksys_write;vfs_write;"
    "shmem_file_write_iter;generic_perform_write;shmem_write_begin;shmem_get_folio_gfp;"
    "shmem_alloc_and_add_folio;shmem_add_to_page_cache;xas_store;xas_create;xas_alloc"
)
SWAP = (
    "ret_from_fork_asm;ret_from_fork;kthread;kswapd;balance_pgdat;shrink_node;"
    "shrink_folio_list;add_to_swap;add_to_swap_cache;xas_store;xas_create;xas_alloc"
)
EVIL = "evil<script>alert(1)</script>&co"


def who_calls_payload(evil: bool = False) -> dict[str, Any]:
    folded = {SHMEM: 900, SWAP: 40, "ret_from_fork;kthread;xa_insert;xas_alloc": 60}
    callers = [
        {
            "site": "xas_alloc",
            "caller": "shmem_add_to_page_cache",
            "calls": 9000,
            "samples": 900,
            "share": 0.9,
            "ci_low": 0.88,
            "ci_high": 0.92,
            "bytes": 5_242_880,
        },
        {
            "site": "xas_alloc",
            "caller": "add_to_swap_cache",
            "calls": 400,
            "samples": 40,
            "share": 0.04,
            "ci_low": 0.03,
            "ci_high": 0.054,
            "bytes": 233_016,
        },
    ]
    other = [
        {
            "site": "xas_alloc",
            "caller": "other",
            "callers": 1,
            "calls": 600,
            "samples": 60,
            "share": 0.06,
            "ci_low": 0.047,
            "ci_high": 0.077,
            "bytes": 349_524,
        }
    ]
    if evil:
        folded[f"{EVIL};0xffffffff81234567;xas_alloc"] = 5
        callers.append(
            {
                "site": "xas_alloc",
                "caller": EVIL,
                "calls": 1,
                "samples": 1,
                "share": 0.001,
                "ci_low": 0.0,
                "ci_high": 0.005,
                "bytes": 64,
                "caller_address": "0xffffffff81234567",
            }
        )
    return {
        "site": "xas_alloc",
        "backend": "raw_tracepoint",
        "total_calls": 10000,
        "total_bytes": 5_825_420,
        "lost": 0,
        "sampled": 1000,
        "sample_rate": 10,
        "callers": callers,
        "other": other,
        "folded": folded,
        "sites": [{"site": "xas_alloc", "function": "xas_alloc", "total_calls": 10000, "lost": 0}],
        "notes": ["synthetic test result"],
    }


def who_calls_result(path: Path, evil: bool = False) -> Path:
    Result(
        kind="who-calls",
        host=HOST,
        start=1_700_000_100.0,
        duration=30.0,
        settings={"sites": ["xas_alloc"], "duration": 30.0},
        payload=who_calls_payload(evil),
    ).write(str(path))
    return path


def overhead_result(path: Path) -> Path:
    """An overhead result whose payload is built by the overhead verb's own function."""
    from allocscope.collector.overhead import Window, resolve_functions
    from allocscope.collector.overhead_payload import window_payload

    present = {
        "__alloc_pages_noprof",
        "get_page_from_freelist",
        "kmem_cache_alloc_noprof",
        "__pgalloc_tag_add",
    }
    functions = resolve_functions(lambda n: n in present)
    stacks = {1: 300, 2: 120, 3: 2000, 4: 80}
    frames = {
        1: ("get_page_from_freelist", "__alloc_pages_noprof", "alloc_pages_mpol", "do_fault"),
        2: ("__pgalloc_tag_add", "__alloc_pages_noprof", "shmem_alloc_folio"),
        3: ("copy_page", "filemap_read", "vfs_read"),
        4: ("kmem_cache_alloc_noprof", "alloc_inode", "new_inode"),
    }
    counters = {
        "samples": 2500,
        "idle": 2000,
        "kernel": 500,
        "mm_page_alloc": 50_000,
        "kmem_cache_alloc": 80_000,
        "kmalloc": 30_000,
    }
    window = Window(seconds=10.0, counters=counters, stacks=stacks)
    payload = window_payload(window, functions, lambda sid: frames.get(sid, ()), 99)
    Result.of(
        dataclasses.replace(payload, event="cpu-clock"),
        HOST,
        1_700_000_200.0,
        10.0,
        {"event": "cpu-clock", "frequency": 99},
    ).write(str(path))
    return path


def make_store(root: Path, hosts: int = 6, sites: int = 40, snapshots: int = 4) -> Path:
    """A fleet store in the real layout (allocinfo + hosts datasets), from the synthetic fleet."""
    from support.synth import FleetSpec, fleet

    from allocscope.collector.store import Store

    store = Store(str(root))
    for host, taken, table in fleet(FleetSpec(hosts=hosts, sites=sites, snapshots=snapshots)):
        store.commit_snapshot(table, host, taken, allocinfo_version="2.0", source="synthetic")
    return root


def ingest_results(store: Path, tmp: Path) -> list[Path]:
    """who-calls and overhead results from four hosts (two pilot, two control), ingested."""
    import dataclasses

    from allocscope.collector.ingest import ingest
    from allocscope.collector.result import read_result
    from allocscope.collector.store import Store

    paths = []
    for h in range(4):
        host = dataclasses.replace(
            HOST, hostname=f"h{h}", labels={"group": "pilot" if h % 2 == 0 else "control"}
        )
        for name, make in (("wc", who_calls_result), ("oh", overhead_result)):
            p = make(tmp / f"{name}{h}.json")
            res = read_result(str(p))
            res.host = host
            res.start += h
            if name == "oh" and h % 2 == 0:
                for f in res.payload["functions"]:
                    if f.get("ns_per_call"):
                        f["ns_per_call"] *= 1.0 + 0.1 * (h + 1)
            res.write(str(p))
            paths.append(p)
    ingest(Store(str(store)), [str(p) for p in paths])
    return paths


# --- PNG (Chromium screenshots), decoded without Pillow --------------------------------------


def read_png(path: str | os.PathLike[str]) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, unfiltered rows) of an 8-bit RGB/RGBA PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos = 8
    idat = b""
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    i = 0
    for _ in range(height):
        ftype = raw[i]
        line = bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        if ftype == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif ftype == 2:
            for x in range(stride):
                line[x] = (line[x] + prev[x]) & 0xFF
        elif ftype == 3:
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + ((left + prev[x]) >> 1)) & 0xFF
        elif ftype == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def region_stats(
    png: tuple[int, int, int, list[bytes]], x: int, y: int, w: int, h: int
) -> tuple[int, int, int]:
    """(pixels, non-white pixels, distinct colours) in a rectangle, clipped to the image."""
    width, height, bpp, rows = png
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    total = nonwhite = 0
    colours: set[bytes] = set()
    for yy in range(y0, y1):
        row = rows[yy]
        for xx in range(x0, x1):
            px = row[xx * bpp : xx * bpp + 3]
            total += 1
            if px[0] < 245 or px[1] < 245 or px[2] < 245:
                nonwhite += 1
                colours.add(px)
    return total, nonwhite, len(colours)
