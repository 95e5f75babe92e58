// SPDX-License-Identifier: GPL-2.0
/*
 * alloc_latency.bpf.c - exact time per call of one allocator function with fentry/fexit
 * (allocscope overhead --exact, ab --toggle --exact).
 *
 * Sampling estimates CPU per call as samples x period / calls; this times every call, which is
 * cleaner on slow or noisy hosts. It needs BTF and BPF trampolines (fentry), so it runs on
 * production-like kernels (and the vmrun guests), not on hosts without fentry. Wall time is
 * measured, so a call that sleeps (direct reclaim) counts its sleep; the histogram shows it.
 *
 * Programs (attached by BCC when the object loads, from the KFUNC/KRETFUNC names)
 *   kfunc__FUNC      entry: remember bpf_ktime_get_ns() for this thread
 *   kretfunc__FUNC   exit: add the elapsed ns to stats and to the log2 histogram
 *
 * Maps
 *   start     hash tid(u32) -> u64 entry time; an interrupt that allocates on the same thread
 *             overwrites it, and the outer call is then not timed (rare; undercounts calls)
 *   stats     per-CPU array u64 [NR_STATS]: STAT_CALLS = timed calls, STAT_NS = total ns;
 *             cumulative
 *   hist      per-CPU array u64 [HIST_SLOTS]: log-linear histogram, 16 sub-buckets per power
 *             of two (~6% wide), so a median moves visibly with a 10-40% change; slot
 *             o*16+s counts calls in [2^o + s*2^o/16, 2^o + (s+1)*2^o/16) ns (o >= 4), slots
 *             0..15 count 0..15 ns exactly; cumulative
 *   cpu_ok    array u8 [MAX_CPUS]: CPU filter (only when FILTER_CPUS; allocscope.bpf.h)
 *
 * Settings (-D)
 *   FUNC          the kernel function to time (e.g. __alloc_pages_noprof); required
 *   FILTER_TGID   0 = all, else only this process (allocscope.bpf.h)
 *   FILTER_CPUS   1 = consult cpu_ok (allocscope.bpf.h)
 *   MAX_CPUS      size of cpu_ok (allocscope.bpf.h)
 *   START_MAX     size of start: threads inside FUNC at once (default 10240)
 *
 * Cost: two trampolines, two hash operations and two clock reads per call of FUNC.
 */
#include <uapi/linux/ptrace.h>

#ifndef FUNC
#error "alloc_latency.bpf.c needs -DFUNC=<kernel function to time>"
#endif
#ifndef START_MAX
#define START_MAX 10240
#endif

#define STAT_CALLS 0		/* stats index: timed calls */
#define STAT_NS 1		/* stats index: total ns */
#define NR_STATS 2
#define SUB_BITS 4		/* log2 of the sub-buckets per power of two */
#define HIST_SLOTS (64 * 16) /* mirrored in probes/alloc_latency.py HIST_SLOTS */

#include "allocscope.bpf.h" /* cpu_ok, allocscope_task_wanted(), ALLOCSCOPE_KFUNC/KRETFUNC */

BPF_HASH(start, u32, u64, START_MAX);
BPF_PERCPU_ARRAY(stats, u64, NR_STATS);
BPF_PERCPU_ARRAY(hist, u64, HIST_SLOTS);

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

static __always_inline u32 log2_u64(u64 v)
{
	u32 r = 0;
#pragma unroll
	for (int i = 32; i > 0; i >>= 1) {
		if (v >= (1ULL << i)) {
			v >>= i;
			r += i;
		}
	}
	return r;
}

ALLOCSCOPE_KFUNC(FUNC)
{
	if (!allocscope_wanted())
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 ts = bpf_ktime_get_ns();
	start.update(&tid, &ts);
	return 0;
}

ALLOCSCOPE_KRETFUNC(FUNC)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 *ts = start.lookup(&tid);
	if (!ts)
		return 0;
	u64 delta = bpf_ktime_get_ns() - *ts;
	start.delete(&tid);
	int k = STAT_CALLS;
	u64 *v = stats.lookup(&k);
	if (v)
		*v += 1;
	k = STAT_NS;
	v = stats.lookup(&k);
	if (v)
		*v += delta;
	int slot;
	if (delta < 16) {
		slot = (int)delta;
	} else {
		u32 o = log2_u64(delta);
		u32 sub = (u32)(delta >> (o - SUB_BITS)) & 15;
		slot = (int)(o * 16 + sub);
	}
	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	v = hist.lookup(&slot);
	if (v)
		*v += 1;
	return 0;
}
