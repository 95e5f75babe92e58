"""Stack -> caller attribution: skip rules, site frame search, clones, depth."""

from __future__ import annotations

import pytest

from allocscope.collector.attribution import (
    NO_CALLER,
    attribute,
    build_skip_rules,
    default_skip_patterns,
    folded,
    probe_frames,
)

# The stack of a tmpfs write reaching xas_alloc (innermost first), as seen on 6.12/7.3.
XAS_STACK = [
    "kmem_cache_alloc_lru_noprof",
    "xas_alloc",
    "xas_create",
    "xas_store",
    "shmem_add_to_page_cache",
    "shmem_get_folio_gfp",
    "shmem_write_begin",
    "generic_perform_write",
    "shmem_file_write_iter",
    "vfs_write",
]


def test_xas_alloc_caller_skips_xarray_internals() -> None:
    rules = build_skip_rules(["xas_alloc"])
    a = attribute(XAS_STACK, rules)
    assert a.caller == "shmem_add_to_page_cache"
    assert a.site_found


def test_depth_gives_root_first_chain() -> None:
    rules = build_skip_rules(["xas_alloc"])
    a = attribute(XAS_STACK, rules, depth=3)
    assert a.chain == ("shmem_add_to_page_cache", "shmem_get_folio_gfp", "shmem_write_begin")
    assert a.caller == "shmem_write_begin;shmem_get_folio_gfp;shmem_add_to_page_cache"


def test_user_skip_moves_one_level_up() -> None:
    rules = build_skip_rules(["xas_alloc"], [r"shmem_add_.*"])
    assert attribute(XAS_STACK, rules).caller == "shmem_get_folio_gfp"


def test_bad_skip_regex_names_it() -> None:
    with pytest.raises(ValueError, match=r"--skip '\(unclosed'"):
        build_skip_rules(["xas_alloc"], ["(unclosed"])


def test_clone_suffixes_group_with_the_function() -> None:
    # The getname_flags call site lives in a GCC clone on 6.18.
    stack = [
        "kmem_cache_alloc_noprof",
        "getname_flags.part.0",
        "vfs_fstatat",
        "__do_sys_newfstatat",
        "do_syscall_64",
    ]
    a = attribute(stack, build_skip_rules(["getname_flags"]))
    assert a.caller == "vfs_fstatat" and a.site_found
    b = attribute(["kmalloc_noprof", "foo", "bar.isra.0", "baz"], build_skip_rules(["foo"]))
    assert b.caller == "bar"


def test_non_library_site_skips_only_itself() -> None:
    # A function-entry (kprobe) stack starts at the site itself; shmem_* is not a library.
    stack = ["shmem_add_to_page_cache", "shmem_get_folio_gfp", "shmem_write_begin"]
    assert (
        attribute(stack, build_skip_rules(["shmem_add_to_page_cache"])).caller
        == "shmem_get_folio_gfp"
    )
    assert not any("shmem" in p for p in default_skip_patterns("shmem_add_to_page_cache"))


def test_recursive_site_frames_count_as_the_site() -> None:
    stack = [
        "__kmalloc_noprof",
        "mas_alloc_nodes",
        "mas_alloc_nodes",
        "mas_preallocate",
        "vma_expand",
        "do_brk_flags",
    ]
    assert attribute(stack, build_skip_rules(["mas_alloc_nodes"])).caller == "vma_expand"


def test_site_missing_from_stack_starts_at_the_top() -> None:
    # Tail-called site: the call_site matched but the frame is gone.
    stack = ["kmem_cache_alloc_noprof", "trace_call_bpf", "path_openat", "do_filp_open"]
    a = attribute(stack, build_skip_rules(["alloc_empty_file"]))
    assert a.caller == "path_openat" and not a.site_found


def test_all_machinery_means_no_caller() -> None:
    a = attribute(["kmalloc_noprof", "xas_alloc", "xas_create"], build_skip_rules(["xas_alloc"]))
    assert a.caller == NO_CALLER and a.chain == ()


def test_defaults_can_be_disabled() -> None:
    rules = build_skip_rules(["xas_alloc"], defaults=False)
    assert attribute(XAS_STACK, rules).caller == "xas_create"


def test_folded_is_root_first_and_clone_free() -> None:
    assert folded(["a.constprop.0", "b", "c"]) == "c;b;a"


def test_probe_frames_are_cut_from_the_top() -> None:
    # A raw-tracepoint stack as walked on 6.18: the BPF program (mis-resolved to another
    # program's symbol because kallsyms was read before ours loaded), the iterator, then the
    # allocator.
    stack = [
        "bpf_prog_d542a7b92c5cec4b_count_page_alloc",
        "bpf_trace_run5",
        "__traceiter_kmem_cache_alloc",
        "kmem_cache_alloc_noprof",
        "getname_flags.part.0",
        "do_sys_openat2",
        "__x64_sys_openat",
    ]
    assert probe_frames(stack) == 3
    assert folded(stack) == "__x64_sys_openat;do_sys_openat2;getname_flags;kmem_cache_alloc_noprof"
    assert attribute(stack, build_skip_rules(["getname_flags"])).caller == "do_sys_openat2"
    assert probe_frames(XAS_STACK) == 0
