// SPDX-License-Identifier: GPL-2.0
/*
 * capability_check.bpf.c -- tiny do-nothing programs, one per BPF attach type, so that
 * `allocscope doctor` (probes/capabilities.py) can find out what ACTUALLY loads and attaches
 * on this kernel by trying, instead of guessing from a kernel config.
 *
 * All sections compile into ONE object (one BCC compile: ~10 s under emulation); Python then
 * loads and attaches each function on its own, detaches it at once, and records failures.
 * Every program returns immediately; none reads kernel memory, so mismatched headers are fine.
 *
 * Maps: none.
 *
 * Programs (each behind a -D switch, all on by default):
 *   CHECK_TRACEPOINT  check_tracepoint(ctx)   BPF_PROG_TYPE_TRACEPOINT, e.g. kmem:kmalloc
 *   CHECK_RAW_TP      check_raw_tp(ctx)       BPF_PROG_TYPE_RAW_TRACEPOINT, e.g. kmalloc
 *   CHECK_KPROBE      check_kprobe(ctx)       BPF_PROG_TYPE_KPROBE on any function
 *   CHECK_PERF        check_perf(ctx)         BPF_PROG_TYPE_PERF_EVENT (hw cycles, cpu-clock)
 *   FENTRY_TARGET=fn  kfunc__<fn>(ctx)        BPF_PROG_TYPE_TRACING/fentry; BTF-typed, so one
 *                                             target function per compile. BCC would attach
 *                                             kfunc__* at compile time; the Python side turns
 *                                             that auto-attach off and attaches it itself.
 */

#ifndef CHECK_TRACEPOINT
#define CHECK_TRACEPOINT 1
#endif
#ifndef CHECK_RAW_TP
#define CHECK_RAW_TP 1
#endif
#ifndef CHECK_KPROBE
#define CHECK_KPROBE 1
#endif
#ifndef CHECK_PERF
#define CHECK_PERF 1
#endif

#if CHECK_TRACEPOINT
int check_tracepoint(void *ctx)
{
	return 0;
}
#endif

#if CHECK_RAW_TP
int check_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	return 0;
}
#endif

#if CHECK_KPROBE
int check_kprobe(struct pt_regs *ctx)
{
	return 0;
}
#endif

#if CHECK_PERF
int check_perf(void *ctx)
{
	return 0;
}
#endif

#ifdef FENTRY_TARGET
/* KFUNC_PROBE pastes its argument with ##, which would not expand FENTRY_TARGET: go through
 * one more macro so the target name is expanded first. */
#define ALLOCSCOPE_FENTRY(fn) KFUNC_PROBE(fn)
ALLOCSCOPE_FENTRY(FENTRY_TARGET)
{
	return 0;
}
#endif
