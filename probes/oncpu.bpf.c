// SPDX-License-Identifier: GPL-2.0
/*
 * oncpu.bpf.c - sample on-CPU kernel stacks with a perf event, aggregated in kernel, and count
 * the kmem allocation tracepoints over the same window (allocscope overhead / ab --toggle).
 *
 * Why both in one object: "CPU ns per allocation" is (samples in the allocator x period) /
 * (allocations), so the numerator and denominator must see the same CPUs, the same process
 * filter and the same time window. One program set with one filter guarantees that.
 *
 * Programs
 *   on_sample            perf event (cpu-cycles, else cpu-clock) at -F HZ on every CPU
 *   count_cache_alloc    raw tracepoint kmem_cache_alloc(call_site, ptr, s, gfp, node)
 *   count_kmalloc        raw tracepoint kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp, node)
 *   count_page_alloc     raw tracepoint mm_page_alloc(page, order, gfp, migratetype)
 *   Raw tracepoints cost ~40 ns/event here versus ~120 ns for classic ones; they read only
 *   their arguments, never a kernel struct, so mismatched headers are harmless.
 *
 * Maps
 *   stack_traces  BPF_STACK_TRACE, STACK_STORAGE entries: kernel stacks, id -> frames.
 *                 Never cleared while running, so stack ids stay stable across windows.
 *   stack_counts  hash stackid(int) -> u64 samples; cumulative (user space takes deltas per
 *                 window, so nothing races with a clear).
 *   counters      per-CPU array u64 [NR_COUNTERS], indexes CNT_* below; cumulative as well
 *                 (declared in allocscope.bpf.h).
 *   cpu_ok        array u8 [MAX_CPUS]: 1 = this CPU is measured (only when FILTER_CPUS;
 *                 allocscope.bpf.h).
 *
 * Settings (-D)
 *   FILTER_TGID   0 = all processes, else only this process (thread group id)
 *   FILTER_CPUS   1 = consult cpu_ok
 *   MAX_CPUS      size of cpu_ok
 *   STACK_STORAGE size of stack_traces and stack_counts (default 16384; a full map shows
 *                 up as CNT_STACK_FULL / CNT_COUNTS_FULL)
 */
#include <uapi/linux/ptrace.h>

/* The perf-event context is only handed to get_stackid, never read: an opaque type avoids
 * <uapi/linux/bpf_perf_event.h>, which drags in kernel-internal headers that some header trees
 * (7.x kheaders) do not compile under BCC's clang. */
struct bpf_perf_event_data;

#ifndef STACK_STORAGE
#define STACK_STORAGE 16384
#endif

/* counter indexes: mirrored in probes/oncpu.py COUNTERS (tests/unit/test_bpf_constants.py) */
#define CNT_SAMPLES 0		/* samples that passed the filters */
#define CNT_IDLE 1		/* ... taken in the idle task (pid 0) */
#define CNT_USER 2		/* ... with no kernel stack (user mode) */
#define CNT_KERNEL 3		/* ... with a kernel stack recorded */
#define CNT_STACK_FULL 4	/* get_stackid -ENOMEM: stack_traces full, sample lost */
#define CNT_STACK_COLLIDE 5	/* get_stackid -EEXIST: hash collision, sample lost */
#define CNT_STACK_OTHER 6	/* get_stackid other error */
#define CNT_COUNTS_FULL 7	/* stack_counts full, sample lost */
#define CNT_CACHE_ALLOC 8	/* kmem_cache_alloc events */
#define CNT_KMALLOC 9		/* kmalloc events */
#define CNT_PAGE_ALLOC 10	/* mm_page_alloc events (successful) */
#define CNT_PAGES 11		/* pages allocated (sum of 1 << order) */
#define NR_COUNTERS 12

/* counters, cpu_ok, allocscope_task_wanted(), ENOMEM/EFAULT/EEXIST */
#include "allocscope.bpf.h"

BPF_STACK_TRACE(stack_traces, STACK_STORAGE);
BPF_HASH(stack_counts, int, u64, STACK_STORAGE);

/* counters[idx] += by on this CPU (no atomics needed); verbatim copy, see allocscope.bpf.h */
static __always_inline void allocscope_count(u32 idx, u64 by)
{
	u64 *c = counters.lookup(&idx);

	if (c)
		*c += by;
}

/* allocscope_task_wanted() plus FILTER_CPUS; verbatim copy, see allocscope.bpf.h */
static __always_inline int allocscope_wanted(void)
{
#if FILTER_CPUS
	int cpu = bpf_get_smp_processor_id();
	u8 *ok = cpu_ok.lookup(&cpu);

	if (!ok || !*ok)
		return 0;
#endif
	return allocscope_task_wanted();
}

int on_sample(struct bpf_perf_event_data *ctx)
{
	if (!allocscope_wanted())
		return 0;
	allocscope_count(CNT_SAMPLES, 1);
	if ((u32)bpf_get_current_pid_tgid() == 0) {
		allocscope_count(CNT_IDLE, 1);
		return 0;
	}
	int id = stack_traces.get_stackid(ctx, 0);
	if (id < 0) {
		if (id == -EFAULT)
			allocscope_count(CNT_USER, 1);
		else if (id == -ENOMEM)
			allocscope_count(CNT_STACK_FULL, 1);
		else if (id == -EEXIST)
			allocscope_count(CNT_STACK_COLLIDE, 1);
		else
			allocscope_count(CNT_STACK_OTHER, 1);
		return 0;
	}
	allocscope_count(CNT_KERNEL, 1);
	u64 zero = 0;
	u64 *n = stack_counts.lookup_or_try_init(&id, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		allocscope_count(CNT_COUNTS_FULL, 1);
	return 0;
}

int count_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] && allocscope_wanted())
		allocscope_count(CNT_CACHE_ALLOC, 1);
	return 0;
}

int count_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] && allocscope_wanted())
		allocscope_count(CNT_KMALLOC, 1);
	return 0;
}

int count_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	if (!ctx->args[0] || !allocscope_wanted())
		return 0;
	u32 order = (u32)ctx->args[1];
	allocscope_count(CNT_PAGE_ALLOC, 1);
	allocscope_count(CNT_PAGES, order < 16 ? (1ULL << order) : 1);
	return 0;
}
