// SPDX-License-Identifier: GPL-2.0
/*
 * who_calls.bpf.c -- who calls an allocation site? (allocscope who-calls)
 *
 * Filter first, then sample, then walk the stack:
 *   1. every hook event is matched against the site(s)' code ranges in kernel (SITE_OF, a
 *      compiled-in chain of range compares on call_site / the probed IP); non-matching events
 *      return after two compares;
 *   2. every matching event is counted (calls, bytes) per site in a per-CPU array;
 *   3. only a Bernoulli 1-in-N sample (bpf_get_prandom_u32() % N == 0) walks the kernel stack
 *      (~1.5-2 us) and is aggregated by (site, stack, [process], [alloc tag]) in a hash.
 * User space symbolizes stacks and decides the caller; nothing is formatted here.
 *
 * Backend, chosen by exactly one -D...=1 (each compiles a different hook; none = no hook):
 *   BACKEND_RAW_TP   raw tracepoints kmem_cache_alloc + kmalloc (arg0 = call_site); bytes of
 *                    kmem_cache_alloc read from s->size at KMEM_CACHE_SIZE_OFF (from BTF;
 *                    -1, the default, = unknown: those bytes count 0)
 *   BACKEND_TP       classic tracepoints kmem:kmem_cache_alloc + kmem:kmalloc; record field
 *                    offsets passed as TP_KCA_CALL_SITE/TP_KCA_BYTES/TP_KM_CALL_SITE/TP_KM_BYTES
 *                    (read from tracefs format files, so any layout works); required
 *   BACKEND_KPROBE   kprobe on the site function(s); the probed IP is matched with SITE_OF
 *   BACKEND_FENTRY   fentry on FENTRY_TARGET (one site, required); every hit is site 1
 *
 * Other settings (all -D; switches default to 0 and are tested with #if):
 *   SITE_OF(a)       expression -> 1..MAX_SITES for an address inside a site's range, else 0
 *                    (default: 0, nothing matches)
 *   MAX_SITES        sites per run (8; keep in sync with probes/who_calls.py MAX_SITES)
 *   STACK_ENTRIES    size of stacks (16384)
 *   SAMPLE_ENTRIES   size of samples (16384)
 *   TAGS_MAX         size of tags (1024)
 *   FILTER_TGID      0 = all, else only this process (allocscope.bpf.h)
 *   FILTER_COMM0/1   0 = all, else only this comm (16 bytes packed little-endian into two u64;
 *                    allocscope.bpf.h)
 *   PER_PROCESS      1 = key samples by tgid+comm as well
 *   READ_ALLOC_TAG   1 = read current->alloc_tag (needs ALLOCSCOPE_HEADERS_MATCH=1 and a
 *                    kernel with CONFIG_MEM_ALLOC_PROFILING) and key samples by the exact tag
 *
 * Cost: a non-matching event costs the hook plus two compares per site; a matching one adds
 * the task filter and a per-CPU counter update; a sampled one adds the stack walk and a hash
 * update (atomic adds: the hash is shared by all CPUs).
 *
 * Maps:
 *   config    ARRAY[1] struct sample_config {n, epoch}: sampling divisor N (0 = count only, no
 *             stacks; 1 = every event) and the epoch it belongs to. Written by user space at run
 *             time: the automatic mode re-derives N from the event rate every second, and
 *             samples carry their epoch so each can be weighted by the N it was drawn with.
 *   counts    PERCPU_ARRAY[MAX_SITES+1] of struct site_count, indexed by site (1-based):
 *             every matching event's calls/bytes, plus sampled, stack-walk failures
 *             (stack_err: map full / collision / fault) and samples dropped on a full hash.
 *   stacks    STACK_TRACE[STACK_ENTRIES]: kernel stacks of sampled events.
 *   samples   HASH struct sample_key -> struct sample_val: sampled events and their bytes per
 *             (site, stack id, sampling epoch, tgid, comm, tag).
 *   tags      HASH tag address -> struct tag_info (file, function, line), TAGS_MAX entries,
 *             filled the first time a tag is seen (READ_ALLOC_TAG only).
 */
#include <uapi/linux/ptrace.h>

#ifndef BACKEND_RAW_TP
#define BACKEND_RAW_TP 0
#endif
#ifndef BACKEND_TP
#define BACKEND_TP 0
#endif
#ifndef BACKEND_KPROBE
#define BACKEND_KPROBE 0
#endif
#ifndef BACKEND_FENTRY
#define BACKEND_FENTRY 0
#endif
#ifndef PER_PROCESS
#define PER_PROCESS 0
#endif
#ifndef READ_ALLOC_TAG
#define READ_ALLOC_TAG 0
#endif
/* Record offsets: 0 is a valid offset, so "not passed" is -1. */
#ifndef KMEM_CACHE_SIZE_OFF
#define KMEM_CACHE_SIZE_OFF (-1)
#endif
#ifndef TP_KCA_CALL_SITE
#define TP_KCA_CALL_SITE (-1)
#endif
#ifndef TP_KCA_BYTES
#define TP_KCA_BYTES (-1)
#endif
#ifndef TP_KM_CALL_SITE
#define TP_KM_CALL_SITE (-1)
#endif
#ifndef TP_KM_BYTES
#define TP_KM_BYTES (-1)
#endif
#ifndef TAGS_MAX
#define TAGS_MAX 1024
#endif
#ifndef MAX_SITES
#define MAX_SITES 8
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 16384
#endif
#ifndef SAMPLE_ENTRIES
#define SAMPLE_ENTRIES 16384
#endif
#ifndef SITE_OF
#define SITE_OF(a) 0
#endif

#if BACKEND_RAW_TP + BACKEND_TP + BACKEND_KPROBE + BACKEND_FENTRY > 1
#error "who_calls.bpf.c: pass at most one BACKEND_*=1"
#endif
#if BACKEND_TP && \
	(TP_KCA_CALL_SITE < 0 || TP_KCA_BYTES < 0 || TP_KM_CALL_SITE < 0 || TP_KM_BYTES < 0)
#error "who_calls.bpf.c: BACKEND_TP needs TP_KCA_CALL_SITE/TP_KCA_BYTES/TP_KM_CALL_SITE/TP_KM_BYTES"
#endif

/* ALLOCSCOPE_HEADERS_MATCH, FILTER_TGID, FILTER_COMM0/1, allocscope_task_wanted(),
 * ALLOCSCOPE_KFUNC */
#include "allocscope.bpf.h"

#define READ_TAG (ALLOCSCOPE_HEADERS_MATCH && READ_ALLOC_TAG)
#if READ_TAG
/* Only the tag reader dereferences task_struct: linux/sched.h costs ~0.6 s of every compile
 * (0.3 s without it against 0.9 s with it, measured on the 2-CPU development VM), so the
 * common build (no matching headers, or no allocation profiling) does without it. */
#include <linux/sched.h>
#include <linux/alloc_tag.h>
#endif

struct site_count {
	u64 calls;
	u64 bytes;
	u64 sampled;
	u64 stack_err;
	u64 hash_full;
};

struct sample_key {
	u32 site;
	s32 stackid;
	u32 tgid;
	u32 epoch;
	u64 tag;
	char comm[16];
};

struct sample_val {
	u64 count;
	u64 bytes;
};

struct tag_info {
	char file[96];
	char function[64];
	u32 line;
};

struct sample_config {
	u32 n;
	u32 epoch;
};

BPF_ARRAY(config, struct sample_config, 1);
BPF_PERCPU_ARRAY(counts, struct site_count, MAX_SITES + 1);
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
BPF_HASH(samples, struct sample_key, struct sample_val, SAMPLE_ENTRIES);
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

/* The common path once an event is known to belong to site `site`. */
static __always_inline int record(void *ctx, u32 site, u64 bytes)
{
	if (!allocscope_task_wanted())
		return 0;
	struct site_count *c = counts.lookup(&site);
	if (!c)
		return 0;
	c->calls++;
	c->bytes += bytes;

	u32 zero = 0;
	struct sample_config *cfg = config.lookup(&zero);
	if (!cfg)
		return 0;
	u32 n = cfg->n;
	u32 epoch = cfg->epoch;
	if (n == 0 || (n > 1 && bpf_get_prandom_u32() % n != 0))
		return 0;
	c->sampled++;

	struct sample_key key = {};
	key.site = site;
	key.epoch = epoch;
	key.stackid = stacks.get_stackid(ctx, 0);
	if (key.stackid < 0) {
		c->stack_err++;
		return 0;
	}
#if PER_PROCESS
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
#endif
	key.tag = current_tag();
	struct sample_val init = {};
	/* a key another CPU inserted meanwhile is found by the second lookup; NULL = full */
	struct sample_val *v = samples.lookup_or_try_init(&key, &init);
	if (!v) {
		c->hash_full++;
		return 0;
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->bytes, bytes);
	return 0;
}

#if BACKEND_RAW_TP
/* kmem_cache_alloc(call_site, ptr, struct kmem_cache *s, gfp, node) */
int on_kmem_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 call_site = ctx->args[0];
	u32 site = SITE_OF(call_site);
	if (!site)
		return 0;
	u32 size = 0;
#if KMEM_CACHE_SIZE_OFF >= 0
	bpf_probe_read_kernel(&size, sizeof(size), (void *)(ctx->args[2] + KMEM_CACHE_SIZE_OFF));
#endif
	return record(ctx, site, size);
}

/* kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp, node) */
int on_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	u64 call_site = ctx->args[0];
	u32 site = SITE_OF(call_site);
	if (!site)
		return 0;
	return record(ctx, site, ctx->args[3]);
}

#elif BACKEND_TP
/* Classic tracepoints: record fields at offsets read from the tracefs format files. */
int on_kmem_cache_alloc(void *ctx)
{
	u64 call_site = *(u64 *)((char *)ctx + TP_KCA_CALL_SITE);
	u32 site = SITE_OF(call_site);
	if (!site)
		return 0;
	u64 bytes = *(u64 *)((char *)ctx + TP_KCA_BYTES);
	return record(ctx, site, bytes);
}

int on_kmalloc(void *ctx)
{
	u64 call_site = *(u64 *)((char *)ctx + TP_KM_CALL_SITE);
	u32 site = SITE_OF(call_site);
	if (!site)
		return 0;
	u64 bytes = *(u64 *)((char *)ctx + TP_KM_BYTES);
	return record(ctx, site, bytes);
}

#elif BACKEND_KPROBE
int on_site_entry(struct pt_regs *ctx)
{
	u64 ip = PT_REGS_IP(ctx);
	u32 site = SITE_OF(ip);
	if (!site)
		return 0;
	return record(ctx, site, 0);
}

#elif BACKEND_FENTRY
#ifndef FENTRY_TARGET
#error "who_calls.bpf.c: BACKEND_FENTRY needs FENTRY_TARGET=<site function>"
#endif
ALLOCSCOPE_KFUNC(FENTRY_TARGET)
{
	return record(ctx, 1, 0);
}
#endif /* BACKEND_* */
