// SPDX-License-Identifier: GPL-2.0
/*
 * lifespan.bpf.c -- sampled allocations followed to their free (allocscope lifespan / leaks;
 * probes/lifespan.py, collector/lifespan.py; method in docs/design/lifespan.md).
 *
 * An allocation is TRACKED iff its address passes sampler_addr_kept(addr, ADDR_SHIFT) (1 in
 * 2^ADDR_SHIFT addresses, a hash of the pointer) AND the byte sampler (sampler.bpf.h, mean
 * gap SAMPLE_RATE bytes) puts at least one point on it. Its weights are the byte sampler's
 * multiplied by 2^ADDR_SHIFT (variances by 2^(2*ADDR_SHIFT)): Horvitz-Thompson with the
 * product of the two inclusion probabilities, since the hash does not depend on the sizes.
 *
 * The free path decides from the pointer alone, before any map lookup: a free whose address
 * fails the hash cannot be a tracked object and returns after one multiply and a compare
 * (plus a per-CPU counter). A kept free looks the object up; found, its lifespan (ns since
 * its allocation) goes into the per-(site, tag, stack) log2 histogram and it is deleted.
 *
 * Hooks (raw tracepoints; args as of Linux 6.10+; classic kmem:kmalloc/kmem_cache_alloc
 * with record offsets from tracefs when BTF shows another layout, as kmem_sites.bpf.c):
 *   kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp, node)     -> on_kmalloc
 *   kmem_cache_alloc(call_site, ptr, s, gfp, node)                 -> on_cache_alloc
 *       bytes = s->size at KMEM_CACHE_SIZE_OFF (from the running kernel's BTF)
 *   mm_page_alloc(page, order, gfp, migratetype)                   -> on_page_alloc
 *       site 0 (pages have no call_site); bytes = PAGE_SIZE_BYTES << order
 *   kfree(call_site, ptr), kmem_cache_free(call_site, ptr, s)      -> on_kfree/on_cache_free
 *   mm_page_free(page, order), mm_page_free_batched(page)          -> on_page_free(_batched)
 * Frees with no tracepoint (kmem_cache_free_bulk/kfree_bulk, slab frees through RCU sheaves
 * or the kvfree_rcu batch when they bypass kfree's tracepoint) leave the object tracked: when
 * its address is allocated again (by a task the filter keeps) it is counted as a MISSED FREE
 * (CNT_MISSED_FREE, and per key) and dropped. Until that reuse it is still tracked: read as
 * live (and aging) at the end of the window, so it can show as a false leak.
 *
 * Pages are sampled by bytes too, but with their own mean gap PAGE_SAMPLE_RATE (4x the slab
 * gap by default) on their own sampler stream: at R = 4096 a 4 KiB page holds a point 63% of
 * the time, so nearly every kept page paid a ~2 us stack walk, and on_page_alloc cost 138 ns
 * per event against the floor's 35 (docs/benchmarks.md, 2026-12-07). A second stream keeps
 * each renewal process on one R, so both stay unbiased.
 *
 * Maps:
 *   sampler_state PERCPU_ARRAY[2] struct byte_sampler: the byte samplers (sampler.bpf.h),
 *             [0] slab objects (SAMPLE_RATE), [1] pages (PAGE_SAMPLE_RATE).
 *   tracked   HASH object/page pointer -> struct obj (TRACK_MAX): each tracked object's
 *             key, size, allocation time and weights. Full: CNT_TRACK_FULL. Read at the end
 *             of the window for what is still live (age = now - t_alloc).
 *   lifespans HASH struct life_key {site, tag, stackid, source} -> struct life_val (LIVES_MAX):
 *             freed objects' weights, lifespan log2 histogram (NR_SLOTS, ns), missed frees.
 *             Shared by all CPUs: updated with atomic adds (tracked frees are rare).
 *   addr_sums HASH {life_key, address} -> struct sample_weight (ADDR_SUMS_MAX): the weights
 *             of every tracked allocation per key and address (the *_w2 fields hold the
 *             byte stage's variance only). Slab objects reuse a few
 *             addresses (a per-CPU freelist hands the same object back), so allocations at
 *             one address are one CLUSTER of the address sample: the variance of allocated
 *             and freed totals is computed over these sums, not over objects. Full:
 *             CNT_ADDR_SUMS_FULL (those intervals then assume independent objects).
 *   stacks    STACK_TRACE[STACK_ENTRIES] of STACK_DEPTH frames: stacks of tracked allocations.
 *   life_zero ARRAY[1] struct life_val, never written: the initial value of a lifespans
 *             entry (1.2 KB, past the 512-byte BPF stack).
 *   tags      HASH alloc_tag address -> struct tag_info (READ_ALLOC_TAG only; who_calls.bpf.c).
 *   counters  PERCPU_ARRAY[NR_COUNTERS] u64, indices CNT_* (allocscope.bpf.h).
 *
 * Settings (-D; defaults in sync with probes/lifespan.py DEFAULT_*):
 *   SAMPLE_RATE      mean gap R of the byte sampler, bytes (4096); 1 with ADDR_SHIFT 0 = census
 *   PAGE_SAMPLE_RATE mean gap of the page allocations' byte sampler (16384)
 *   ADDR_SHIFT       keep 1 in 2^ADDR_SHIFT addresses (5)
 *   ADDR_SALT        XORed into the address before hashing (0); user space draws one per
 *                    capture, so which addresses are kept is random across captures
 *   TRACK_MAX        size of tracked (65536)
 *   LIVES_MAX        size of lifespans (8192)
 *   ADDR_SUMS_MAX    size of addr_sums (65536)
 *   STACK_ENTRIES    size of stacks (32768): a stack whose hash bucket holds another stack
 *                    is lost (CNT_STACK_FAIL), so the map is kept sparse
 *   STACK_DEPTH      frames kept per stack (32; 256-byte entries instead of BCC's 127 frames)
 *   TRACK_PAGES      1 = hook mm_page_alloc/mm_page_free(_batched) (1)
 *   PAGE_FREE_BATCHED 1 = hook mm_page_free_batched (1)
 *   PAGE_SIZE_BYTES  bytes of an order-0 page (4096)
 *   READ_ALLOC_TAG   1 = read current->alloc_tag (needs ALLOCSCOPE_HEADERS_MATCH=1)
 *   FLOOR            1 = every handler returns at once: the cost of the hooks alone, the
 *                    floor scripts/bench-lifespan measures the tracker against
 *   FILTER_TGID, FILTER_COMM0/1   allocscope.bpf.h (allocations only: frees are never
 *                    filtered, whoever frees an object ends its life)
 *   KMEM_CACHE_SIZE_OFF, TP_CACHE_*_OFF, TP_KMALLOC_*_OFF   as in kmem_sites.bpf.c
 *
 * Constants shared with probes/lifespan.py (tests/unit/test_bpf_constants.py):
 *   SRC_*, CNT_*, NR_SLOTS, LIFE_SHIFT
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#ifndef SAMPLE_RATE
#define SAMPLE_RATE 4096
#endif
#ifndef PAGE_SAMPLE_RATE
#define PAGE_SAMPLE_RATE 16384
#endif
#ifndef ADDR_SHIFT
#define ADDR_SHIFT 5
#endif
#ifndef TRACK_MAX
#define TRACK_MAX 65536
#endif
#ifndef LIVES_MAX
#define LIVES_MAX 8192
#endif
#ifndef ADDR_SUMS_MAX
#define ADDR_SUMS_MAX 65536
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 32768
#endif
#ifndef STACK_DEPTH
#define STACK_DEPTH 32
#endif
#ifndef ADDR_SALT
#define ADDR_SALT 0
#endif
#ifndef TRACK_PAGES
#define TRACK_PAGES 1
#endif
#ifndef PAGE_FREE_BATCHED
#define PAGE_FREE_BATCHED 1
#endif
#ifndef PAGE_SIZE_BYTES
#define PAGE_SIZE_BYTES 4096
#endif
#ifndef READ_ALLOC_TAG
#define READ_ALLOC_TAG 0
#endif
#ifndef FLOOR
#define FLOOR 0
#endif
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
#error "lifespan.bpf.c needs KMEM_CACHE_SIZE_OFF, or all three TP_CACHE_*_OFF"
#endif
#if TP_KMALLOC_BYTES_OFF >= 0 && (TP_KMALLOC_CALL_SITE_OFF < 0 || TP_KMALLOC_PTR_OFF < 0)
#error "lifespan.bpf.c: TP_KMALLOC_BYTES_OFF needs TP_KMALLOC_{CALL_SITE,PTR}_OFF"
#endif

/* sources and counter indexes: keep in sync with probes/lifespan.py SOURCES, COUNTERS */
#define SRC_KMALLOC 0
#define SRC_CACHE 1
#define SRC_PAGE 2
#define NR_SOURCES 3

#define CNT_ALLOC 0 /* allocation events (after the task filter) */
#define CNT_ALLOC_KEPT 1 /* of them, address kept by the hash */
#define CNT_TRACKED 2 /* of them, with a byte sample point: tracked */
#define CNT_FREE 3 /* free events */
#define CNT_FREE_KEPT 4 /* of them, address kept (the rest returned at once) */
#define CNT_FREE_MATCHED 5 /* of them, a tracked object: lifespan recorded */
#define CNT_MISSED_FREE 6 /* tracked objects allocated again while tracked */
#define CNT_TRACK_FULL 7 /* tracked objects dropped: tracked map full */
#define CNT_LIVES_FULL 8 /* lifespans dropped: lifespans map full */
#define CNT_STACK_FAIL 9 /* tracked objects whose stack walk failed (kept, stackid < 0) */
#define CNT_ADDR_SUMS_FULL 10 /* tracked objects not summed per address: addr_sums full */
#define NR_COUNTERS 11

#define NR_SLOTS 48 /* log2 ns slots: slot i holds [2^i, 2^(i+1)) ns, i = 47 everything above */
#define LIFE_SHIFT 6 /* life_w_sum counts lifespans in 64 ns units (u64 headroom: see docs) */

#include "allocscope.bpf.h"
#include "sampler.bpf.h"

#define READ_TAG (ALLOCSCOPE_HEADERS_MATCH && READ_ALLOC_TAG)
#if READ_TAG
#include <linux/alloc_tag.h>
#endif

struct life_key {
	u64 site;
	u64 tag;
	s32 stackid;
	u32 source;
};

struct addr_key {
	struct life_key key;
	u64 addr;
};

struct obj {
	struct life_key key;
	u64 t_alloc;
	u64 bytes;
	struct sample_weight w;
};

struct life_val {
	struct sample_weight freed; /* weights of the freed objects */
	u64 freed_n; /* freed objects */
	u64 missed_n; /* objects allocated again while tracked (free not seen) */
	u64 missed_calls_w; /* their calls weights */
	u64 missed_bytes_w; /* their bytes weights */
	u64 life_w_sum; /* sum calls_w * (lifespan >> LIFE_SHIFT): the mean's numerator */
	u64 hist_n[NR_SLOTS]; /* freed objects per lifespan slot */
	u64 hist_w[NR_SLOTS]; /* their calls weights (1/256 units) */
	u64 hist_w2[NR_SLOTS]; /* sum of calls_w^2 >> 8 (Kish's effective count) */
};

struct tag_info {
	char file[96];
	char function[64];
	u32 line;
};

BPF_PERCPU_ARRAY(sampler_state, struct byte_sampler, 2); /* [0] slab, [1] pages */
BPF_HASH(tracked, u64, struct obj, TRACK_MAX);
BPF_HASH(lifespans, struct life_key, struct life_val, LIVES_MAX);
BPF_HASH(addr_sums, struct addr_key, struct sample_weight, ADDR_SUMS_MAX);
struct lifespan_stack {
	u64 ip[STACK_DEPTH];
};
BPF_TABLE("stacktrace", int, struct lifespan_stack, stacks, STACK_ENTRIES);
BPF_ARRAY(life_zero, struct life_val, 1); /* a zeroed value: too big for the 512-byte stack */
#if READ_TAG
BPF_HASH(tags, u64, struct tag_info, 1024);
#endif

/* counters[idx] += by on this CPU (no atomics needed); verbatim copy, see allocscope.bpf.h */
static __always_inline void allocscope_count(u32 idx, u64 by)
{
	u64 *c = counters.lookup(&idx);

	if (c)
		*c += by;
}

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

/* A tracked object's allocation was seen again: its free was missed. */
static __always_inline void missed_free(struct obj *o)
{
	struct life_val *v, *zero;
	u32 idx = 0;

	allocscope_count(CNT_MISSED_FREE, 1);
	zero = life_zero.lookup(&idx);
	if (!zero)
		return;
	v = lifespans.lookup_or_try_init(&o->key, zero);
	if (!v) {
		allocscope_count(CNT_LIVES_FULL, 1);
		return;
	}
	__sync_fetch_and_add(&v->missed_n, 1);
	__sync_fetch_and_add(&v->missed_calls_w, o->w.calls_w);
	__sync_fetch_and_add(&v->missed_bytes_w, o->w.bytes_w);
}

/*
 * The hot path of every allocation: can this object be tracked? Decided from the pointer
 * (and the task filter) before anything else is read: a kmem_cache_alloc's size is read only
 * for the 1 in 2^ADDR_SHIFT objects that pass.
 */
static __always_inline int alloc_kept(u64 ptr)
{
	if (FLOOR || !ptr || !allocscope_task_wanted())
		return 0;
	allocscope_count(CNT_ALLOC, 1);
	if (!sampler_addr_kept(ptr ^ (u64)ADDR_SALT, ADDR_SHIFT))
		return 0;
	allocscope_count(CNT_ALLOC_KEPT, 1);
	return 1;
}

/* An allocation whose address passed alloc_kept(). */
static __always_inline void on_alloc(void *ctx, u64 site, u64 ptr, u64 bytes, u32 source)
{
	struct sample_weight w = {};
	struct byte_sampler *st;
	struct obj *old;
	u32 stream = source == SRC_PAGE;
	u64 rate = stream ? PAGE_SAMPLE_RATE : SAMPLE_RATE;
	/* a kept address still tracked: the object it held was freed where no hook saw it */
	old = tracked.lookup(&ptr);
	if (old) {
		missed_free(old);
		tracked.delete(&ptr);
	}
	st = sampler_state.lookup(&stream);
	if (!st || !byte_sampler_hits(st, bytes, rate, &w))
		return;
	allocscope_count(CNT_TRACKED, 1);

	struct obj o = {};
	o.key.site = site;
	o.key.source = source;
	o.key.tag = current_tag();
	o.key.stackid = stacks.get_stackid(ctx, 0);
	if (o.key.stackid < 0)
		allocscope_count(CNT_STACK_FAIL, 1);
	o.bytes = bytes;
	o.t_alloc = bpf_ktime_get_ns();
	/*
	 * Weights: the byte sampler's times 2^ADDR_SHIFT. Variances: the byte sampler's times
	 * 2^(2*ADDR_SHIFT) plus the address stage's (1 - 2^-ADDR_SHIFT) * w^2 (Poisson sampling
	 * HT), in the header's fixed-point units (bytes: >> 16; calls: 1/256).
	 */
	u64 bw = w.bytes_w << ADDR_SHIFT, cw = w.calls_w << ADDR_SHIFT;
	u64 bsq = (bw >> 8) * (bw >> 8), csq = (cw * cw) >> SAMPLER_FRAC_BITS;
	u64 bvar = w.bytes_w2 << (2 * ADDR_SHIFT), cvar = w.calls_w2 << (2 * ADDR_SHIFT);

	o.w.hits = w.hits;
	o.w.bytes_w = bw;
	o.w.bytes_w2 = bvar + (bsq - (bsq >> ADDR_SHIFT));
	o.w.calls_w = cw;
	o.w.calls_w2 = cvar + (csq - (csq >> ADDR_SHIFT));
	if (tracked.insert(&ptr, &o)) {
		allocscope_count(CNT_TRACK_FULL, 1);
		return;
	}
	struct addr_key ak = {.key = o.key, .addr = ptr};
	struct sample_weight wz = {};
	struct sample_weight *aw = addr_sums.lookup_or_try_init(&ak, &wz);
	if (!aw) {
		allocscope_count(CNT_ADDR_SUMS_FULL, 1);
		return;
	}
	__sync_fetch_and_add(&aw->hits, o.w.hits);
	__sync_fetch_and_add(&aw->bytes_w, o.w.bytes_w);
	__sync_fetch_and_add(&aw->bytes_w2, bvar); /* the byte stage's only: the address */
	__sync_fetch_and_add(&aw->calls_w, o.w.calls_w); /* stage's is taken over clusters */
	__sync_fetch_and_add(&aw->calls_w2, cvar);
}

static __always_inline u32 log2_slot(u64 v)
{
	u32 r = 0;

#pragma unroll
	for (int i = 32; i >= 1; i /= 2) {
		if (v >> i) {
			v >>= i;
			r += i;
		}
	}
	return r < NR_SLOTS ? r : NR_SLOTS - 1;
}

static __always_inline void on_free(u64 ptr)
{
	struct life_val *v, *zero;
	struct obj *o;
	u64 life, cw;
	u32 slot, idx = 0;

	if (FLOOR)
		return;
	if (ptr < 4096)
		return; /* kfree(NULL) and ZERO_SIZE_PTR are traced too */
	allocscope_count(CNT_FREE, 1);
	if (!sampler_addr_kept(ptr ^ (u64)ADDR_SALT, ADDR_SHIFT))
		return; /* the cheap path: free_filtered = free_events - free_kept */
	allocscope_count(CNT_FREE_KEPT, 1);
	o = tracked.lookup(&ptr);
	if (!o)
		return; /* kept address, untracked object: no byte point, or allocated before */
	life = bpf_ktime_get_ns() - o->t_alloc;
	cw = o->w.calls_w;
	allocscope_count(CNT_FREE_MATCHED, 1);
	zero = life_zero.lookup(&idx);
	v = zero ? lifespans.lookup_or_try_init(&o->key, zero) : NULL;
	if (!v) {
		allocscope_count(CNT_LIVES_FULL, 1);
		tracked.delete(&ptr);
		return;
	}
	slot = log2_slot(life);
	__sync_fetch_and_add(&v->freed.hits, o->w.hits);
	__sync_fetch_and_add(&v->freed.bytes_w, o->w.bytes_w);
	__sync_fetch_and_add(&v->freed.bytes_w2, o->w.bytes_w2);
	__sync_fetch_and_add(&v->freed.calls_w, cw);
	__sync_fetch_and_add(&v->freed.calls_w2, o->w.calls_w2);
	__sync_fetch_and_add(&v->freed_n, 1);
	__sync_fetch_and_add(&v->life_w_sum, cw * (life >> LIFE_SHIFT));
	if (slot < NR_SLOTS) {
		__sync_fetch_and_add(&v->hist_n[slot], 1);
		__sync_fetch_and_add(&v->hist_w[slot], cw);
		__sync_fetch_and_add(&v->hist_w2[slot], (cw * cw) >> SAMPLER_FRAC_BITS);
	}
	tracked.delete(&ptr);
}

#if TP_KMALLOC_BYTES_OFF < 0
int on_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (alloc_kept(ctx->args[1]))
		on_alloc(ctx, ctx->args[0], ctx->args[1], ctx->args[3], SRC_KMALLOC);
	return 0;
}
#else
int on_kmalloc_tp(void *ctx)
{
	u64 call_site = 0, ptr = 0, bytes = 0;

	if (FLOOR)
		return 0;
	bpf_probe_read_kernel(&ptr, sizeof(ptr), (char *)ctx + TP_KMALLOC_PTR_OFF);
	if (!alloc_kept(ptr))
		return 0;
	bpf_probe_read_kernel(&call_site, sizeof(call_site), (char *)ctx + TP_KMALLOC_CALL_SITE_OFF);
	bpf_probe_read_kernel(&bytes, sizeof(bytes), (char *)ctx + TP_KMALLOC_BYTES_OFF);
	on_alloc(ctx, call_site, ptr, bytes, SRC_KMALLOC);
	return 0;
}
#endif

#if KMEM_CACHE_SIZE_OFF >= 0
int on_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 ptr = ctx->args[1];
	u32 size = 0;

	if (!alloc_kept(ptr))
		return 0;
	bpf_probe_read_kernel(&size, sizeof(size), (char *)ctx->args[2] + KMEM_CACHE_SIZE_OFF);
	on_alloc(ctx, ctx->args[0], ptr, size, SRC_CACHE);
	return 0;
}
#else
int on_cache_alloc_tp(void *ctx)
{
	u64 call_site = 0, ptr = 0, bytes = 0;

	if (FLOOR)
		return 0;
	bpf_probe_read_kernel(&ptr, sizeof(ptr), (char *)ctx + TP_CACHE_PTR_OFF);
	if (!alloc_kept(ptr))
		return 0;
	bpf_probe_read_kernel(&call_site, sizeof(call_site), (char *)ctx + TP_CACHE_CALL_SITE_OFF);
	bpf_probe_read_kernel(&bytes, sizeof(bytes), (char *)ctx + TP_CACHE_BYTES_OFF);
	on_alloc(ctx, call_site, ptr, bytes, SRC_CACHE);
	return 0;
}
#endif

int on_kfree(struct bpf_raw_tracepoint_args *ctx)
{
	on_free(ctx->args[1]);
	return 0;
}

int on_cache_free(struct bpf_raw_tracepoint_args *ctx)
{
	on_free(ctx->args[1]);
	return 0;
}

#if TRACK_PAGES
int on_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (alloc_kept(ctx->args[0]))
		on_alloc(ctx, 0, ctx->args[0], (u64)PAGE_SIZE_BYTES << (ctx->args[1] & 31), SRC_PAGE);
	return 0;
}

int on_page_free(struct bpf_raw_tracepoint_args *ctx)
{
	on_free(ctx->args[0]);
	return 0;
}

#if PAGE_FREE_BATCHED
int on_page_free_batched(struct bpf_raw_tracepoint_args *ctx)
{
	on_free(ctx->args[0]);
	return 0;
}
#endif
#endif /* TRACK_PAGES */
