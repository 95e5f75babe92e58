"""Backend choice from facts, and the per-boot cache of verdicts and BTF facts.

The choice is pure (every input is in :class:`BackendFacts`), so each rule is checked with
hand-made facts. The cache is hostile input read as root: each way a file can be unusable
(another boot, corrupt, foreign-owned, writable by others, a symlink, a FIFO, a lax
directory) must leave the cache empty -- never an error, never a followed link.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest

from allocscope.collector import boot_cache
from allocscope.collector.boot_cache import BootCache
from allocscope.collector.kallsyms import EarlySymbols, Kallsyms, quick_ranges
from allocscope.errors import AllocscopeError, CapabilityError
from allocscope.probes.capabilities import RAW_TP_LAYOUTS, BTFFacts, CheckResult
from allocscope.probes.who_calls import BackendFacts, SiteRanges, choose_backends, verdict_keys

EPERM = CheckResult(
    False, "BPF program who_calls.bpf.c failed to load: the kernel refused the program (EPERM)"
)
NOTRACE = CheckResult(False, "Failed to attach BPF program to kprobe 'x': it's not traceable")
ONE = [SiteRanges(1, "alloc_empty_file", [(0x1000, 0x1100)], ["alloc_empty_file"])]
TWO = [*ONE, SiteRanges(2, "getname_flags", [(0x2000, 0x2100)], ["getname_flags"])]


def facts(
    *,
    btf: bool = True,
    kprobes: bool = True,
    traceable: bool | None = True,
    verdicts: Mapping[str, CheckResult] | None = None,
    sites: list[SiteRanges] = ONE,
) -> BackendFacts:
    return BackendFacts(btf, kprobes, {t.function: traceable for t in sites}, verdicts or {})


def order(sites: list[SiteRanges], f: BackendFacts, requested: str = "auto") -> list[str]:
    return [b for b, _ in choose_backends(sites, requested, f)[0]]


def skipped(sites: list[SiteRanges], f: BackendFacts) -> dict[str, str]:
    return dict(choose_backends(sites, "auto", f)[1])


# --- the backend choice ----------------------------------------------------------------------


def test_everything_available_tries_fentry_first() -> None:
    assert order(ONE, facts()) == ["fentry", "kprobe", "raw_tracepoint", "tracepoint"]


def test_cheap_facts_rule_backends_out_without_a_compile() -> None:
    assert order(ONE, facts(btf=False))[0] == "kprobe"
    assert skipped(ONE, facts(btf=False))["fentry"] == "no BTF"
    assert order(ONE, facts(kprobes=False)) == ["fentry", "raw_tracepoint", "tracepoint"]
    notrace = facts(traceable=False)
    assert order(ONE, notrace) == ["raw_tracepoint", "tracepoint"]
    assert "not traceable" in skipped(ONE, notrace)["kprobe"]
    # fentry hooks one function: two sites go straight to kprobe / tracepoints
    assert order(TWO, facts(sites=TWO))[0] == "kprobe"


def test_unreadable_ftrace_list_is_unknown_not_no() -> None:
    cands = choose_backends(ONE, "auto", facts(traceable=None))[0]
    assert cands[0][0] == "fentry" and "unknown" in cands[0][1]


def test_cached_kernel_wide_refusal_skips_fentry_for_every_site() -> None:
    f = facts(kprobes=False, verdicts={"fentry": EPERM})
    assert order(ONE, f) == ["raw_tracepoint", "tracepoint"]
    assert skipped(ONE, f)["fentry"].startswith("refused on this boot: ")


def test_per_function_verdict_only_rules_out_that_function() -> None:
    f = facts(verdicts={"kprobe:getname_flags": NOTRACE})
    assert order(ONE, f)[:2] == ["fentry", "kprobe"]
    assert "kprobe" not in order(TWO, facts(sites=TWO, verdicts=f.verdicts))


def test_successes_do_not_rule_anything_out() -> None:
    ok = CheckResult(True, "loaded and attached")
    assert order(ONE, facts(verdicts={"fentry": ok, "fentry:alloc_empty_file": ok}))[0] == "fentry"


def test_everything_refused_still_tries_the_tracepoint() -> None:
    bad = {b: EPERM for b in ("fentry", "kprobe", "raw_tracepoint", "tracepoint")}
    assert choose_backends(ONE, "auto", facts(verdicts=bad))[0] == [
        ("tracepoint", "last resort: every backend refused on this boot")
    ]


def test_requested_backend_ignores_facts() -> None:
    assert order(ONE, facts(btf=False, verdicts={"fentry": EPERM}), "fentry") == ["fentry"]
    with pytest.raises(AllocscopeError, match="exactly one site"):
        choose_backends(TWO, "fentry", facts(sites=TWO))
    with pytest.raises(AllocscopeError, match="unknown backend"):
        choose_backends(ONE, "uprobe", facts())


def test_only_stable_causes_become_verdicts() -> None:
    assert verdict_keys("fentry", "f", EPERM) == ["fentry", "fentry:f"]
    assert verdict_keys("kprobe", "f", NOTRACE) == ["kprobe:f"]
    no_events = CheckResult(False, "cannot open kprobe_events: No such file or directory")
    assert verdict_keys("kprobe", "f", no_events) == ["kprobe", "kprobe:f"]
    transient = CheckResult(False, "Cannot allocate memory")
    assert verdict_keys("raw_tracepoint", "f", transient) == []
    assert verdict_keys("kprobe", "f", transient) == []
    ok = CheckResult(True, "loaded and attached")
    assert verdict_keys("raw_tracepoint", "f", ok) == ["raw_tracepoint"]  # site-independent
    assert verdict_keys("tracepoint", "f", EPERM) == ["tracepoint"]
    assert verdict_keys("fentry", "f", CheckResult(True, "loaded and attached")) == ["fentry:f"]


# --- the cache file --------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the cache is root's (owner checks)")
BTF_FACTS = BTFFacts(
    True,
    {"size": 32, "object_size": 36},
    {tp: ["long unsigned int", "const void *"] for tp in RAW_TP_LAYOUTS},
)


@pytest.fixture
def cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(boot_cache, "boot_identity", lambda: ("boot-a", "6.99.0"))
    d = tmp_path / "run"
    return d / "boot-facts.json"


def saved(path: Path) -> BootCache:
    c = boot_cache.load(str(path))
    boot_cache.record_attempt(c, "fentry", ["alloc_empty_file"], EPERM)
    c.set_btf(BTF_FACTS)
    assert c.save() is None
    return c


@needs_root
def test_round_trip_and_modes(cache_file: Path) -> None:
    saved(cache_file)
    assert stat.S_IMODE(cache_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    c = boot_cache.load(str(cache_file))
    assert c.status == "loaded" and c.btf == BTF_FACTS
    assert set(c.verdicts) == {"fentry", "fentry:alloc_empty_file"}
    assert c.verdicts["fentry"].detail == EPERM.detail and not c.dirty
    boot_cache.record_attempt(
        c, "fentry", ["alloc_empty_file"], CheckResult(False, EPERM.detail, 2.0)
    )
    assert not c.dirty  # the same verdict again: a warm run writes nothing


@needs_root
def test_another_boot_invalidates(cache_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved(cache_file)
    monkeypatch.setattr(boot_cache, "boot_identity", lambda: ("boot-b", "6.99.0"))
    c = boot_cache.load(str(cache_file))
    assert c.verdicts == {} and c.btf is None and "another boot" in c.status
    monkeypatch.setattr(boot_cache, "boot_identity", lambda: ("boot-a", "7.0.0"))
    assert boot_cache.load(str(cache_file)).verdicts == {}  # same id, other kernel: no


@needs_root
@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": 99}',
        json.dumps({"format": 1, "boot_id": "boot-a", "release": "6.99.0", "verdicts": []}),
        json.dumps(
            {
                "format": 1,
                "boot_id": "boot-a",
                "release": "6.99.0",
                "verdicts": {"fentry": {"ok": "no", "detail": 1}},
            }
        ),
        json.dumps(
            {
                "format": 1,
                "boot_id": "boot-a",
                "release": "6.99.0",
                "verdicts": {},
                "btf": {"present": True, "kmem_cache": {"size": -1}, "raw_tp_args": {}},
            }
        ),
    ],
)
def test_corrupt_cache_is_absent(cache_file: Path, content: str | bytes) -> None:
    saved(cache_file)
    cache_file.write_bytes(content.encode() if isinstance(content, str) else content)
    c = boot_cache.load(str(cache_file))
    assert c.verdicts == {} and c.btf is None and c.status.startswith("ignored")
    assert c.dirty  # replaced by the next save, not trusted
    boot_cache.record_attempt(c, "fentry", ["f"], EPERM)
    assert c.save() is None and boot_cache.load(str(cache_file)).status == "loaded"


@needs_root
def test_foreign_owned_or_writable_file_is_ignored(cache_file: Path) -> None:
    saved(cache_file)
    os.chown(cache_file, 1234, 1234)
    assert "owned by uid 1234" in boot_cache.load(str(cache_file)).status
    os.chown(cache_file, 0, 0)
    os.chmod(cache_file, 0o622)
    c = boot_cache.load(str(cache_file))
    assert c.verdicts == {} and "others may write" in c.status


@needs_root
def test_lax_or_foreign_directory_is_ignored_and_not_written(cache_file: Path) -> None:
    saved(cache_file)
    os.chmod(cache_file.parent, 0o755)
    assert "mode 0755" in boot_cache.load(str(cache_file)).status
    os.chmod(cache_file.parent, 0o700)
    os.chown(cache_file.parent, 1234, 1234)
    c = boot_cache.load(str(cache_file))
    assert c.verdicts == {} and "owned by uid 1234" in c.status
    boot_cache.record_attempt(c, "fentry", ["f"], EPERM)
    before = cache_file.read_bytes()
    assert "owned by uid 1234" in (c.save() or "")
    assert cache_file.read_bytes() == before


@needs_root
def test_symlinks_are_not_followed(cache_file: Path, tmp_path: Path) -> None:
    saved(cache_file)
    target = tmp_path / "elsewhere.json"
    target.write_bytes(cache_file.read_bytes())
    cache_file.unlink()
    cache_file.symlink_to(target)
    c = boot_cache.load(str(cache_file))
    assert c.verdicts == {} and "symlink" in c.status
    boot_cache.record_attempt(c, "kprobe", ["f"], NOTRACE)
    assert c.save() is None
    assert not cache_file.is_symlink()  # the link was replaced, its target left alone
    assert json.loads(target.read_bytes())["verdicts"].keys() == {
        "fentry",
        "fentry:alloc_empty_file",
    }
    # a symlinked directory is refused too
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "linkdir"
    link.symlink_to(real)
    assert "not a directory" in boot_cache.load(str(link / "boot-facts.json")).status


@needs_root
def test_fifo_does_not_block(cache_file: Path) -> None:
    cache_file.parent.mkdir(mode=0o700)
    os.mkfifo(cache_file, 0o600)
    assert "not a regular file" in boot_cache.load(str(cache_file)).status


def test_disabled_and_unprivileged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(boot_cache.ENV, "off")
    assert boot_cache.load().status.startswith("disabled")
    monkeypatch.setenv(boot_cache.ENV, str(tmp_path / "x.json"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    c = boot_cache.load()
    assert c.status == "not root"
    c.record("fentry", EPERM)
    assert c.save() == "not root: the cache is root's" and not (tmp_path / "x.json").exists()


def test_btf_facts_validation_and_layout_checks() -> None:
    assert BTFFacts.from_dict(BTF_FACTS.to_dict()) == BTF_FACTS
    d = BTF_FACTS.to_dict()
    assert BTFFacts.from_dict({**d, "raw_tp_args": {"kfree": None}}) is None
    assert BTFFacts.from_dict({**d, "kmem_cache": {"size": True, "object_size": 1}}) is None
    assert BTF_FACTS.raw_args_match("kfree", {1: "const void *"})
    assert not BTF_FACTS.raw_args_match("kfree", {2: "size_t"})
    missing = BTFFacts(True, None, dict.fromkeys(RAW_TP_LAYOUTS))
    assert not missing.raw_args_match("kfree", {1: "const void *"})
    no_btf = BTFFacts(False, None, dict.fromkeys(RAW_TP_LAYOUTS))
    assert no_btf.raw_args_match("kfree", {1: "const void *"})  # documented layouts assumed


# --- early symbol resolution -----------------------------------------------------------------

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000100 t xas_alloc
ffffffff81000180 t xas_alloc.constprop.0
ffffffff81000180 t xas_alloc_alias
ffffffff81000190 d some_data
ffffffff81000200 T xas_create
ffffffff81000300 T alloc_empty_file
ffffffff81000300 T alloc_empty_file_noaccount
ffffffff81000340 T vfs_read
ffffffffc0000000 t foo_probe\t[foo]
ffffffffc0000100 t foo_other\t[foo]
"""


def test_quick_ranges_agree_with_the_table() -> None:
    table = Kallsyms.from_text(KALLSYMS)
    for name in ("xas_alloc", "alloc_empty_file", "vfs_read", "xas_create", "nothing"):
        quick = quick_ranges(KALLSYMS, name)
        assert quick is not None
        assert [(a, b) for a, b, _ in quick] == table.ranges(name), name
    assert quick_ranges(KALLSYMS, "foo_probe") is None  # a module's: the table decides
    unsorted = KALLSYMS.replace("ffffffff81000200 T xas_create", "ffffffff81000050 T xas_create")
    assert quick_ranges(unsorted, "xas_alloc.constprop.0") is None


def test_early_symbols_resolve_like_the_table() -> None:
    early = EarlySymbols(KALLSYMS)
    assert early.ranges("xas_alloc") == Kallsyms.from_text(KALLSYMS).ranges("xas_alloc")
    r = early.resolve(0xFFFFFFFF81000180)
    assert r is not None and r.name == "xas_alloc.constprop.0"
    assert early.ranges("foo_probe") == [(0xFFFFFFFFC0000000, 0xFFFFFFFFC0000100)]  # fallback
    assert early.full().resolve(0xFFFFFFFFC0000010) is not None
    with pytest.raises(CapabilityError, match="zero addresses"):
        EarlySymbols("0000000000000000 T _stext\n0000000000000000 t xas_alloc\n")


@needs_root
def test_doctor_seeds_and_refreshes_the_cache(
    cache_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from allocscope.collector.doctor import update_boot_cache

    monkeypatch.setenv(boot_cache.ENV, str(cache_file))
    monkeypatch.setattr(boot_cache, "btf_facts", lambda: BTF_FACTS)
    saved(cache_file)
    c = boot_cache.load()
    c.record("kprobe:getname_flags", NOTRACE)
    assert c.save() is None
    attach = {
        "fentry": EPERM,
        "kprobe": CheckResult(False, "not tried: not root"),
        "raw_tracepoint": CheckResult(True, "loaded and attached"),
    }
    state = update_boot_cache(attach)
    assert state.status == "loaded" and state.save_error is None
    # doctor's kernel-wide findings join what who-calls learnt; "not tried" is no verdict
    assert set(state.verdicts) == {
        "fentry",
        "fentry:alloc_empty_file",
        "fentry:vfs_read",
        "kprobe:getname_flags",
        "raw_tracepoint",
    }
    refreshed = update_boot_cache(None, refresh=True)
    assert refreshed.status == "refreshed" and refreshed.verdicts == {}
    assert refreshed.btf_cached and boot_cache.load().verdicts == {}


@needs_root
def test_overhead_exact_fails_before_compiling_when_fentry_was_refused(
    cache_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from allocscope.collector.sampler import Sampler, SamplerSettings
    from allocscope.probes import loader

    monkeypatch.setenv(boot_cache.ENV, str(cache_file))
    saved(cache_file)  # holds a kernel-wide fentry refusal

    def no_compile(self: loader.Probe) -> None:
        raise AssertionError("compiled a program although fentry was refused this boot")

    monkeypatch.setattr(loader.Probe, "__post_init__", no_compile)
    with pytest.raises(CapabilityError, match="refused earlier this boot"):
        Sampler(SamplerSettings(exact_function="__alloc_pages_noprof")).open()


@needs_root
def test_fentry_is_settled_with_bpf2_not_a_compile(
    cache_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settle_fentry asks the kernel once (a refusal becomes the kernel-wide verdict), keeps
    the answer, and does not ask again; an answer it cannot read leaves nothing behind."""
    asked: list[str] = []

    def check(fn: str) -> CheckResult | None:
        asked.append(fn)
        return CheckResult(False, "the kernel refused the program (EPERM): minimal fentry")

    monkeypatch.setattr(boot_cache, "fentry_load_check", check)
    c = boot_cache.load(str(cache_file))
    boot_cache.settle_fentry(c, "alloc_empty_file")
    assert asked == ["alloc_empty_file"]
    assert {"fentry", boot_cache.FENTRY_LOAD} <= set(c.verdicts)
    assert order(ONE, facts(verdicts=c.verdicts))[0] == "kprobe"
    boot_cache.settle_fentry(c, "getname_flags")
    assert asked == ["alloc_empty_file"]  # known for the kernel: not asked again
    unsure = boot_cache.load(str(cache_file.parent / "other.json"))
    monkeypatch.setattr(boot_cache, "fentry_load_check", lambda fn: None)
    boot_cache.settle_fentry(unsure, "alloc_empty_file")
    assert unsure.verdicts == {}  # unknown stays unknown: the compile will tell
