"""who-calls on real allocation-profiling kernels (run inside vmrun).

* ``xas_alloc`` is in ``lib/`` (notrace): the tracepoint road with the call_site filter, and
  the exact allocinfo tag read from ``current->alloc_tag`` in the probe, joined to allocinfo.
* ``shmem_add_to_page_cache`` (``mm/``) is traceable: fentry/kprobe on the function itself.

Three BCC programs in all (~10 s each under emulation).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from allocscope.collector import workloads
from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.who_calls import Options, capture
from allocscope.probes.who_calls import TRACEPOINT_FAMILY

pytestmark = pytest.mark.vm


def xas_alloc_line(path: Path) -> str:
    snap = read_allocinfo(str(path))
    tags = [r.site.tag for r in snap.records if r.site.function == "xas_alloc"]
    assert len(tags) == 1, tags
    return tags[0]


def test_xas_alloc_exact_tag_and_allocinfo_join(allocinfo_path: Path, tmp_path: Path) -> None:
    tag = xas_alloc_line(allocinfo_path)
    assert re.fullmatch(r"lib/xarray\.c:\d+ func:xas_alloc", tag)
    r = capture(Options(sites=["xas_alloc"], sample=1, during=lambda: workloads.tmpfs_write(48)))
    p = r.payload
    assert p["backend"] in TRACEPOINT_FAMILY  # lib/ is notrace: no fentry/kprobe there
    assert p["tag_mode"] == "exact-tag"
    site = p["sites"][0]
    assert site["tag"] == tag and site["tags_seen"] == [tag]
    top = p["callers"][0]
    assert top["caller"] == "shmem_add_to_page_cache" and top["share"] >= 0.8
    assert top["tag"] == tag
    join = p["allocinfo"]
    assert join["match"] == "exact-tag" and join["tags"] == [tag]
    assert join["after"]["bytes"] > 0 and join["before"] is not None
    assert top["joined_bytes"] == round(join["after"]["bytes"] * top["samples"] / site["stacks"])
    assert site["total_bytes"] > 0  # kmem_cache size from BTF (or the kernel's own headers)
    r.write(str(tmp_path / "who.json"))


def test_shmem_add_to_page_cache_function_entry_backend(tmp_path: Path) -> None:
    mib = 16
    r = capture(
        Options(
            sites=["shmem_add_to_page_cache"], sample=1, during=lambda: workloads.tmpfs_write(mib)
        )
    )
    p = r.payload
    assert p["backend"] in ("fentry", "kprobe"), p["notes"]
    assert p["total_calls"] >= (mib << 20) // 4096  # one call per new page
    assert p["callers"][0]["caller"] == "shmem_get_folio_gfp", p["callers"][:3]


def test_shmem_add_to_page_cache_kprobe(tmp_path: Path) -> None:
    r = capture(
        Options(
            sites=["shmem_add_to_page_cache"],
            sample=1,
            backend="kprobe",
            during=lambda: workloads.tmpfs_write(8),
        )
    )
    p = r.payload
    assert p["backend"] == "kprobe"
    assert p["total_calls"] >= (8 << 20) // 4096
    assert p["callers"][0]["caller"] == "shmem_get_folio_gfp", p["callers"][:3]
