/* Test program for the probe loader: counts kmem_cache_alloc events per call site.
 * The function is named plainly (not RAW_TRACEPOINT_PROBE) so the loader attaches it
 * explicitly, as backend-choosing programs do.
 *
 * Maps:
 *   counts  hash  call_site (u64) -> events (u64)
 */
BPF_HASH(counts, u64, u64, 4096);

int on_kmem_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    u64 site = ctx->args[0];
    counts.increment(site);
    return 0;
}
