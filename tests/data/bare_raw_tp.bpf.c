// SPDX-License-Identifier: GPL-2.0
/*
 * bare_raw_tp.bpf.c -- the floor of scripts/bench-startup: an empty raw tracepoint program.
 *
 * Compiling this with BCC and attaching it to kmem_cache_alloc is the least any BCC tool
 * pays before its first event (BCC's own helper headers, clang, the verifier, one attach);
 * allocscope's time from command start to attached is measured against it, in the same run.
 *
 * Maps: none.
 */
int on_kmem_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	return 0;
}
