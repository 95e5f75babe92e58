// SPDX-License-Identifier: GPL-2.0
/*
 * context.bpf.c -- every allocation tag at once, sampled by bytes (allocscope context).
 *
 * Per allocation event (slab object or pages), in this order:
 *   1. optional task filter (FILTER_TGID / FILTER_COMM0/1) and site filter (SITE_OF on the
 *      slab events' call_site, SITE_FILTER=1; page events are then not hooked);
 *   2. per-CPU counters: events and bytes per hook (exact: the census of the window);
 *   3. byte_sampler_hits() (sampler.bpf.h): a per-CPU countdown puts on average one sample
 *      point per R bytes; R is read from `config` (user space adapts it to a CPU budget);
 *   4. only on a hit: walk the stack, read the exact tag (READ_ALLOC_TAG), decide whether
 *      the allocation is charged to a memcg, and add the hit's weights to
 *      samples[{site, stack, source, charged}] with atomic adds.
 * Everything before 4 is a few loads and adds; 4 costs ~1.5-2 us (the stack walk) and is
 * what R bounds.
 *
 * Hooks (args as of Linux 6.10+; probes/context.py checks them against BTF and falls back to
 * the classic tracepoints, whose record offsets come from tracefs, per event):
 *   kmem_cache_alloc(call_site, ptr, s, gfp, node)     on_kmem_cache_alloc (raw)
 *       bytes = s->size at KMEM_CACHE_SIZE_OFF; charged = gfp & GFP_ACCOUNT_MASK or
 *       s->flags & SLAB_ACCOUNT_MASK (s->flags at CACHE_FLAGS_OFF, CACHE_FLAGS_SIZE bytes)
 *   kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp, node)   on_kmalloc (raw)
 *       bytes = bytes_alloc; charged = gfp & GFP_ACCOUNT_MASK
 *   mm_page_alloc(page, order, gfp, migratetype)       on_mm_page_alloc (raw)
 *       bytes = PAGE_SIZE_BYTES << order; no call_site: the site is found in user space
 *       from the sampled stack (first frame past the page allocator); charged as kmalloc
 *   on_kmem_cache_alloc_tp / on_kmalloc_tp / on_mm_page_alloc_tp: the classic tracepoints,
 *       record fields at TP_KCA_* / TP_KM_* / TP_PA_* offsets (kmem_cache_alloc's record
 *       has `accounted`, the kernel's own verdict, at TP_KCA_ACCOUNTED)
 *
 * Settings (-D; switches default to 0 and are tested with #if; offsets default to -1):
 *   KMEM_CACHE_SIZE_OFF   offset of kmem_cache.size (BTF); -1 = unknown: bytes count 0
 *   CACHE_FLAGS_OFF       offset of kmem_cache.flags (BTF); -1 = SLAB_ACCOUNT not read
 *   CACHE_FLAGS_SIZE      its size in bytes: 4 (v6.10+) or 8
 *   GFP_ACCOUNT_MASK      __GFP_ACCOUNT (1 << ___GFP_ACCOUNT_BIT, BTF); 0 = unknown
 *   SLAB_ACCOUNT_MASK     SLAB_ACCOUNT (1 << _SLAB_ACCOUNT, BTF); 0 = unknown
 *   PAGE_SIZE_BYTES       the page size (4096)
 *   TP_KCA_CALL_SITE, TP_KCA_BYTES, TP_KCA_GFP, TP_KCA_ACCOUNTED,
 *   TP_KM_CALL_SITE, TP_KM_BYTES, TP_KM_GFP, TP_PA_ORDER, TP_PA_GFP   classic record offsets
 *   SITE_FILTER           1 = only slab events whose call_site SITE_OF() matches
 *   SITE_OF(a)            expression -> site index (>0) for a matching address, else 0
 *   READ_ALLOC_TAG        1 = key samples by current->alloc_tag (needs ALLOCSCOPE_HEADERS_MATCH)
 *   STACK_ENTRIES         stacks map size (8192)
 *   STACK_DEPTH           frames kept per stack (32: the probe, allocator and site frames
 *                         and a dozen callers; deeper ones are cut)
 *   SAMPLE_ENTRIES        samples map size (16384)
 *   TAGS_MAX              tags map size (4096)
 *
 * Maps:
 *   config    ARRAY[1] struct ctx_config {rate}: the mean gap R in bytes user space wants now.
 *   cpu       PERCPU_ARRAY[1] struct cpu_state: the byte sampler's state plus the window's
 *             exact counters (events and bytes per source, hits, stack_err, hash_full): one
 *             lookup per event, no atomics.
 *   stacks    STACK_TRACE[STACK_ENTRIES] of STACK_DEPTH frames: stacks of sampled events.
 *   samples   HASH struct sample_key -> struct sample_weight (sampler.bpf.h): per (tag or
 *             call_site, stack id, source, charged) the sums the estimators need. A hit
 *             whose stack walk failed is kept under stack id -1 (its site is still known
 *             for slab events) and counted in stack_err; a hit dropped because the hash is
 *             full is counted in hash_full. Never silent.
 *   tags      HASH tag address -> struct tag_info (READ_ALLOC_TAG only)
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#ifndef KMEM_CACHE_SIZE_OFF
#define KMEM_CACHE_SIZE_OFF (-1)
#endif
#ifndef CACHE_FLAGS_OFF
#define CACHE_FLAGS_OFF (-1)
#endif
#ifndef CACHE_FLAGS_SIZE
#define CACHE_FLAGS_SIZE 4
#endif
#ifndef GFP_ACCOUNT_MASK
#define GFP_ACCOUNT_MASK 0
#endif
#ifndef SLAB_ACCOUNT_MASK
#define SLAB_ACCOUNT_MASK 0
#endif
#ifndef PAGE_SIZE_BYTES
#define PAGE_SIZE_BYTES 4096
#endif
#ifndef TP_KCA_CALL_SITE
#define TP_KCA_CALL_SITE (-1)
#endif
#ifndef TP_KCA_BYTES
#define TP_KCA_BYTES (-1)
#endif
#ifndef TP_KCA_GFP
#define TP_KCA_GFP (-1)
#endif
#ifndef TP_KCA_ACCOUNTED
#define TP_KCA_ACCOUNTED (-1)
#endif
#ifndef TP_KM_CALL_SITE
#define TP_KM_CALL_SITE (-1)
#endif
#ifndef TP_KM_BYTES
#define TP_KM_BYTES (-1)
#endif
#ifndef TP_KM_GFP
#define TP_KM_GFP (-1)
#endif
#ifndef TP_PA_ORDER
#define TP_PA_ORDER (-1)
#endif
#ifndef TP_PA_GFP
#define TP_PA_GFP (-1)
#endif
#ifndef SITE_FILTER
#define SITE_FILTER 0
#endif
#ifndef SITE_OF
#define SITE_OF(a) 1
#endif
#ifndef READ_ALLOC_TAG
#define READ_ALLOC_TAG 0
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 8192
#endif
#ifndef STACK_DEPTH
#define STACK_DEPTH 32
#endif
#ifndef SAMPLE_ENTRIES
#define SAMPLE_ENTRIES 16384
#endif
#ifndef TAGS_MAX
#define TAGS_MAX 4096
#endif

/* Sources (index into cpu_state.events/bytes); mirrored in probes/context.py SOURCES. */
#define SRC_KMALLOC 0
#define SRC_CACHE 1
#define SRC_PAGE 2
#define NR_SOURCES 3

/* charged: 0 = not charged, 1 = charged, 2 = unknown (no charge bit on this kernel) */
#define CHARGED_NO 0
#define CHARGED_YES 1
#define CHARGED_UNKNOWN 2

#include "allocscope.bpf.h"
#include "sampler.bpf.h"

#define READ_TAG (ALLOCSCOPE_HEADERS_MATCH && READ_ALLOC_TAG)
#if READ_TAG
#include <linux/alloc_tag.h>
#endif

struct ctx_config {
	u64 rate;
};

struct cpu_state {
	struct byte_sampler smp;
	u64 events[NR_SOURCES];
	u64 bytes[NR_SOURCES];
	u64 hits;
	u64 stack_err;
	u64 hash_full;
};

struct sample_key {
	u64 site; /* alloc_tag address (is_tag), else call_site (0 for pages) */
	s32 stackid;
	u8 source;
	u8 charged;
	u8 is_tag;
	u8 pad;
};

struct ctx_stack {
	u64 ip[STACK_DEPTH];
};

struct tag_info {
	char file[96];
	char function[64];
	u32 line;
};

BPF_ARRAY(config, struct ctx_config, 1);
BPF_PERCPU_ARRAY(cpu, struct cpu_state, 1);
BPF_TABLE("stacktrace", int, struct ctx_stack, stacks, STACK_ENTRIES);
BPF_HASH(samples, struct sample_key, struct sample_weight, SAMPLE_ENTRIES);
#if READ_TAG
BPF_HASH(tags, u64, struct tag_info, TAGS_MAX);
#endif

/*
 * current->alloc_tag, its codetag copied into tags the first time it is seen. It reads this
 * program's tags map, so BCC cannot take it from a header: the same text is in who_calls.bpf.c,
 * context.bpf.c and lifespan.bpf.c (tests/unit/test_bpf_constants.py fails when they differ).
 */
static __always_inline u64 current_tag(void)
{
#if READ_TAG
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct alloc_tag *tag = NULL;
	bpf_probe_read_kernel(&tag, sizeof(tag), &task->alloc_tag);
	u64 addr = (u64)tag;
	if (addr && !tags.lookup(&addr)) {
		struct tag_info info = {};
		const char *file = NULL, *function = NULL;
		unsigned int line = 0;
		bpf_probe_read_kernel(&file, sizeof(file), &tag->ct.filename);
		bpf_probe_read_kernel(&function, sizeof(function), &tag->ct.function);
		bpf_probe_read_kernel(&line, sizeof(line), &tag->ct.lineno);
		bpf_probe_read_kernel_str(&info.file, sizeof(info.file), file);
		bpf_probe_read_kernel_str(&info.function, sizeof(info.function), function);
		info.line = line;
		tags.update(&addr, &info);
	}
	return addr;
#else
	return 0;
#endif
}

/* The slow path, on sample points only: stack, tag, aggregation. */
static __always_inline void sample(void *ctx, struct cpu_state *st, struct sample_weight *w,
				   u32 src, u64 call_site, u8 charged)
{
	struct sample_key key = {};

	key.source = src;
	key.charged = charged;
	key.stackid = stacks.get_stackid(ctx, 0);
	if (key.stackid < 0) {
		st->stack_err += w->hits;
		key.stackid = -1;
	}
	u64 tag = current_tag();
	if (tag) {
		key.site = tag;
		key.is_tag = 1;
	} else {
		key.site = call_site;
	}
	struct sample_weight zero = {};
	/* a key another CPU inserted meanwhile is found by the second lookup; NULL = full */
	struct sample_weight *v = samples.lookup_or_try_init(&key, &zero);
	if (!v) {
		st->hash_full += w->hits;
		return;
	}
	__sync_fetch_and_add(&v->hits, w->hits);
	__sync_fetch_and_add(&v->bytes_w, w->bytes_w);
	__sync_fetch_and_add(&v->bytes_w2, w->bytes_w2);
	__sync_fetch_and_add(&v->calls_w, w->calls_w);
	__sync_fetch_and_add(&v->calls_w2, w->calls_w2);
}

/* The fast path, every event: counters and the byte sampler. Returns the state on a hit. */
static __always_inline struct cpu_state *count(u32 src, u64 bytes, struct sample_weight *w)
{
	u32 zero = 0;

	if (!allocscope_task_wanted())
		return NULL;
	struct cpu_state *st = cpu.lookup(&zero);
	if (!st)
		return NULL;
	struct ctx_config *cfg = config.lookup(&zero);
	if (!cfg)
		return NULL;
	st->events[src & 3]++;
	st->bytes[src & 3] += bytes;
	if (!byte_sampler_hits(&st->smp, bytes, cfg->rate, w))
		return NULL;
	st->hits += w->hits;
	return st;
}

static __always_inline u8 gfp_charged(u64 gfp)
{
#if GFP_ACCOUNT_MASK
	return (gfp & (u64)GFP_ACCOUNT_MASK) ? CHARGED_YES : CHARGED_NO;
#else
	return CHARGED_UNKNOWN;
#endif
}

static __always_inline u8 cache_charged(u64 gfp, u64 cache)
{
	u8 c = gfp_charged(gfp);
	if (c == CHARGED_YES)
		return c;
#if CACHE_FLAGS_OFF >= 0 && SLAB_ACCOUNT_MASK
	u64 flags = 0;
	bpf_probe_read_kernel(&flags, CACHE_FLAGS_SIZE, (void *)(cache + CACHE_FLAGS_OFF));
	return (flags & (u64)SLAB_ACCOUNT_MASK) ? CHARGED_YES : CHARGED_NO;
#else
	return CHARGED_UNKNOWN;
#endif
}

/* kmem_cache_alloc(call_site, ptr, struct kmem_cache *s, gfp, node) */
int on_kmem_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 call_site = ctx->args[0];
#if SITE_FILTER
	if (!(SITE_OF(call_site)))
		return 0;
#endif
	u64 cache = ctx->args[2];
	u32 size = 0;
#if KMEM_CACHE_SIZE_OFF >= 0
	bpf_probe_read_kernel(&size, sizeof(size), (void *)(cache + KMEM_CACHE_SIZE_OFF));
#endif
	struct sample_weight w = {};
	struct cpu_state *st = count(SRC_CACHE, size, &w);
	if (st)
		sample(ctx, st, &w, SRC_CACHE, call_site, cache_charged(ctx->args[3], cache));
	return 0;
}

/* kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp, node) */
int on_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 call_site = ctx->args[0];
#if SITE_FILTER
	if (!(SITE_OF(call_site)))
		return 0;
#endif
	struct sample_weight w = {};
	struct cpu_state *st = count(SRC_KMALLOC, ctx->args[3], &w);
	if (st)
		sample(ctx, st, &w, SRC_KMALLOC, call_site, gfp_charged(ctx->args[4]));
	return 0;
}

/* mm_page_alloc(page, order, gfp, migratetype) */
int on_mm_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	u32 order = ctx->args[1];
	struct sample_weight w = {};
	struct cpu_state *st = count(SRC_PAGE, (u64)PAGE_SIZE_BYTES << (order & 31), &w);
	if (st)
		sample(ctx, st, &w, SRC_PAGE, 0, gfp_charged(ctx->args[2]));
	return 0;
}

/* The classic tracepoints: the same, fields read from the record at tracefs offsets. */
#define TP_FIELD(ctx, off, type) (*(type *)((char *)(ctx) + (off)))

#if TP_KCA_CALL_SITE >= 0 && TP_KCA_BYTES >= 0 && TP_KCA_GFP >= 0
int on_kmem_cache_alloc_tp(void *ctx)
{
	u64 call_site = TP_FIELD(ctx, TP_KCA_CALL_SITE, u64);
#if SITE_FILTER
	if (!(SITE_OF(call_site)))
		return 0;
#endif
	struct sample_weight w = {};
	struct cpu_state *st = count(SRC_CACHE, TP_FIELD(ctx, TP_KCA_BYTES, u64), &w);
	if (!st)
		return 0;
#if TP_KCA_ACCOUNTED >= 0
	u8 charged = TP_FIELD(ctx, TP_KCA_ACCOUNTED, u8) ? CHARGED_YES : CHARGED_NO;
#else
	u8 charged = gfp_charged(TP_FIELD(ctx, TP_KCA_GFP, u64));
#endif
	sample(ctx, st, &w, SRC_CACHE, call_site, charged);
	return 0;
}
#endif

#if TP_KM_CALL_SITE >= 0 && TP_KM_BYTES >= 0 && TP_KM_GFP >= 0
int on_kmalloc_tp(void *ctx)
{
	u64 call_site = TP_FIELD(ctx, TP_KM_CALL_SITE, u64);
#if SITE_FILTER
	if (!(SITE_OF(call_site)))
		return 0;
#endif
	struct sample_weight w = {};
	struct cpu_state *st = count(SRC_KMALLOC, TP_FIELD(ctx, TP_KM_BYTES, u64), &w);
	if (st)
		sample(ctx, st, &w, SRC_KMALLOC, call_site,
		       gfp_charged(TP_FIELD(ctx, TP_KM_GFP, u64)));
	return 0;
}
#endif

#if TP_PA_ORDER >= 0 && TP_PA_GFP >= 0
int on_mm_page_alloc_tp(void *ctx)
{
	u32 order = TP_FIELD(ctx, TP_PA_ORDER, u32);
	struct sample_weight w = {};
	struct cpu_state *st = count(SRC_PAGE, (u64)PAGE_SIZE_BYTES << (order & 31), &w);
	if (st)
		sample(ctx, st, &w, SRC_PAGE, 0, gfp_charged(TP_FIELD(ctx, TP_PA_GFP, u64)));
	return 0;
}
#endif
