"""overhead on this host: the allocator shows up in the samples, and the calls it counts match
the operations the workload did (asserted against the workload's own op count)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allocscope.collector import workloads
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.overhead import diff_samples, resolve_functions
from allocscope.collector.overhead_payload import window_payload
from allocscope.collector.result import read_result
from allocscope.collector.sampler import Sampler, SamplerSettings

REPO = Path(__file__).resolve().parents[2]


def _measure_while(
    work: Callable[[threading.Event], int], seconds: float, frequency: int = 499
) -> tuple[dict[str, Any], int, Sampler]:
    """Run ``work`` in a thread of this process and measure only this process meanwhile.

    Returns the window payload and the ops ``work`` completed between the two snapshots.
    """
    functions = resolve_functions(Kallsyms.load().has)
    settings = SamplerSettings(frequency=frequency, pid=os.getpid())
    counter = {"ops": 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            counter["ops"] += work(stop)

    with Sampler(settings) as sampler:
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        time.sleep(0.3)  # warm up: first files, first pages
        ops0 = counter["ops"]
        first = sampler.sample()
        time.sleep(seconds)
        last = sampler.sample()
        ops1 = counter["ops"]
        stop.set()
        t.join(30)
        window = diff_samples(first, last)
        payload = window_payload(window, functions, sampler.frames, frequency).to_dict()
    return payload, ops1 - ops0, sampler


def _row(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in payload["functions"] if r["function"] == name)


def test_open_close_slab_share_and_calls(live: None) -> None:
    payload, ops, _ = _measure_while(lambda stop: workloads.open_close(500), 3.0)
    assert ops > 1000
    slab = _row(payload, "[slab allocator]")
    assert slab["present"] and slab["inclusive_samples"] > 0 and slab["inclusive_share"] > 0
    assert slab["ns_per_call"] is not None and slab["ns_per_call"] > 0
    # ~3 kmem_cache_alloc per open/close (struct file, name buffer, LSM blob): within 2x
    per_op = payload["calls"]["kmem_cache_alloc"] / ops
    assert 1.5 <= per_op <= 6.0, (per_op, payload["calls"], ops)
    assert payload["calls_per_second"]["kmem_cache_alloc"] > 0
    s = payload["samples"]
    assert s["total"] > 0 and s["idle"] == 0  # only our process was sampled
    assert s["profiler"] >= 0 and s["lost_stack_other"] == 0


def test_tmpfs_write_page_allocator_share_and_calls(live: None) -> None:
    with workloads.private_tmpfs("256m") as d:
        payload, mib, _ = _measure_while(lambda stop: workloads.tmpfs_write(16, d) >> 20, 3.0)
    assert mib >= 16
    page = _row(payload, "[page allocator]")
    assert page["present"] and page["inclusive_samples"] > 0 and page["inclusive_share"] > 0
    # one new page per 4 KiB written (plus xarray nodes' slab refills): within 2x
    pages_per_page = payload["calls"]["pages"] / (mib * 256)
    assert 0.5 <= pages_per_page <= 2.0, (pages_per_page, payload["calls"], mib)
    assert page["ns_per_call"] is not None and page["ns_per_call"] > 0


def test_cli_overhead_writes_result_without_addresses(live: None, tmp_path: Path, cli: Any) -> None:
    out_path = tmp_path / "host.json"
    rc, out, err = cli(
        "overhead",
        "-d",
        "2",
        "-F",
        "199",
        "--workload",
        "open-close",
        "--label",
        "group=pilot",
        "-o",
        str(out_path),
    )
    assert rc == 0, err
    assert "[slab allocator]" in out and "cpu-" in out
    assert "0xffff" not in out and "ffffffff" not in out
    r = read_result(str(out_path), expect_kind="overhead")
    assert r.host.labels == {"group": "pilot"}
    assert r.settings["event"] in ("cpu-cycles", "cpu-clock") and r.settings["frequency"] == 199
    assert r.payload["calls"]["kmem_cache_alloc"] > 0
    assert r.payload["profiling_memory"]["status"] in ("known", "unknown")
    assert "ffffffff" not in json.dumps(r.to_dict())


def test_sigterm_ends_early_and_still_writes(live: None, tmp_path: Path) -> None:
    out_path = tmp_path / "host.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from allocscope.cli import main; sys.exit(main())",
            "overhead",
            "-d",
            "120",
            "-o",
            str(out_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # printed once sampling has started
    assert "sampling" in line, line
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as every live verb
    r = read_result(str(out_path), expect_kind="overhead")
    assert r.settings["interrupted"] is True and 0.5 < r.duration < 60
