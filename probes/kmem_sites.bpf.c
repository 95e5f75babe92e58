// SPDX-License-Identifier: GPL-2.0
/*
 * kmem_sites.bpf.c -- per-call-site bytes and calls from the kmem tracepoints, for
 * `allocscope top --live` on kernels without /proc/allocinfo (probes/kmem_sites.py; collector/top_live.py).
 *
 * Hooks (raw tracepoints unless said otherwise; args as of Linux 6.10+):
 *   kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp, node)  -> on_kmalloc
 *       (if BTF's btf_trace_kmalloc shows another argument layout, the classic tracepoint
 *       kmem:kmalloc is used instead: on_kmalloc_tp with TP_KMALLOC_*_OFF from its format)
 *   kmem_cache_alloc(call_site, ptr, s, gfp, node)              -> on_cache_alloc
 *       bytes = s->size, read at KMEM_CACHE_SIZE_OFF, the offset of `size` in the RUNNING
 *       kernel's struct kmem_cache, taken from BTF by probes/btf.py (the compile headers may
 *       be another release's). Without BTF, the classic tracepoint kmem:kmem_cache_alloc is
 *       used instead (on_cache_alloc_tp) and its record's bytes_alloc is read at the offsets
 *       TP_CACHE_{CALL_SITE,PTR,BYTES}_OFF parsed from its tracefs format file (~3x slower).
 *   mm_page_alloc(page, order, gfp, migratetype)               -> on_page_alloc
 *       no call_site: pages are counted under one pseudo site (call_site 0, SRC_PAGE),
 *       bytes = PAGE_SIZE_BYTES << order, plus counts per order. The caller is estimated
 *       from SAMPLED short stacks: every PAGE_STACK_SAMPLE-th page event per CPU walks
 *       PAGE_STACK_DEPTH frames with bpf_get_stack. A stack walk costs ~1.5-2 us, 10-20x the
 *       rest of the handler (~100-150 ns measured with kernel.bpf_stats_enabled on a 2-CPU
 *       VM), so 1-in-64 adds ~30 ns per page event on average while a few seconds of page
 *       traffic still gives hundreds of samples. A bounded depth also bounds the walk.
 *       PAGE_STACK_SAMPLE=0 turns stacks off; TRACK_PAGES=0 drops page events (used when
 *       their BTF signature is unexpected).
 *   with TRACK_FREES=1: kfree(call_site, ptr), kmem_cache_free(call_site, ptr, s),
 *       mm_page_free(page, order) -> on_kfree / on_cache_free / on_page_free
 *
 * Maps:
 *   sites        PERCPU_HASH {call_site, source} -> {calls, bytes, freed_calls, freed_bytes}
 *                      per CPU, so the hot path has no atomics and no cache line bouncing
 *                      between CPUs; Python sums the CPUs. SITES_MAX entries; a new site
 *                      when full is counted in CNT_SITES_FULL.
 *   live         HASH  object/page pointer -> {call_site, bytes, source}   (TRACK_FREES only)
 *                      LIVE_MAX entries, filled on alloc, consumed on free. With ADDR_SHIFT > 0
 *                      only objects whose address passes sampler_addr_kept() (1 in
 *                      2^ADDR_SHIFT, sampler.bpf.h) enter it, and a free whose address does
 *                      not pass returns before any lookup: what is still in it at the end,
 *                      times 2^ADDR_SHIFT, estimates each site's live bytes (user space;
 *                      collector/top_live.py), and frees do not touch `sites`. ADDR_SHIFT 0
 *                      is the exact mode: every object, frees matched into `sites`. Full: the object
 *                      is counted in CNT_LIVE_FULL (its free can then not be matched). An alloc
 *                      at a pointer still present means its free was missed (e.g. bulk frees
 *                      have no tracepoint): counted in CNT_STALE_PTR and overwritten.
 *   counters     PERCPU_ARRAY[NR_COUNTERS] u64, indices CNT_* below; Python sums the CPUs
 *                (declared in allocscope.bpf.h).
 *   page_orders  PERCPU_ARRAY[NR_ORDERS] u64: page allocations per order.
 *   page_stacks  HASH  struct page_stack (PAGE_STACK_DEPTH return addresses) -> samples
 *   stack_buf    PERCPU_ARRAY[1] struct page_stack: scratch for bpf_get_stack (too big for
 *                the 512-byte BPF stack at larger depths).
 *   stack_tick   PERCPU_ARRAY[1] u64: per-CPU page event count that drives the sampling.
 *
 * Not counted here: an event that fires while the same program already runs on that CPU
 * (e.g. an allocation in an interrupt during the handler) is skipped by the kernel and
 * counted in the program's recursion_misses (`bpftool prog show`).
 *
 * Filters: FILTER_TGID=n keeps allocations made while a thread of process n is current
 * (interrupt-context allocations are charged to whoever was running). Frees are never
 * filtered: whoever frees an object the filtered process allocated, it is no longer live.
 *
 * Settings (-D; keep the defaults in sync with probes/kmem_sites.py DEFAULT_*):
 *   SITES_MAX          size of sites (16384)
 *   LIVE_MAX           size of live (262144)
 *   TRACK_FREES        1 = hook the frees and keep live (1)
 *   ADDR_SHIFT         keep 1 in 2^ADDR_SHIFT addresses in live (5); 0 = every object (exact)
 *   ADDR_SALT          XORed into addresses before the hash (0; user space draws one per run)
 *   TRACK_PAGES        1 = hook mm_page_alloc (and mm_page_free) (1)
 *   FILTER_TGID        0 = all processes, else only this one (allocscope.bpf.h)
 *   PAGE_SIZE_BYTES    bytes of an order-0 page (4096)
 *   PAGE_STACK_SAMPLE  walk the stack of every N-th page event per CPU; 0 = never (64)
 *   PAGE_STACK_DEPTH   frames per sampled page stack (10)
 *   PAGE_STACKS_MAX    size of page_stacks (4096)
 *   KMEM_CACHE_SIZE_OFF  offset of size in struct kmem_cache; -1 (default) = not known, use
 *                      the classic kmem:kmem_cache_alloc tracepoint and TP_CACHE_*_OFF
 *   TP_CACHE_{CALL_SITE,PTR,BYTES}_OFF     kmem:kmem_cache_alloc record offsets (-1 = unset)
 *   TP_KMALLOC_{CALL_SITE,PTR,BYTES}_OFF   kmem:kmalloc record offsets; TP_KMALLOC_BYTES_OFF
 *                      >= 0 selects the classic tracepoint for kmalloc (-1 = raw tracepoint)
 */

#include <uapi/linux/ptrace.h>

#ifndef SITES_MAX
#define SITES_MAX 16384
#endif
#ifndef LIVE_MAX
#define LIVE_MAX 262144
#endif
#ifndef TRACK_FREES
#define TRACK_FREES 1
#endif
#ifndef TRACK_PAGES
#define TRACK_PAGES 1
#endif
#ifndef ADDR_SHIFT
#define ADDR_SHIFT 5
#endif
#ifndef ADDR_SALT
#define ADDR_SALT 0
#endif
#ifndef PAGE_SIZE_BYTES
#define PAGE_SIZE_BYTES 4096
#endif
#ifndef PAGE_STACK_SAMPLE
#define PAGE_STACK_SAMPLE 64
#endif
#ifndef PAGE_STACK_DEPTH
#define PAGE_STACK_DEPTH 10
#endif
#ifndef PAGE_STACKS_MAX
#define PAGE_STACKS_MAX 4096
#endif
/* Record offsets: 0 is a valid offset, so "not passed" is -1. */
#ifndef KMEM_CACHE_SIZE_OFF
#define KMEM_CACHE_SIZE_OFF (-1)
#endif
#ifndef TP_CACHE_CALL_SITE_OFF
#define TP_CACHE_CALL_SITE_OFF (-1)
#endif
#ifndef TP_CACHE_PTR_OFF
#define TP_CACHE_PTR_OFF (-1)
#endif
#ifndef TP_CACHE_BYTES_OFF
#define TP_CACHE_BYTES_OFF (-1)
#endif
#ifndef TP_KMALLOC_CALL_SITE_OFF
#define TP_KMALLOC_CALL_SITE_OFF (-1)
#endif
#ifndef TP_KMALLOC_PTR_OFF
#define TP_KMALLOC_PTR_OFF (-1)
#endif
#ifndef TP_KMALLOC_BYTES_OFF
#define TP_KMALLOC_BYTES_OFF (-1)
#endif

#if KMEM_CACHE_SIZE_OFF < 0 && \
	(TP_CACHE_CALL_SITE_OFF < 0 || TP_CACHE_PTR_OFF < 0 || TP_CACHE_BYTES_OFF < 0)
#error "kmem_sites.bpf.c needs KMEM_CACHE_SIZE_OFF, or all three TP_CACHE_*_OFF"
#endif
#if TP_KMALLOC_BYTES_OFF >= 0 && (TP_KMALLOC_CALL_SITE_OFF < 0 || TP_KMALLOC_PTR_OFF < 0)
#error "kmem_sites.bpf.c: TP_KMALLOC_BYTES_OFF needs TP_KMALLOC_{CALL_SITE,PTR}_OFF"
#endif

/* sources and counter indexes: keep in sync with probes/kmem_sites.py SOURCES, COUNTERS */
#define SRC_KMALLOC 0
#define SRC_CACHE 1
#define SRC_PAGE 2
#define NR_SOURCES 3

#define CNT_ALLOC 0
#define CNT_FREE 1
#define CNT_SITES_FULL 2
#define CNT_LIVE_FULL 3
#define CNT_STALE_PTR 4
#define CNT_FREE_UNMATCHED 5
#define CNT_STACK_SAMPLES 6
#define CNT_STACK_FAIL 7
#define CNT_STACKS_FULL 8
#define NR_COUNTERS 9
#define NR_ORDERS 16

/* counters, allocscope_task_wanted(), EEXIST */
#include "allocscope.bpf.h"
/* sampler_addr_kept() */
#include "sampler.bpf.h"

struct site_key {
	u64 call_site;
	u32 source;
	u32 pad;
};

struct site_val {
	u64 calls;
	u64 bytes;
	u64 freed_calls;
	u64 freed_bytes;
};

struct live_val {
	u64 call_site;
	u64 bytes;
	u32 source;
	u32 pad;
};

struct page_stack {
	u64 ip[PAGE_STACK_DEPTH];
};

BPF_PERCPU_HASH(sites, struct site_key, struct site_val, SITES_MAX);
BPF_PERCPU_ARRAY(page_orders, u64, NR_ORDERS);
#if TRACK_FREES
BPF_HASH(live, u64, struct live_val, LIVE_MAX);
#endif
#if PAGE_STACK_SAMPLE > 0
BPF_HASH(page_stacks, struct page_stack, u64, PAGE_STACKS_MAX);
BPF_PERCPU_ARRAY(stack_buf, struct page_stack, 1);
BPF_PERCPU_ARRAY(stack_tick, u64, 1);
#endif

/* counters[idx] += by on this CPU (no atomics needed); verbatim copy, see allocscope.bpf.h */
static __always_inline void allocscope_count(u32 idx, u64 by)
{
	u64 *c = counters.lookup(&idx);

	if (c)
		*c += by;
}

static __always_inline void account_alloc(u64 call_site, u64 ptr, u64 bytes, u32 source)
{
	struct site_key k = {.call_site = call_site, .source = source};
	struct site_val zero = {};
	struct site_val *v;

	allocscope_count(CNT_ALLOC, 1);
	v = sites.lookup_or_try_init(&k, &zero);
	if (!v) {
		allocscope_count(CNT_SITES_FULL, 1);
		return;
	}
	v->calls++; /* this CPU's copy: no atomics needed */
	v->bytes += bytes;
#if TRACK_FREES
#if ADDR_SHIFT > 0
	if (!sampler_addr_kept(ptr ^ (u64)ADDR_SALT, ADDR_SHIFT))
		return;
#endif
	struct live_val lv = {.call_site = call_site, .bytes = bytes, .source = source};
	int err = live.insert(&ptr, &lv);
	if (err == -EEXIST) {
		allocscope_count(CNT_STALE_PTR, 1);
		live.update(&ptr, &lv);
	} else if (err) {
		allocscope_count(CNT_LIVE_FULL, 1);
	}
#endif
}

#if TRACK_FREES
static __always_inline void account_free(u64 ptr)
{
	struct live_val *lv;
	struct site_key k = {};
	struct site_val zero = {};
	struct site_val *v;
	u64 bytes;

	if (ptr < 4096)
		return; /* kfree(NULL) and ZERO_SIZE_PTR are traced too */
	allocscope_count(CNT_FREE, 1);
#if ADDR_SHIFT > 0
	if (!sampler_addr_kept(ptr ^ (u64)ADDR_SALT, ADDR_SHIFT))
		return; /* cannot be in live: decided from the address alone */
#endif
	lv = live.lookup(&ptr);
	if (!lv) {
		allocscope_count(CNT_FREE_UNMATCHED, 1); /* allocated before the window, or filtered out */
		return;
	}
#if ADDR_SHIFT > 0
	live.delete(&ptr); /* live bytes are estimated from what stays in live */
#else
	k.call_site = lv->call_site;
	k.source = lv->source;
	bytes = lv->bytes;
	live.delete(&ptr);
	/* The freeing CPU may never have allocated at this site: create its copy. */
	v = sites.lookup_or_try_init(&k, &zero);
	if (v) {
		v->freed_calls++;
		v->freed_bytes += bytes;
	} else {
		allocscope_count(CNT_SITES_FULL, 1);
	}
#endif /* ADDR_SHIFT */
}
#endif

#if TP_KMALLOC_BYTES_OFF < 0
int on_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 ptr = ctx->args[1];

	if (!ptr || !allocscope_task_wanted())
		return 0;
	account_alloc(ctx->args[0], ptr, ctx->args[3], SRC_KMALLOC);
	return 0;
}
#else
int on_kmalloc_tp(void *ctx)
{
	u64 call_site = 0, ptr = 0, bytes = 0;

	if (!allocscope_task_wanted())
		return 0;
	bpf_probe_read_kernel(&ptr, sizeof(ptr), (char *)ctx + TP_KMALLOC_PTR_OFF);
	if (!ptr)
		return 0;
	bpf_probe_read_kernel(&call_site, sizeof(call_site), (char *)ctx + TP_KMALLOC_CALL_SITE_OFF);
	bpf_probe_read_kernel(&bytes, sizeof(bytes), (char *)ctx + TP_KMALLOC_BYTES_OFF);
	account_alloc(call_site, ptr, bytes, SRC_KMALLOC);
	return 0;
}
#endif

#if KMEM_CACHE_SIZE_OFF >= 0
int on_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 ptr = ctx->args[1];
	u32 size = 0;

	if (!ptr || !allocscope_task_wanted())
		return 0;
	bpf_probe_read_kernel(&size, sizeof(size), (char *)ctx->args[2] + KMEM_CACHE_SIZE_OFF);
	account_alloc(ctx->args[0], ptr, size, SRC_CACHE);
	return 0;
}
#else
int on_cache_alloc_tp(void *ctx)
{
	u64 call_site = 0, ptr = 0, bytes = 0;

	if (!allocscope_task_wanted())
		return 0;
	bpf_probe_read_kernel(&ptr, sizeof(ptr), (char *)ctx + TP_CACHE_PTR_OFF);
	if (!ptr)
		return 0;
	bpf_probe_read_kernel(&call_site, sizeof(call_site), (char *)ctx + TP_CACHE_CALL_SITE_OFF);
	bpf_probe_read_kernel(&bytes, sizeof(bytes), (char *)ctx + TP_CACHE_BYTES_OFF);
	account_alloc(call_site, ptr, bytes, SRC_CACHE);
	return 0;
}
#endif

#if TRACK_PAGES
int on_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 page = ctx->args[0];
	u32 order = (u32)ctx->args[1];
	u32 slot;
	u64 *n;

	if (!page || !allocscope_task_wanted())
		return 0;
	slot = order < NR_ORDERS ? order : NR_ORDERS - 1;
	n = page_orders.lookup(&slot);
	if (n)
		(*n)++;
	account_alloc(0, page, (u64)PAGE_SIZE_BYTES << (order & 31), SRC_PAGE);
#if PAGE_STACK_SAMPLE > 0
	u32 zero = 0;
	u64 *tick = stack_tick.lookup(&zero);
	if (!tick)
		return 0;
	if ((*tick)++ % PAGE_STACK_SAMPLE)
		return 0;
	struct page_stack *st = stack_buf.lookup(&zero);
	if (!st)
		return 0;
	if (bpf_get_stack(ctx, st->ip, sizeof(st->ip), 0) <= 0) {
		allocscope_count(CNT_STACK_FAIL, 1);
		return 0;
	}
	allocscope_count(CNT_STACK_SAMPLES, 1);
	u64 init = 0;
	u64 *c = page_stacks.lookup_or_try_init(st, &init);
	if (c)
		__sync_fetch_and_add(c, 1);
	else
		allocscope_count(CNT_STACKS_FULL, 1);
#endif
	return 0;
}
#endif /* TRACK_PAGES */

#if TRACK_FREES
int on_kfree(struct bpf_raw_tracepoint_args *ctx)
{
	account_free(ctx->args[1]);
	return 0;
}

int on_cache_free(struct bpf_raw_tracepoint_args *ctx)
{
	account_free(ctx->args[1]);
	return 0;
}

#if TRACK_PAGES
int on_page_free(struct bpf_raw_tracepoint_args *ctx)
{
	account_free(ctx->args[0]);
	return 0;
}
#endif /* TRACK_PAGES */
#endif /* TRACK_FREES */
