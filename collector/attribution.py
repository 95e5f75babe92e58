"""Stack -> caller: which frame of a sampled stack is "who called the allocation site".

A kernel stack sampled at an allocation tracepoint looks like (innermost first)::

    kmem_cache_alloc_lru_noprof      <- the allocator (skip)
    xas_alloc                        <- the site
    xas_create, xas_store            <- the site library's own machinery (skip)
    shmem_add_to_page_cache          <- the caller we report
    shmem_get_folio_gfp ...

The caller is the first frame *above the site frame* that is neither allocator machinery nor
part of the site's own library. Which frames count as "the site's library" is a default derived
from the site function's family (xarray's ``xas_*``/``xa_*``/``__xa_*``, the radix tree, IDR,
maple tree, ...) plus the user's ``--skip REGEX``. Functions outside a known family only skip
themselves (and their clones), so ``shmem_add_to_page_cache``'s caller is
``shmem_get_folio_gfp``, not something above every ``shmem_*`` frame.

Grouping uses clone-suffix-free names (:func:`allocscope.collector.site.canonical_function`), so
``getname_flags.part.0`` and ``getname_flags`` are one function.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from allocscope.collector.site import canonical_function

UNKNOWN = "[unknown]"
NO_CALLER = "[no caller]"

# Frames that are the allocator itself, or tracing/BPF plumbing between the hook and the site.
ALLOCATOR_FRAMES: tuple[str, ...] = (
    r"_*kmem_cache_alloc.*",
    r"_*kmalloc.*",
    r"_*kvmalloc.*",
    r"_*kvzalloc.*",
    r"_*kzalloc.*",
    r"_*kcalloc.*",
    r"_*krealloc.*",
    r"_*kmemdup.*",
    r"_*kstrdup.*",
    r"_*kstrndup.*",
    r"_*slab_alloc.*",
    r"_*do_kmalloc.*",
    r"alloc_slab_page|allocate_slab|new_slab|refill_.*sheaf.*|alloc_from_pcs.*",
    r"_*alloc_pages.*",
    r"_*folio_alloc.*",
    r"_*get_free_pages.*|get_zeroed_page.*",
    r"get_page_from_freelist|rmqueue.*|prep_new_page|post_alloc_hook",
    r".*_noprof",
    r"_*bpf_trace_.*|bpf_trace_run\d*|_*traceiter_.*|trace_call_bpf|perf_trace_.*|kprobe_.*",
    r"bpf_prog_.*|__bpf_prog_run.*|bpf_get_st(ack|ackid)(_.*)?",
)

# Library families: when the site function belongs to one, the whole family is machinery.
LIBRARY_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"_*(xas|xa)_.*", r"_*(xas|xa)_.*"),
    (r"_*radix_tree_.*", r"_*radix_tree_.*|_*xas_.*|_*xa_.*"),
    (r"_*(idr|ida)_.*", r"_*(idr|ida)_.*|_*radix_tree_.*|_*(xas|xa)_.*"),
    (r"_*(mas|mtree|mt|ma)_.*", r"_*(mas|mtree|mt|ma|mab)_.*"),
    (r"_*(rhashtable|rht|bucket_table)_.*", r"_*(rhashtable|rht|bucket_table)_.*"),
    (r"_*(kobject|kset)_.*", r"_*(kobject|kset)_.*"),
    (r"_*(sg|sgl)_.*", r"_*(sg|sgl)_.*"),
    (r"_*(kasprintf|kvasprintf)", r"_*k?v?asprintf.*"),
)


@dataclass(frozen=True, slots=True)
class SkipRules:
    """Compiled rules deciding which frames are machinery rather than callers."""

    site_functions: frozenset[str]
    pattern: re.Pattern[str]
    descriptions: tuple[str, ...]

    def is_machinery(self, function: str) -> bool:
        return function in self.site_functions or self.pattern.fullmatch(function) is not None


def default_skip_patterns(site_function: str) -> list[str]:
    """Allocator frames plus the site's library family, if it has one."""
    patterns = list(ALLOCATOR_FRAMES)
    name = canonical_function(site_function)
    for member, family in LIBRARY_FAMILIES:
        if re.fullmatch(member, name):
            patterns.append(family)
    return patterns


def build_skip_rules(
    site_functions: Iterable[str], extra: Sequence[str] = (), *, defaults: bool = True
) -> SkipRules:
    """Rules for a set of site functions; ``extra`` are user ``--skip`` regexes (full match).

    Raises ValueError naming a bad regex so the CLI can say which ``--skip`` is wrong.
    """
    sites = frozenset(canonical_function(f) for f in site_functions)
    patterns: list[str] = []
    if defaults:
        for f in sorted(sites):
            for p in default_skip_patterns(f):
                if p not in patterns:
                    patterns.append(p)
    for p in extra:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"--skip {p!r}: {e}") from None
        patterns.append(p)
    joined = "|".join(f"(?:{p})" for p in patterns) if patterns else r"(?!)"
    return SkipRules(sites, re.compile(joined), tuple(patterns))


@dataclass(frozen=True, slots=True)
class Attribution:
    """The caller of one stack: ``caller`` is the chain root-first (``a;b;caller``)."""

    caller: str
    chain: tuple[str, ...]  # innermost first: caller, its caller, ...
    site_found: bool


def attribute(frames: Sequence[str], rules: SkipRules, depth: int = 1) -> Attribution:
    """Pick the caller from ``frames`` (innermost first, clone-suffix-free names).

    The search starts just above the *outermost contiguous* site frame (recursion and clones
    of the site count as the site); when the site frame is not in the stack (a tail call, or a
    kprobe stack that starts above it), it starts at the top. Allocator/library frames are
    skipped from there; the first other frame is the caller and the ``depth - 1`` frames above
    it complete the chain.
    """
    names = [canonical_function(f) for f in frames]
    start = probe_frames(names)
    site_found = False
    for i, n in enumerate(names):
        if n in rules.site_functions:
            site_found = True
            start = i + 1
            while start < len(names) and names[start] in rules.site_functions:
                start += 1
            break
    for i in range(start, len(names)):
        if not rules.is_machinery(names[i]):
            chain = tuple(names[i : i + max(1, depth)])
            return Attribution(";".join(reversed(chain)), chain, site_found)
    return Attribution(NO_CALLER, (), site_found)


# The probe's own frames at the top of a stack: the BPF program, the tracepoint iterator,
# kprobe/ftrace handlers, fentry trampolines. They say how we looked, not who allocated.
_PROBE_FRAMES = re.compile(
    r"bpf_prog_.*|bpf_trace_run\d*|_*traceiter_.*|__bpf_trace_.*|trace_call_bpf|perf_trace_.*"
    r"|kprobe_.*|.*ftrace_handler|ftrace_.*|arch_ftrace_.*|bpf_trampoline_.*|__bpf_prog_enter.*"
    r"|\[unknown\]"
)
_PROBE_SCAN = 8


def probe_frames(frames: Sequence[str]) -> int:
    """How many frames at the top of ``frames`` belong to the probe itself.

    Only the first few frames are scanned: everything up to the deepest probe frame there is
    probe machinery (the BPF program's own symbol may resolve to anything when kallsyms was
    read before it was loaded).
    """
    cut = 0
    for i, f in enumerate(frames[:_PROBE_SCAN]):
        if _PROBE_FRAMES.fullmatch(canonical_function(f)):
            cut = i + 1
    return cut


def folded(frames: Sequence[str]) -> str:
    """A stack in flame-graph "folded" order: root first, ``;``-separated, probe frames cut."""
    return ";".join(canonical_function(f) for f in reversed(frames[probe_frames(frames) :]))
