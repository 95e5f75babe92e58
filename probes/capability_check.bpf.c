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
 * Programs (each behind a -D switch; the first four on by default):
 *   CHECK_TRACEPOINT  check_tracepoint(ctx)   BPF_PROG_TYPE_TRACEPOINT, e.g. kmem:kmalloc
 *   CHECK_RAW_TP      check_raw_tp(ctx)       BPF_PROG_TYPE_RAW_TRACEPOINT, e.g. kmalloc
 *   CHECK_KPROBE      check_kprobe(ctx)       BPF_PROG_TYPE_KPROBE on any function
 *   CHECK_PERF        check_perf(ctx)         BPF_PROG_TYPE_PERF_EVENT (hw cycles, cpu-clock)
 *   FENTRY_TARGET=fn  kfunc__<fn>(ctx)        BPF_PROG_TYPE_TRACING/fentry; BTF-typed, so one
 *                                             target function per compile. BCC would attach
 *                                             kfunc__* at compile time; the Python side turns
 *                                             that auto-attach off and attaches it itself.
 *                                             CHECK_FENTRY defaults to 1 exactly when
 *                                             FENTRY_TARGET is passed.
 *
 * Cost: nothing at run time; each program is attached only for as long as the check takes.
 */

/* ALLOCSCOPE_KFUNC */
#include "allocscope.bpf.h"

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
/* FENTRY_TARGET is a function name (no default possible): its presence sets the switch. */
#ifndef CHECK_FENTRY
#ifdef FENTRY_TARGET
#define CHECK_FENTRY 1
#else
#define CHECK_FENTRY 0
#endif
#endif
#if CHECK_FENTRY
#ifndef FENTRY_TARGET
#error "capability_check.bpf.c: CHECK_FENTRY needs FENTRY_TARGET=<kernel function>"
#endif
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

#if CHECK_FENTRY
/* KFUNC_PROBE pastes its argument with ##: ALLOCSCOPE_KFUNC expands FENTRY_TARGET first. */
ALLOCSCOPE_KFUNC(FENTRY_TARGET)
{
	return 0;
}
#endif /* CHECK_FENTRY */
