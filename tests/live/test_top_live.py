"""``top --live``: the kmem tracepoint capture must see allocations the test itself causes.

Each ``open()`` of a file allocates one ``struct file`` from the ``filp`` slab cache in the
function that allocates ``struct file`` (``alloc_empty_file`` on 6.x; older kernels named it
``__alloc_file``/``alloc_file``). N opens inside the window must show up as >= N calls there.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from allocscope.collector.allocinfo import AllocRecord
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.top_live import PAGE_SITE, LiveCapture, capture_top_live

N = 20000
FILE_ALLOCATORS = ("alloc_empty_file", "__alloc_file", "alloc_file")


def file_allocator() -> str:
    """The struct-file allocating function this kernel really has (per /proc/kallsyms)."""
    ks = Kallsyms.load()
    present = [f for f in FILE_ALLOCATORS if ks.ranges(f)]
    assert present, f"none of {FILE_ALLOCATORS} in /proc/kallsyms"
    return present[0]


def filp_object_size() -> int | None:
    """``s->size`` of the filp cache as /proc/slabinfo reports it (its objsize column)."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] == "filp":
                    return int(parts[3])
    except OSError:
        pass
    return None


def open_close_in_window(n: int) -> tuple[Callable[[], None], threading.Thread, dict[str, float]]:
    """A thread that does ``n`` open/close pairs once the capture window has started."""
    started = threading.Event()
    times: dict[str, float] = {}

    def work() -> None:
        started.wait(120)
        times["start"] = time.monotonic()
        for _ in range(n):
            os.close(os.open("/etc/hostname", os.O_RDONLY))
        times["end"] = time.monotonic()

    def window_started() -> None:
        times["window"] = time.monotonic()
        started.set()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return window_started, t, times


def capture_with_opens(n: int, **kw: object) -> tuple[LiveCapture, dict[str, float]]:
    on_start, thread, times = open_close_in_window(n)
    cap = capture_top_live(2.0, on_start=on_start, **kw)  # type: ignore[arg-type]
    thread.join(30)
    assert "end" in times, "the open/close loop did not finish"
    assert times["end"] <= times["window"] + cap.duration, "opens ran past the window"
    return cap, times


def record_for(cap: LiveCapture, function: str) -> AllocRecord:
    found = [r for r in cap.snapshot.records if r.site.function == function]
    names = [r.site.function for r in cap.snapshot.records[:20]]
    assert found, f"{function} not among captured sites (top: {names})"
    assert len(found) == 1, "records must be one per function"
    return found[0]


def test_open_close_counted_allocated_bytes(live: None) -> None:
    fn = file_allocator()
    cap, _ = capture_with_opens(N, frees=False)
    assert cap.bytes_kind == "allocated" and cap.backend.startswith("raw_tracepoint")
    assert not cap.interrupted
    r = record_for(cap, fn)
    assert r.calls >= N
    assert r.bytes > 0
    assert r.extras["source"] == "kmem_cache_alloc"
    size = filp_object_size()
    if size is not None and "sources" not in r.extras:
        # bytes come from s->size read at the BTF offset: must equal slabinfo's objsize.
        assert r.bytes == r.calls * size
    assert cap.lost["sites_full"] == 0
    assert cap.events >= N


def test_open_close_counted_with_pid_filter_and_frees(live: None) -> None:
    fn = file_allocator()
    cap, _ = capture_with_opens(N, frees=True, pid=os.getpid())
    assert cap.bytes_kind == "live"
    r = record_for(cap, fn)
    assert r.calls >= N
    alloc_b = int(r.extras["alloc_bytes"])
    freed_b = int(r.extras["freed_bytes"])
    assert alloc_b > 0
    assert r.bytes == alloc_b - freed_b
    assert int(r.extras["freed_calls"]) > 0  # the files were closed: frees were matched
    # Only this process: every record comes from allocations made while it ran, so the
    # struct-file site cannot have seen many more calls than the loop made (Python's own
    # opens during the window are a handful).
    assert r.calls < N + 1000


def test_pid_filter_excludes_other_processes(live: None) -> None:
    """A process that opens nothing during the window must not see N struct-file calls."""
    fn = file_allocator()
    pid = os.getpid()
    on_start, thread, times = open_close_in_window(N)
    # Filter on our parent (pytest's parent shell or init): it does not run our loop.
    cap = capture_top_live(1.5, pid=os.getppid() or 1, frees=False, on_start=on_start)
    thread.join(30)
    calls = sum(r.calls for r in cap.snapshot.records if r.site.function == fn)
    assert calls < N, f"pid filter {os.getppid()} let through this process ({pid})'s opens"


def test_top_live_cli_json(live: None, cli: Callable[..., tuple[int, str, str]]) -> None:
    pytest.importorskip("allocscope.cli.top")
    fn = file_allocator()
    rc, out, err = cli("top", "--live", "2", "--workload", "open-close", "--json", "--no-frees")
    assert rc == 0, err
    data = json.loads(out)
    sites = {s["function"]: s for s in data["sites"]}
    assert fn in sites, f"{fn} missing from top --live --json"
    assert sites[fn]["calls"] > 1000
    assert sites[fn]["bytes"] > 0


def test_top_live_result_file(
    live: None, cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    """``-o`` keeps the window as a typed top-live Result: the same counts as the table."""
    from allocscope.collector.payloads import TopLivePayload
    from allocscope.collector.result import read_result

    fn = file_allocator()
    out_file = tmp_path / "live.json"
    argv = ("top", "--live", "2", "--workload", "open-close", "--no-frees", "-o", str(out_file))
    rc, out, err = cli(*argv)
    assert rc == 0, err
    assert f"wrote {out_file}" in err and fn in out
    result = read_result(str(out_file), "top-live")
    assert result.kind == "top-live" and result.settings["interrupted"] is False
    assert 1.5 < result.duration < 10
    payload = result.typed(TopLivePayload, str(out_file))
    rows = {r.function: r for r in payload.sites}
    assert rows[fn].calls > 1000 and rows[fn].bytes > 0
    assert payload.bytes_kind == "allocated" and payload.events is not None
    assert payload.events >= rows[fn].calls


def test_classic_tracepoint_fallback(live: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without BTF (or with unexpected raw tracepoint layouts) the classic tracepoints stand
    in, their records located through tracefs format files: same counts, same sizes."""
    from allocscope.probes import kmem_sites

    real = kmem_sites.KmemSitesSettings.defines

    def classic(self: kmem_sites.KmemSitesSettings) -> kmem_sites.Defines:
        d = real(self)
        d.pop("KMEM_CACHE_SIZE_OFF", None)
        d.update(kmem_sites.classic_offsets("kmem_cache_alloc", "TP_CACHE"))
        d.update(kmem_sites.classic_offsets("kmalloc", "TP_KMALLOC"))
        d["TRACK_PAGES"] = False
        return d

    monkeypatch.setattr(kmem_sites.KmemSitesSettings, "defines", classic)
    fn = file_allocator()
    cap, _ = capture_with_opens(N, frees=True, pid=os.getpid())
    assert cap.backend == "tracepoint+raw_tracepoint"
    assert cap.settings["pages"] is False
    r = record_for(cap, fn)
    assert r.calls >= N
    size = filp_object_size()
    if size is not None and "sources" not in r.extras:
        assert int(r.extras["alloc_bytes"]) == r.calls * size
    assert all(rec.site.function != PAGE_SITE for rec in cap.snapshot.records)


def _hold_pipes_in_window(n: int, held: list[tuple[int, int]]) -> Callable[[], None]:
    def start() -> None:
        from allocscope.collector.workloads import hold_pipes

        held.extend(hold_pipes(n))

    return start


def test_live_bytes_sampled_by_address_and_exact(live: None) -> None:
    """Default: live bytes from 1 in 32 addresses; the held pipes' slab objects (pipe_inode_info
    and the pipe_buffer array, from alloc_pipe_info) are all live, so the sampled count is a
    binomial(calls, 1/32) draw (checked at 5 sigma: one run is one draw). With
    exact_frees every object is tracked and the live bytes equal the allocated bytes."""
    n = 2048
    for exact in (False, True):
        held: list[tuple[int, int]] = []
        try:
            cap = capture_top_live(
                2.0, pid=os.getpid(), exact_frees=exact, on_start=_hold_pipes_in_window(n, held)
            )
        finally:
            for r, w in held:
                os.close(r)
                os.close(w)
        rec = record_for(cap, "alloc_pipe_info")
        alloc = int(rec.extras["alloc_bytes"])
        assert rec.calls >= 2 * n
        if exact:
            assert rec.bytes == alloc and rec.extras["freed_calls"] == "0"
            assert cap.settings["live_bytes"] == "exact"
        else:
            k = int(rec.extras["live_sampled"])
            mean = rec.calls / 32
            assert abs(k - mean) <= 5 * mean**0.5, (k, mean)
            low, high = (float(x) for x in rec.extras["live_bytes_ci"].split("-"))
            assert low <= rec.bytes <= high <= alloc, (low, rec.bytes, high, alloc)
