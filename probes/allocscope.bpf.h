// SPDX-License-Identifier: GPL-2.0
/*
 * allocscope.bpf.h - what every allocscope BPF program shares: the settings' defaults, the
 * task filter, the counter map and its bump helper, the one lookup-or-init idiom, the fentry
 * expansion macros and the errno values BPF helpers return. Every probes/<name>.bpf.c
 * includes it (the loader passes -I the probes directory), so programs that share a filter
 * (oncpu.bpf.c and alloc_latency.bpf.c) select exactly the same events.
 *
 * -D convention (all programs): every setting is defined with a default near the top of the
 * file that reads it (#ifndef X / #define X default / #endif) and switches are tested with
 * #if X, never #ifdef. User space may pass a switch only when it is on; the default 0 then
 * behaves as "not defined". Offsets, where 0 is a valid value, default to -1 and are tested
 * with #if X >= 0. Settings that name something (FUNC, FENTRY_TARGET) have no default: a
 * program that needs one stops with #error when it is missing.
 *
 * Settings (-D)
 *   ALLOCSCOPE_HEADERS_MATCH  1 = the compile headers are the running kernel's (the loader
 *                             always passes it); 0 = read no kernel struct through them
 *   FILTER_TGID     0 = all processes, else only this process (thread group id)
 *   FILTER_COMM0/1  0 = all commands, else only this comm: its 16 bytes packed little-endian
 *                   into two u64 (FILTER_COMM0 is never 0 for a non-empty comm)
 *   FILTER_CPUS     1 = allocscope_wanted() consults cpu_ok (filled from user space before
 *                   attaching)
 *   MAX_CPUS        size of cpu_ok
 *   NR_COUNTERS     number of slots of the counters map; 0 = no counters map. A program
 *                   with counters defines its CNT_* indexes and NR_COUNTERS BEFORE the
 *                   #include.
 *
 * Maps
 *   cpu_ok     ARRAY u8 [MAX_CPUS]: 1 = this CPU is measured (only when FILTER_CPUS)
 *   counters   PERCPU_ARRAY u64 [NR_COUNTERS]: event/loss counters, indexes CNT_* of the
 *              including program; cumulative, per CPU (no atomics); user space sums the CPUs
 *              (only when NR_COUNTERS > 0)
 *
 * Helpers
 *   allocscope_task_wanted()    1 if the current task passes FILTER_TGID and FILTER_COMM0/1
 *                               (a filter left at 0 passes everything and costs nothing)
 *   ALLOCSCOPE_KFUNC(fn), ALLOCSCOPE_KRETFUNC(fn)
 *                               KFUNC_PROBE/KRETFUNC_PROBE with fn macro-expanded first
 *                               (BCC pastes its argument with ##, so KFUNC_PROBE(FUNC) would
 *                               otherwise define kfunc__FUNC)
 *   ENOMEM, EFAULT, EEXIST, E2BIG
 *                               errno values (uapi asm-generic/errno-base.h is not included:
 *                               some header trees do not compile under BCC's clang); helpers
 *                               return them negated
 *
 * Map calls cannot live here: BCC rewrites map.lookup() & co. only in the .bpf.c it compiles
 * (a call left in a header compiles to an indirect call the verifier rejects as "unknown
 * opcode 8d"), and refuses them inside macros ("cannot use map function inside a macro").
 * The two helpers that touch a map are therefore copied VERBATIM into the programs that use
 * them (tests/unit/test_bpf_constants.py fails when the copies differ):
 *
 *	// counters[idx] += by on this CPU (no atomics needed)
 *	static __always_inline void allocscope_count(u32 idx, u64 by)
 *	{
 *		u64 *c = counters.lookup(&idx);
 *
 *		if (c)
 *			*c += by;
 *	}
 *
 *	// allocscope_task_wanted() plus FILTER_CPUS (cpu_ok)
 *	static __always_inline int allocscope_wanted(void)
 *	{
 *	#if FILTER_CPUS
 *		int cpu = bpf_get_smp_processor_id();
 *		u8 *ok = cpu_ok.lookup(&cpu);
 *
 *		if (!ok || !*ok)
 *			return 0;
 *	#endif
 *		return allocscope_task_wanted();
 *	}
 *
 * Lookup-or-init: use map.lookup_or_try_init(&key, &init) everywhere. BCC expands it to
 * lookup; if missing, update with BPF_NOEXIST; lookup again. So when another CPU inserts the
 * same key between the two (the insert fails with -EEXIST), the second lookup returns that
 * CPU's entry instead of losing the event; NULL means the map is full. It cannot be wrapped
 * here: BCC refuses map calls inside macros ("cannot use map function inside a macro") and a
 * map cannot be passed to a function by pointer.
 */
#ifndef ALLOCSCOPE_BPF_H
#define ALLOCSCOPE_BPF_H

#ifndef ALLOCSCOPE_HEADERS_MATCH
#define ALLOCSCOPE_HEADERS_MATCH 0
#endif
#ifndef FILTER_TGID
#define FILTER_TGID 0
#endif
#ifndef FILTER_COMM0
#define FILTER_COMM0 0
#endif
#ifndef FILTER_COMM1
#define FILTER_COMM1 0
#endif
#ifndef FILTER_CPUS
#define FILTER_CPUS 0
#endif
#ifndef MAX_CPUS
#define MAX_CPUS 1024
#endif
#ifndef NR_COUNTERS
#define NR_COUNTERS 0
#endif

#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EFAULT
#define EFAULT 14
#endif
#ifndef EEXIST
#define EEXIST 17
#endif
#ifndef E2BIG
#define E2BIG 7
#endif

/* The extra level expands fn (e.g. -DFUNC=__alloc_pages_noprof) before KFUNC_PROBE pastes it. */
#define ALLOCSCOPE_KFUNC(fn) KFUNC_PROBE(fn)
#define ALLOCSCOPE_KRETFUNC(fn) KRETFUNC_PROBE(fn)

#if FILTER_CPUS
BPF_ARRAY(cpu_ok, u8, MAX_CPUS);
#endif

#if NR_COUNTERS > 0
BPF_PERCPU_ARRAY(counters, u64, NR_COUNTERS);
#endif

static __always_inline int allocscope_task_wanted(void)
{
#if FILTER_TGID
	if ((bpf_get_current_pid_tgid() >> 32) != FILTER_TGID)
		return 0;
#endif
#if FILTER_COMM0
	char comm[16] = {};
	u64 c0, c1;

	bpf_get_current_comm(&comm, sizeof(comm));
	__builtin_memcpy(&c0, &comm[0], 8);
	__builtin_memcpy(&c1, &comm[8], 8);
	if (c0 != (u64)FILTER_COMM0 || c1 != (u64)FILTER_COMM1)
		return 0;
#endif
	return 1;
}

#endif /* ALLOCSCOPE_BPF_H */
