"""``context`` live on this kernel: the proofs of issue 11 that need no allocation profiling.

Each workload runs in a thread of this process under its own comm (``prctl(PR_SET_NAME)``
names one thread), and the capture filters on it in kernel, so other processes on a shared
machine cannot blur the known truth:

* **Controlled mix.** One site, ``do_sys_poll``, and two callers with a known call ratio AND a
  different, known byte ratio: ``poll`` with 130 descriptors (one kmalloc of 816 bytes ->
  kmalloc-1k) 3 times per ``ppoll`` with 530 (4016 bytes -> kmalloc-4k); see fs/select.c
  (30 pollfds fit on the stack, the rest are kmalloc'ed). The call shares and the byte
  shares must each fall in their intervals; and a census probe (R = 1, every event a point)
  attached for the same run must count exactly the calls made, and lie in the estimate's
  interval.
* **A page-allocator site** attributed to its caller during tmpfs writes: ``mm_page_alloc``
  has no call_site; the site is the first frame past the page allocator in the sampled stack.
  Its estimated bytes must cover what was written.
* **Charged vs uncharged**: open/close allocates a ``struct file`` from ``filp``, a
  SLAB_ACCOUNT cache (charged), and a path name from ``names_cache``, which is not.

Intervals are asked at 99.9% so the several checks here fail by chance about 1 run in 200.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from allocscope.collector import context as ctx
from allocscope.collector import context_payload
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.payloads import ContextPayload, ContextTag

pytestmark = pytest.mark.usefixtures("live")

CONF = 0.999
PR_SET_NAME = 15
LIBC = ctypes.CDLL(None, use_errno=True)


class PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _named(comm: str, work: Callable[[], object]) -> Callable[[], object]:
    """``work`` run under ``comm`` (this thread only)."""

    def run() -> object:
        LIBC.prctl(PR_SET_NAME, comm.encode(), 0, 0, 0)
        return work()

    return run


def _capture(comm: str, work: Callable[[], object], **kw: Any) -> ContextPayload:
    opts = ctx.Options(comm=comm, during=_named(comm, work), confidence=CONF, **kw)
    return ctx.capture(opts).typed(ContextPayload)


def _tag(p: ContextPayload, function: str) -> ContextTag:
    found = [t for t in p.tags if t.function == function]
    assert found, f"no tag {function}: {[t.tag for t in p.tags]}"
    return found[0]


def test_two_callers_of_one_site_call_and_byte_shares_and_the_census() -> None:
    from allocscope.probes import context as pc

    comm = "ctx-pollmix"
    small = (PollFd * 130)(*[PollFd(-1, 0, 0)] * 130)
    large = (PollFd * 530)(*[PollFd(-1, 0, 0)] * 530)
    zero = Timespec(0, 0)
    done = {"poll": 0, "ppoll": 0}

    def work() -> None:
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            for _ in range(3):
                assert LIBC.poll(small, 130, 0) == 0
            assert LIBC.ppoll(large, 530, ctypes.byref(zero), None) == 0
            done["poll"] += 3
            done["ppoll"] += 1

    census = pc.open_probe(pc.ContextSettings(comm=comm, pages=False), 1)
    try:
        p = _capture(comm, work)
        raw = ctx.read_raw(census.probe, False)
    finally:
        census.probe.close()
    calls = done["poll"] + done["ppoll"]
    assert calls > 10000
    true_call = done["poll"] / calls
    true_byte = done["poll"] * 1024 / (done["poll"] * 1024 + done["ppoll"] * 4096)

    tag = _tag(p, "do_sys_poll")
    by = {c.caller: c for c in tag.callers}
    poll = next(c for name, c in by.items() if name.endswith("sys_poll"))
    ppoll = next(c for name, c in by.items() if name.endswith("sys_ppoll"))
    assert poll.call_share_low <= true_call <= poll.call_share_high, poll
    assert poll.byte_share_low <= true_byte <= poll.byte_share_high, poll
    assert ppoll.call_share_low <= 1 - true_call <= ppoll.call_share_high, ppoll
    assert ppoll.byte_share_low <= 1 - true_byte <= ppoll.byte_share_high, ppoll
    assert tag.calls_low <= calls <= tag.calls_high, (tag.calls, calls)
    assert p.counters["hash_full"] == 0

    pc_ = context_payload.build_payload(
        raw,
        Kallsyms.load(),
        ctx.Options(rate=1, confidence=CONF),
        epochs=[ctx.Epoch(1, p.duration)],
        duration=p.duration,
        backend="raw_tracepoint",
        tag_mode="call-site",
        charge_source="btf",
    )
    census_tag = _tag(pc_, "do_sys_poll")
    assert census_tag.calls == calls  # every event, exactly
    assert census_tag.bytes == done["poll"] * 1024 + done["ppoll"] * 4096
    assert tag.calls_low <= census_tag.calls <= tag.calls_high
    assert tag.bytes_low <= census_tag.bytes <= tag.bytes_high


def test_a_page_allocator_site_is_attributed_to_its_caller_during_tmpfs_writes() -> None:
    from allocscope.collector.workloads import private_tmpfs, tmpfs_write

    mib = 64
    with private_tmpfs(f"{mib + 32}m") as d:
        p = _capture("ctx-tmpfs", lambda: tmpfs_write(mib, d), callers=5)
    pages = [t for t in p.tags if t.match == "page-stack" and t.function.startswith("shmem_")]
    assert pages, [(t.tag, t.match) for t in p.tags]
    tag = pages[0]
    assert tag.sources == ("page",)
    callers = {c.caller for c in tag.callers}
    assert callers & {"shmem_alloc_and_add_folio", "shmem_get_folio_gfp"}, callers
    # every page written was allocated once, in the window (fresh files, no reuse)
    assert tag.bytes_low <= mib << 20 <= tag.bytes_high * 1.02, (tag.bytes, mib << 20)


def test_charged_and_uncharged_allocations_are_separated() -> None:
    n = 200_000

    def work() -> None:
        for _ in range(n):
            os.close(os.open("/etc/hostname", os.O_RDONLY))

    p = _capture("ctx-openclose", work)
    assert p.charge_source == "btf"
    f = _tag(p, "alloc_empty_file")  # filp: SLAB_ACCOUNT
    name = _tag(p, "getname_flags")  # names_cache: not accounted
    # every struct file is charged, no path name is: the split is exact, not statistical
    assert f.samples >= 20 and name.samples >= 20
    assert f.charged_share == 1.0 and f.charged_share_high == 1.0, f
    assert name.charged_share == 0.0 and name.charged_share_low == 0.0, name
    assert f.calls_low <= n <= f.calls_high, (f.calls, n)


def test_the_verb_prints_the_table_and_writes_its_result(cli: Any, tmp_path: Any) -> None:
    out = tmp_path / "ctx.json"
    args = ["-d", "2", "--workload", "open-close", "-n", "3", "--confidence", str(CONF)]
    rc, stdout, _err = cli("context", *args, "-o", str(out))
    assert rc == 0
    assert "CALLS/S" in stdout and "<- " in stdout
    from allocscope.collector.result import read_result

    r = read_result(str(out), expect_kind="context")
    p = r.typed(ContextPayload)
    assert len(p.tags) == 3 and p.tags_total >= 3
    # the window's own check: counted events lie in the estimate's interval
    t = p.totals
    assert t.calls_est_low <= t.events <= t.calls_est_high, t
    assert t.bytes_est_low <= t.bytes <= t.bytes_est_high, t
