// SPDX-License-Identifier: GPL-2.0
/*
 * task_filter.h - the "-C CPUS / -p PID" filter shared by oncpu.bpf.c and alloc_latency.bpf.c,
 * so the sampled numerator and the timed/counted denominator always select the same events.
 *
 * Maps
 *   cpu_ok   array u8 [MAX_CPUS]: 1 = this CPU is measured (only when FILTER_CPUS)
 *
 * Settings (-D)
 *   FILTER_TGID   0 = all processes, else only this process (thread group id)
 *   FILTER_CPUS   1 = consult cpu_ok (filled from user space before attaching)
 *   MAX_CPUS      size of cpu_ok
 */
#ifndef ALLOCSCOPE_TASK_FILTER_H
#define ALLOCSCOPE_TASK_FILTER_H

#ifndef FILTER_TGID
#define FILTER_TGID 0
#endif
#ifndef FILTER_CPUS
#define FILTER_CPUS 0
#endif
#ifndef MAX_CPUS
#define MAX_CPUS 1024
#endif

#if FILTER_CPUS
BPF_ARRAY(cpu_ok, u8, MAX_CPUS);
#endif

static __always_inline int wanted(void)
{
#if FILTER_CPUS
	int cpu = bpf_get_smp_processor_id();
	u8 *ok = cpu_ok.lookup(&cpu);
	if (!ok || !*ok)
		return 0;
#endif
#if FILTER_TGID
	if ((bpf_get_current_pid_tgid() >> 32) != FILTER_TGID)
		return 0;
#endif
	return 1;
}

#endif /* ALLOCSCOPE_TASK_FILTER_H */
