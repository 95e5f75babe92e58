"""Host metadata, result files, atomic writes, subsystems, kallsyms: the shared contracts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from allocscope.collector.atomic import write_text_atomic
from allocscope.collector.contracts import MAX_DEPTH, Contract, doc_of, specs
from allocscope.collector.host import HostMetadata, collect_host_metadata, parse_labels
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.payloads import (
    PAYLOADS,
    AbPayload,
    AllocCounts,
    AllocinfoJoin,
    CallerRow,
    Comparison,
    ContextCaller,
    ContextPayload,
    ContextTag,
    ContextTotals,
    Estimate,
    ExactTiming,
    FunctionRow,
    HistBucket,
    HistSlot,
    LifespanPayload,
    LifespanRow,
    LifespanStats,
    LiveSiteRow,
    OtherRow,
    OverheadPayload,
    PooledRow,
    ProfilingMemory,
    RateEpoch,
    SampleCounts,
    SampleEpoch,
    SiteBlock,
    TogglePayload,
    ToggleWindowResult,
    TopLivePayload,
    TopSelfRow,
    WhoCallsPayload,
)
from allocscope.collector.result import Result, read_result
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.errors import InputError


def test_host_metadata_roundtrip() -> None:
    h = collect_host_metadata({"group": "pilot"})
    assert h.hostname and h.kernel_release and h.cpus >= 1 and h.memory_bytes > 0
    assert h.boot_time > 0 and h.uptime > 0
    again = HostMetadata.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again == h
    with pytest.raises(ValueError):
        HostMetadata.from_dict({"hostname": "x"})


def test_parse_labels() -> None:
    assert parse_labels(["group=pilot", "rack = a1"]) == {"group": "pilot", "rack": "a1"}
    with pytest.raises(ValueError):
        parse_labels(["nolabel"])


def test_result_roundtrip_and_errors(tmp_path: Path) -> None:
    payload = {"site": "xas_alloc", "total_calls": 0, "callers": []}
    r = Result("who-calls", collect_host_metadata(), 1.0, 2.5, {"sample": 1}, payload)
    p = tmp_path / "r.json"
    r.write(str(p))
    back = read_result(str(p), expect_kind="who-calls")
    assert back.to_dict() == r.to_dict()
    with pytest.raises(InputError, match="expected 'overhead'"):
        read_result(str(p), expect_kind="overhead")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1,\n "kind": ')
    with pytest.raises(InputError, match=r"bad\.json:2: bad JSON"):
        read_result(str(bad))
    newer = tmp_path / "newer.json"
    d = r.to_dict()
    d["schema"] = 99
    newer.write_text(json.dumps(d))
    with pytest.raises(InputError, match="newer"):
        read_result(str(newer))
    with pytest.raises(InputError, match="no such file"):
        read_result(str(tmp_path / "missing.json"))


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.txt"
    write_text_atomic(str(p), "one", make_parents=True)
    write_text_atomic(str(p), "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.txt"]


def test_atomic_write_failure_keeps_old(tmp_path: Path) -> None:
    from allocscope.collector.atomic import write_atomic

    p = tmp_path / "f.txt"
    p.write_text("old")

    def boom(f: BinaryIO) -> None:
        f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(str(p), boom)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize(
    ("file", "function", "expected"),
    [
        ("net/core/sock.c", "sk_alloc", "net"),
        ("drivers/net/ethernet/intel/ice/ice_txrx.c", "ice_alloc_rx_bufs", "net"),
        ("drivers/scsi/scsi_lib.c", "scsi_mq_init_request", "drivers/scsi"),
        ("drivers/virtio/virtio_ring.c", "vring_alloc_queue", "drivers/virtio"),
        ("mm/slub.c", "alloc_slab_page", "mm"),
        ("fs/ext4/super.c", "ext4_alloc_inode", "fs/ext4"),
        ("fs/dcache.c", "__d_alloc", "fs"),
        ("block/blk-mq.c", "blk_mq_alloc_rqs", "block"),
        ("kernel/fork.c", "dup_task_struct", "kernel"),
        ("kernel/bpf/syscall.c", "x", "bpf"),
        ("include/linux/mm.h", "pagetable_alloc", "mm"),
        ("include/net/sock.h", "x", "net"),
        ("include/linux/something.h", "x", "include"),
        ("lib/xarray.c", "xas_alloc", "lib"),
        ("arch/x86/mm/pgtable.c", "pte_alloc_one", "arch"),
    ],
)
def test_default_subsystems(file: str, function: str, expected: str) -> None:
    assert default_map().classify(file, function) == expected


def test_subsystem_override(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('[[rule]]\npath = "lib/xarray.c"\nsubsystem = "mm"\n')
    m = SubsystemMap.load(str(p))
    assert m.classify("lib/xarray.c") == "mm"
    assert m.classify("net/x.c") == "net"  # defaults still apply after the override
    p.write_text('replace_defaults = true\n[[rule]]\npath = "**"\nsubsystem = "all"\n')
    assert SubsystemMap.load(str(p)).classify("net/x.c") == "all"
    p.write_text("[[rule]\n")
    with pytest.raises(InputError, match="bad TOML"):
        SubsystemMap.load(str(p))


def test_kallsyms_from_file(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffff81000100 t xas_alloc\n"
        "ffffffff81000180 t xas_alloc.constprop.0\n"
        "ffffffff81000200 T xas_create\n"
        "ffffffff81000300 D some_data\n"
        "ffffffffc0000000 t foo_probe\t[foo]\n"
    )
    k = Kallsyms.load(str(p))
    r = k.resolve(0xFFFFFFFF81000105)
    assert r is not None and r.name == "xas_alloc" and r.offset == 5
    assert k.function_at(0xFFFFFFFF81000190) == "xas_alloc"
    assert k.ranges("xas_alloc") == [
        (0xFFFFFFFF81000100, 0xFFFFFFFF81000180),
        (0xFFFFFFFF81000180, 0xFFFFFFFF81000200),
    ]
    m = k.resolve(0xFFFFFFFFC0000010)
    assert m is not None and m.module == "foo" and str(m) == "foo_probe+0x10 [foo]"
    assert k.resolve(0x10) is None


def test_kallsyms_restricted(tmp_path: Path) -> None:
    from allocscope.errors import CapabilityError

    p = tmp_path / "kallsyms"
    p.write_text("0000000000000000 T _stext\n0000000000000000 t xas_alloc\n")
    with pytest.raises(CapabilityError, match="kptr_restrict"):
        Kallsyms.load(str(p))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(start="yesterday"), "result.start: expected a finite number"),
        (lambda d: d.update(start=-5), "result.start: must not be negative, got -5"),
        (lambda d: d.update(duration=float("nan")), "result.duration: expected a finite number"),
        (
            lambda d: d.update(kind="overhead"),
            "payload.seconds: missing (this looks like a 'who-calls'",
        ),
        (lambda d: d["payload"]["callers"].append({"caller": 3}), "payload.callers[0].caller"),
        (lambda d: d["payload"].update(extra=_deep(100)), "nested deeper than"),
        (lambda d: d.update(payload=[]), "result.payload: expected an object"),
    ],
)
def test_result_fields_are_validated_with_their_path(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    payload = {"site": "xas_alloc", "total_calls": 0, "callers": []}
    d = Result("who-calls", collect_host_metadata(), 1.0, 2.5, {}, payload).to_dict()
    edit(d)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(d, allow_nan=True))
    with pytest.raises(InputError) as e:
        read_result(str(p))
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def _deep(n: int) -> object:
    v: object = 1
    for _ in range(n):
        v = {"x": v}
    return v


def test_json_nested_past_the_parser_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "deep.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError, match="nested too deeply"):
        read_result(str(p))


def test_schemas_doc_is_generated_from_the_contracts() -> None:
    from allocscope.collector.payloads import markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "schemas.md").read_text()
    assert doc == markdown(), "run scripts/gen-schemas"


# --- the typed payloads (collector/payloads/) are the contract -------------------------------


def _who_calls() -> WhoCallsPayload:
    join = AllocinfoJoin(
        source="/proc/allocinfo",
        match="exact-tag",
        tags=("lib/xarray.c:376 func:xas_alloc",),
        after=AllocCounts(bytes=4096, calls=2),
        before=AllocCounts(bytes=0, calls=0),
        delta=AllocCounts(bytes=4096, calls=2),
    )
    return WhoCallsPayload(
        site="xas_alloc",
        sites=(
            SiteBlock(
                site="xas_alloc",
                function="xas_alloc",
                tag="lib/xarray.c:376 func:xas_alloc",
                total_calls=10,
                total_bytes=5840,
                allocinfo=join,
            ),
        ),
        backend="raw_tracepoint",
        total_calls=10,
        sample_epochs=(SampleEpoch(n=1, seconds=1.0, events=10),),
        effective_sample_rate=None,
        callers=(
            CallerRow(site="xas_alloc", caller="shmem_add_to_page_cache", calls=9, share=0.9),
            CallerRow(caller="add_to_swap_cache", calls=1, share=0.1, pid=7, comm="dd"),
        ),
        other=(OtherRow(site="xas_alloc", caller="other", callers=1, calls=1, share=0.1),),
        allocinfo=join,
        folded={"a;xas_alloc": 9},
        notes=("a note",),
        extra={"future": {"nested": [1, 2]}},
    )


def _overhead() -> OverheadPayload:
    return OverheadPayload(
        seconds=2.0,
        period_ns=1e7,
        samples=SampleCounts(total=200, busy=120, profiler=7),
        calls={"mm_page_alloc": 100},
        functions=(
            FunctionRow(
                function="__alloc_pages_noprof",
                kind="page",
                present=True,
                inclusive_samples=25,
                self_samples=0,
                inclusive_share=25 / 120,
                calls=100,
                ns_per_call=2.5e6,
            ),
            FunctionRow(
                function="__alloc_pages",
                kind="page",
                present=False,
                inclusive_samples=0,
                inclusive_share=None,
                calls=None,
            ),
        ),
        top_self=(TopSelfRow(function="copy_user_generic", samples=40, share=1 / 3),),
        exact=ExactTiming(
            function="__alloc_pages_noprof",
            calls=100,
            total_ns=110_000,
            mean_ns=1100.0,
            median_ns=1050.0,
            hist=(HistBucket(lo_ns=1024, hi_ns=1088, count=100),),
        ),
        profiling_memory=ProfilingMemory(status="unknown", reason="no /proc/allocinfo"),
        event="cpu-clock",
    )


def _comparison() -> Comparison:
    return Comparison(
        function="[page allocator]",
        metric="ns_per_call",
        stat="mean",
        n_a=12,
        n_b=12,
        mean_a=2800.0,
        mean_b=2000.0,
        ratio=1.4,
        ci_low=1.3,
        ci_high=1.5,
        p_value=0.001,
        test="mann-whitney-exact",
        significant=True,
    )


def _context() -> ContextPayload:
    caller = ContextCaller(
        caller="path_openat",
        samples=40,
        calls=1000.0,
        calls_low=700.0,
        calls_high=1400.0,
        bytes=256000.0,
        bytes_low=180000.0,
        bytes_high=350000.0,
        call_share=1.0,
        call_share_low=0.91,
        call_share_high=1.0,
        byte_share=1.0,
        byte_share_low=0.91,
        byte_share_high=1.0,
        charged_share=1.0,
    )
    tag = ContextTag(
        tag="alloc_empty_file",
        function="alloc_empty_file",
        subsystem="unknown",
        sources=("kmem_cache_alloc",),
        match="call-site",
        live_bytes=None,
        live_calls=None,
        samples=40,
        calls=1000.0,
        calls_low=700.0,
        calls_high=1400.0,
        bytes=256000.0,
        bytes_low=180000.0,
        bytes_high=350000.0,
        calls_per_s=500.0,
        bytes_per_s=128000.0,
        byte_share=0.5,
        byte_share_low=0.4,
        byte_share_high=0.6,
        charged_share=1.0,
        charged_share_low=0.91,
        charged_share_high=1.0,
        callers=(caller,),
        folded={"do_sys_openat2;path_openat;alloc_empty_file": 40},
    )
    return ContextPayload(
        backend="raw_tracepoint",
        tag_mode="call-site",
        allocinfo_source=None,
        charge_source="btf",
        duration=2.0,
        confidence=0.95,
        rate_mode="auto",
        rate=4096,
        rate_epochs=(RateEpoch(rate=4096, seconds=2.0, events=2000, bytes=512000, hits=80),),
        totals=ContextTotals(
            events=2000,
            bytes=512000,
            calls_est=2000.0,
            calls_est_low=1800.0,
            calls_est_high=2200.0,
            bytes_est=512000.0,
            bytes_est_low=400000.0,
            bytes_est_high=600000.0,
        ),
        tags=(tag,),
        tags_total=2,
        counters={"stack_err": 0, "hash_full": 0},
        notes=("exact allocinfo tags not read",),
    )


def _est(v: float, lo: float, hi: float) -> Estimate:
    return Estimate(value=v, low=lo, high=hi)


def _lifespan() -> LifespanPayload:
    return LifespanPayload(
        view="leaks",
        backend="raw_tracepoint",
        tag_mode="call-site",
        sample_rate=4096,
        addr_shift=5,
        confidence=0.95,
        older_than_ns=1_000_000_000,
        window_ns=5_000_000_000,
        sampled=3,
        freed_sampled=1,
        live_sampled=2,
        missed_frees=0,
        counters={"alloc_events": 100},
        traced_frees=("kfree",),
        untraced_frees=("kmem_cache_free_bulk",),
        rows=(
            LifespanRow(
                site="alloc_empty_file",
                source="kmem_cache_alloc",
                caller="alloc_file_pseudo",
                sampled=3,
                freed_sampled=1,
                live_sampled=2,
                missed_frees=0,
                allocated_calls=_est(96.0, 40.0, 200.0),
                allocated_bytes=_est(24576.0, 10000.0, 50000.0),
                freed_calls=_est(32.0, 5.0, 90.0),
                live_calls=_est(64.0, 20.0, 150.0),
                live_bytes=_est(16384.0, 5000.0, 40000.0),
                old_calls=_est(64.0, 20.0, 150.0),
                old_bytes=_est(16384.0, 5000.0, 40000.0),
                lifespan=LifespanStats(
                    n_eff=1.0,
                    mean_ns=_est(1500.0, 1024.0, 2048.0),
                    p50_ns=_est(1500.0, 1024.0, 2048.0),
                    p90_ns=_est(1500.0, 1024.0, 2048.0),
                    p99_ns=_est(1500.0, 1024.0, 2048.0),
                ),
                lifespan_hist=(HistSlot(low_ns=1024, high_ns=2048, sampled=1, calls=32.0),),
                age_hist=(
                    HistSlot(low_ns=1 << 31, high_ns=1 << 32, sampled=2, calls=64.0, bytes=1.0),
                ),
                stacks={"do_syscall_64;alloc_file_pseudo": 2},
            ),
        ),
    )


TYPED = {
    "context": _context,
    "lifespan": _lifespan,
    "who-calls": _who_calls,
    "overhead": _overhead,
    "top-live": lambda: TopLivePayload(
        bytes_kind="live",
        events=3,
        lost={"stale_ptr": 1},
        sites=(LiveSiteRow(function="f", module="", bytes=-4096, calls=3, extras={"x": 1}),),
    ),
    "ab": lambda: AbPayload(
        labels=("pilot", "control"),
        inputs={"pilot": ("p.json",), "control": ("c.json",)},
        event=None,
        comparisons=(_comparison(),),
        verdicts=(_comparison(),),
    ),
    "ab-toggle": lambda: TogglePayload(
        labels=("profiling on", "profiling off"),
        pairs=1,
        comparisons=(_comparison(),),
        pooled=(
            PooledRow(
                function="[page allocator]",
                on_ns_per_call=2.8,
                off_ns_per_call=2.0,
                on_samples=5,
                off_samples=4,
                on_calls=2,
                off_calls=2,
                ratio=1.4,
            ),
        ),
        window_results=(
            ToggleWindowResult(index=0, mem_profiling="1", window=_overhead()),
            ToggleWindowResult(index=1, mem_profiling="0", window=_overhead()),
        ),
    ),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_every_kind_round_trips_through_its_type(kind: str, tmp_path: Path) -> None:
    typed = TYPED[kind]()
    assert typed.KIND == kind
    data = json.loads(json.dumps(typed.to_dict()))
    back = PAYLOADS[kind].from_dict(data)
    assert back == typed
    assert back.to_dict() == data  # and the JSON comes back unchanged, unknown fields included
    p = tmp_path / "r.json"
    Result.of(typed, collect_host_metadata(), 1.0, 2.0, {"k": 1}).write(str(p))
    assert read_result(str(p), expect_kind=kind).typed(PAYLOADS[kind]) == typed


def test_unknown_fields_are_kept_in_order_and_the_window_is_flattened() -> None:
    d = TYPED["ab-toggle"]().to_dict()
    w = d["window_results"][0]
    assert list(w)[:3] == ["index", "mem_profiling", "seconds"]  # one object, as written
    w["from_a_newer_version"] = 1
    back = TogglePayload.from_dict(d)
    assert back.window_results[0].window.extra == {"from_a_newer_version": 1}
    assert back.to_dict() == d
    assert list(_who_calls().to_dict())[-1] == "future"


def _result_file(tmp_path: Path, kind: str, edit: Any) -> Path:
    d = Result.of(TYPED[kind](), collect_host_metadata(), 1.0, 2.5).to_dict()
    edit(d)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(d, allow_nan=True))
    return p


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        (
            "who-calls",
            lambda d: d["payload"]["sites"][0]["allocinfo"]["after"].update(bytes="x"),
            "result.json: payload.sites[0].allocinfo.after.bytes: expected an integer, got 'x'",
        ),
        (
            "who-calls",
            lambda d: d["payload"]["sites"][0].pop("function"),
            "payload.sites[0].function: missing",
        ),
        (
            "who-calls",
            lambda d: d["payload"]["callers"][1].update(share=-0.5),
            "payload.callers[1].share: must not be negative, got -0.5",
        ),
        (
            "who-calls",
            lambda d: d.update(kind="overhead"),
            "payload.seconds: missing (this looks like a 'who-calls' payload)",
        ),
        (
            "overhead",
            lambda d: d.update(kind="who-calls"),
            "payload.site: missing (this looks like a 'overhead' payload)",
        ),
        (
            "overhead",
            lambda d: d["payload"]["exact"]["hist"][0].update(count=1.5),
            "payload.exact.hist[0].count: expected an integer, got 1.5",
        ),
        (
            "overhead",
            lambda d: d["payload"]["functions"][1].update(present=None),
            "payload.functions[1].present: expected true or false, got null",
        ),
        (
            "ab-toggle",
            lambda d: d["payload"]["window_results"][1]["functions"][0].update(kind=3),
            "payload.window_results[1].functions[0].kind: expected a string, got 3",
        ),
        (
            "ab",
            lambda d: d["payload"]["verdicts"][0].update(ratio=float("inf")),
            "payload.verdicts[0].ratio: expected a finite number, got inf",
        ),
        ("top-live", lambda d: d.update(start=-1), "result.start: must not be negative, got -1"),
        (
            "top-live",
            lambda d: d.update(start=float("nan")),
            "result.start: expected a finite number, got nan",
        ),
        ("ab", lambda d: d.update(duration="2s"), "result.duration: expected a finite number"),
    ],
)
def test_planted_errors_name_the_file_and_the_field_path(
    tmp_path: Path, kind: str, edit: Any, message: str
) -> None:
    p = _result_file(tmp_path, kind, edit)
    with pytest.raises(InputError) as e:
        read_result(str(p))
    text = str(e.value)
    assert text.startswith(f"{p}: ") and "\n" not in text
    assert message.removeprefix("result.json: ") in text, text


def test_nesting_10000_deep_is_one_line(tmp_path: Path) -> None:
    d = Result.of(_who_calls(), collect_host_metadata(), 1.0, 2.5).to_dict()
    d["payload"]["future"] = _deep(10_000)  # built in memory: past json's parser limit
    with pytest.raises(InputError) as e:
        Result.from_dict(d, "deep.json")
    assert str(e.value).startswith("deep.json: result.payload.future.x.x") and "\n" not in str(
        e.value
    )
    assert f"nested deeper than {MAX_DEPTH} levels" in str(e.value)
    p = tmp_path / "deep.json"
    p.write_text('{"schema": 1, "payload": ' + "[" * 10_000 + "]" * 10_000 + "}")
    with pytest.raises(InputError, match="nested too deeply") as e2:
        read_result(str(p))
    assert "\n" not in str(e2.value)


def test_every_field_is_declared_with_a_doc() -> None:
    seen: set[type[Contract]] = set()

    def walk(cls: type[Contract]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        assert doc_of(cls), cls
        for s in specs(cls):
            assert s.doc, (cls, s.name)
            inner = s.hint
            for t in (inner, *getattr(inner, "__args__", ())):
                for u in (t, *getattr(t, "__args__", ())):
                    if isinstance(u, type) and issubclass(u, Contract):
                        walk(u)

    for cls in PAYLOADS.values():
        walk(cls)
    assert len(seen) >= 20


@pytest.mark.parametrize("number", ["1" + "0" * 400, "-" + "9" * 30, "9" * 5000])
def test_json_numbers_beyond_u64_are_one_line(tmp_path: Path, number: str) -> None:
    """10**400 parses as a Python int and used to raise OverflowError at float(duration)."""
    p = tmp_path / "huge.json"
    p.write_text(
        '{"schema": 1, "kind": "overhead", "host": {}, "start": 0, "duration": ' + number + "}"
    )
    with pytest.raises(InputError, match=r"huge.json: bad JSON: number out of range|digits"):
        read_result(str(p))
