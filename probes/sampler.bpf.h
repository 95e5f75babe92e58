// SPDX-License-Identifier: GPL-2.0
/*
 * sampler.bpf.h - sampling allocations by bytes, in kernel: the one sampler that the
 * per-tag context capture (context.bpf.c) and the lifespan tracker (lifespan.bpf.c) share.
 * The estimators that undo it live in collector/byte_sampling.py; the method is written down
 * in docs/design/sampling.md.
 *
 * Why by bytes: a 1-in-N event sample over-samples the many small allocations and can miss
 * the few large ones that hold most of the memory (one order-9 page allocation is 2 MiB,
 * 8192 kmalloc-256 objects). Here sample POINTS fall on the allocated bytes as a renewal
 * process with mean gap R bytes: an allocation of s bytes holds k >= 0 points, E[k] = s/R,
 * whatever its size. Each point stands for R bytes, so
 *
 *	bytes_hat = sum(k * R)          (unbiased for the bytes allocated)
 *	calls_hat = sum(k * R / s)      (unbiased for the calls: E[k * R / s] = 1 per allocation)
 *
 * and an allocation larger than R is (almost) never missed. R = 1 is a census: every byte
 * is a point, k = s, and every allocation gets weight exactly 1.
 *
 * The gaps are drawn uniformly from [1, 2R - 1] (mean R) with bpf_get_prandom_u32(), so a
 * periodic workload cannot alias with the sampler. R may change at run time (user space
 * writes it to adapt to a CPU budget); a gap keeps the R it was drawn with (st->rate), and
 * the hits it ends are weighted with that R, so estimates stay unbiased across changes.
 *
 * Cost: an allocation with no point costs one per-CPU array lookup and a subtraction
 * (~5 ns); one with points adds one bpf_get_prandom_u32() per point (bounded by
 * SAMPLER_MAX_DRAWS; the rest of a huge allocation's points are counted without drawing).
 *
 * No map calls here (BCC rewrites them only in the file it compiles, see allocscope.bpf.h):
 * the including program keeps `BPF_PERCPU_ARRAY(sampler_state, struct byte_sampler, 1)`,
 * looks up its entry and passes the pointer.
 *
 * Settings (-D)
 *   SAMPLER_MAX_DRAWS  random gaps drawn per allocation at most (16); past that the
 *                      remaining points of a huge allocation are counted as (bytes left) / R
 *
 * Constants shared with collector/byte_sampling.py (tests/unit/test_bpf_constants.py):
 *   SAMPLER_FRAC_BITS   fixed-point fraction bits of the call weights (8)
 *   SAMPLER_RATE_MAX    largest mean gap R in bytes (1 << 24): keeps calls_w2 inside u64
 *   SAMPLER_W2_SHIFT    right shift applied to R * R in bytes_w2 (16)
 */
#ifndef ALLOCSCOPE_SAMPLER_BPF_H
#define ALLOCSCOPE_SAMPLER_BPF_H

#ifndef SAMPLER_MAX_DRAWS
#define SAMPLER_MAX_DRAWS 16
#endif

#define SAMPLER_FRAC_BITS 8
#define SAMPLER_RATE_MAX (1 << 24)
#define SAMPLER_W2_SHIFT 16

/* One per CPU (a PERCPU_ARRAY[1] of the including program): no atomics on the hot path. */
struct byte_sampler {
	s64 countdown; /* bytes left until the next sample point */
	u64 rate; /* the mean gap R the current gap was drawn with (0 = not started) */
};

/*
 * What one sampled allocation adds to its key's sums. All are plain sums over the window,
 * so per-CPU or atomic accumulation in any order gives the same totals:
 *   hits      sum k                          (sample points: the raw sample size)
 *   bytes_w   sum k * R                      (bytes_hat)
 *   bytes_w2  sum k * (R * R >> 16)          (its variance: Var = sum k R^2 for Poisson k)
 *   calls_w   sum (k * R << 8) / s           (calls_hat in 1/256 units; one division of
 *                                            the product, so a census (R = 1, k = s) adds
 *                                            exactly 1 << 8 per allocation of any size)
 *   calls_w2  sum k * (((R << 8) / s)^2 >> 8) (its variance, in 1/256 units)
 */
struct sample_weight {
	u64 hits;
	u64 bytes_w;
	u64 bytes_w2;
	u64 calls_w;
	u64 calls_w2;
};

static __always_inline u64 sampler_gap(u64 rate)
{
	if (rate <= 1)
		return 1;
	return 1 + bpf_get_prandom_u32() % (2 * rate - 1);
}

/*
 * Sample points that fall inside an allocation of `bytes`; fills *w (zeroed by the caller)
 * and returns k. `rate` is the R user space wants now (clamped to [1, SAMPLER_RATE_MAX]).
 */
static __always_inline u32 byte_sampler_hits(struct byte_sampler *st, u64 bytes, u64 rate,
					     struct sample_weight *w)
{
	s64 c;
	u64 r, k = 0;

	if (rate < 1)
		rate = 1;
	if (rate > SAMPLER_RATE_MAX)
		rate = SAMPLER_RATE_MAX;
	if (st->rate == 0) { /* first event on this CPU: start a gap */
		st->rate = rate;
		st->countdown = sampler_gap(rate);
	}
	c = st->countdown - (s64)bytes;
	if (c > 0) {
		st->countdown = c;
		return 0;
	}
	r = st->rate; /* the hits below end gaps drawn with this R */
#pragma unroll
	for (int i = 0; i < SAMPLER_MAX_DRAWS; i++) {
		if (c > 0)
			break;
		k++;
		c += sampler_gap(rate);
	}
	if (c <= 0) { /* a huge allocation: count its remaining points without drawing */
		k += (u64)(-c) / rate + 1;
		c = sampler_gap(rate);
	}
	st->countdown = c;
	st->rate = rate;
	if (bytes == 0)
		bytes = 1;
	u64 cw = (r << SAMPLER_FRAC_BITS) / bytes;

	w->hits = k;
	w->bytes_w = k * r;
	w->bytes_w2 = k * ((r * r) >> SAMPLER_W2_SHIFT);
	w->calls_w = ((k * r) << SAMPLER_FRAC_BITS) / bytes;
	w->calls_w2 = k * ((cw * cw) >> SAMPLER_FRAC_BITS);
	return (u32)k;
}

/*
 * Address sampling for trackers that must also see the object's free (lifespan.bpf.c): the
 * free path decides from the pointer alone, before any map lookup, whether the object can
 * be a tracked one. A multiplicative hash of the pointer (Knuth, 2^64 / golden ratio) keeps
 * 1 in 2^shift addresses; slab objects of one cache share their low bits, so the pointer
 * is hashed whole rather than masked.
 */
static __always_inline int sampler_addr_kept(u64 addr, u32 shift)
{
	if (shift == 0)
		return 1;
	return ((addr * 0x9E3779B97F4A7C15ULL) >> (64 - shift)) == 0;
}

#endif /* ALLOCSCOPE_SAMPLER_BPF_H */
