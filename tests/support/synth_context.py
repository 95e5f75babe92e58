"""Synthetic ``context`` and ``lifespan`` results for the fleet tests (named queries, export,
report): raw sampler sums with known totals, turned into payloads by the verbs' own builders
(collector/context_payload.py, collector/lifespan.py ``build_payload``), so what is stored is
exactly what a capture would have produced from those sums.

Planted effects: pilot hosts allocate through ``pilot_tag`` at 3x the control rate; tag 0 has
two callers whose shares differ by host; half of every tag's bytes are memcg-charged on even
hosts; one lifespan row keeps old (leaked) objects.
"""

from __future__ import annotations

from allocscope.collector import context, context_payload, lifespan
from allocscope.collector.byte_sampling import SAMPLER_FRAC_BITS, SAMPLER_W2_SHIFT, WeightSums
from allocscope.collector.host import HostMetadata
from allocscope.collector.kallsyms import Kallsyms, Symbol
from allocscope.collector.result import Result
from allocscope.collector.site import Site
from allocscope.probes.context import CHARGED_YES
from allocscope.probes.lifespan import (
    NR_SLOTS,
    AllocTag,
    LifeEntry,
    LifeKey,
    LifespanSettings,
    TrackedObject,
    Weights,
)

TAGS = (
    Site("mm/slub.c", 100, "kmem_alloc_a"),
    Site("fs/dcache.c", 200, "d_alloc"),
    Site("net/core/skbuff.c", 300, "skb_alloc"),
)
PILOT_TAG = 2  # index into TAGS: the tag pilot hosts allocate 3x more through
CALLERS = ("caller_one", "caller_two", "caller_three")
_ADDR = {name: 0xFFFF_FFFF_8100_0000 + 0x1000 * i for i, name in enumerate(CALLERS)}
_ADDR["entry_SYSCALL_64"] = 0xFFFF_FFFF_8200_0000
for _i, _t in enumerate(TAGS):
    _ADDR[_t.function] = 0xFFFF_FFFF_8300_0000 + 0x1000 * _i
KSYMS = Kallsyms([Symbol(a, n, "") for n, a in _ADDR.items()])
RATE = 4096


def points(n: int, size: int, rate: int = RATE) -> WeightSums:
    """``n`` sample points on allocations of ``size`` bytes at mean gap ``rate``, with the
    fixed-point weights probes/sampler.bpf.h gives them."""
    frac = 1 << SAMPLER_FRAC_BITS
    return WeightSums(
        hits=n,
        bytes_w=n * rate,
        bytes_w2=(n * rate * rate) >> SAMPLER_W2_SHIFT,
        calls_w=n * rate * frac // size,
        calls_w2=n * (rate * rate * frac) // (size * size),
    )


def _weights(w: WeightSums) -> Weights:
    return Weights(w.hits, w.bytes_w, w.bytes_w2, w.calls_w, w.calls_w2)


def context_result(h: int, host: HostMetadata, start: float, duration: float) -> Result:
    tag_addr = {0x10 + i: t for i, t in enumerate(TAGS)}
    pilot = host.labels.get("group") == "pilot"
    samples: list[context.RawSample] = []
    for i, addr in enumerate(tag_addr):
        for j, caller in enumerate(CALLERS[:2] if i == 0 else CALLERS[i : i + 1]):
            n = 40 + 5 * h + 20 * j if i == 0 else 30 + 2 * h
            if i == PILOT_TAG and pilot:
                n *= 3
            stack = (_ADDR[caller], _ADDR["entry_SYSCALL_64"])
            sums = points(n, 64 * (i + 1))
            charged = (
                CHARGED_YES if h % 2 == 0 and j == 0 else 0
            )  # even hosts: the first caller's bytes charged
            samples.append(context.RawSample(addr, True, stack, i % 2, charged, sums))
    events = [sum(s.sums.hits for s in samples) * 50, 0, 0]
    nbytes = [int(sum(s.sums.bytes for s in samples)), 0, 0]
    raw = context.RawCapture(samples, tag_addr, events, nbytes, hits=len(samples))
    opts = context.Options(duration=duration, callers=5)
    payload = context_payload.build_payload(
        raw,
        KSYMS,
        opts,
        epochs=[context.Epoch(RATE, duration, events[0], nbytes[0], raw.hits)],
        duration=duration,
        backend="raw_tracepoint",
        tag_mode="exact-tag",
        charge_source="btf",
    )
    return Result(
        kind="context",
        host=host,
        start=start,
        duration=duration,
        settings={"duration": duration, "synthetic": True},
        payload=payload.to_dict(),
    )


def lifespan_result(h: int, host: HostMetadata, start: float, duration: float) -> Result:
    settings = LifespanSettings(sample_rate=RATE, addr_shift=0)
    stack_ids = {caller: k for k, caller in enumerate(CALLERS)}
    stacks: dict[int, tuple[int, ...]] = {
        k: (_ADDR[c], _ADDR["entry_SYSCALL_64"]) for c, k in stack_ids.items()
    }
    lives: list[LifeEntry] = []
    tracked: list[TrackedObject] = []
    end_ns = int(duration * 1e9)
    for k, caller in enumerate(CALLERS):
        key = LifeKey(_ADDR[TAGS[k].function], 0x10 + k, stack_ids[caller], 1)
        n = 20 + h + 5 * k
        hist_n = [0] * NR_SLOTS
        hist_w = [0] * NR_SLOTS
        hist_w2 = [0] * NR_SLOTS
        w = points(1, 128)
        life_sum = 0
        for m in range(n):
            slot = 10 + (m % (4 + k)) + (h % 3)
            hist_n[slot] += 1
            hist_w[slot] += w.calls_w
            hist_w2[slot] += w.calls_w2
            life_sum += w.calls_w * ((3 << slot) // 2 >> 6)
        freed = _weights(points(n, 128))
        lives.append(
            LifeEntry(
                key, freed, n, 0, 0, 0, life_sum, tuple(hist_n), tuple(hist_w), tuple(hist_w2)
            )
        )
        leaked = 2 + h if k == 0 else 1  # caller_one keeps old objects
        for m in range(leaked):
            age = int(5e9) if k == 0 else int(1e6)
            tracked.append(
                TrackedObject(
                    0x5000 + 64 * (100 * k + m), key, end_ns - age, 128, _weights(points(1, 128))
                )
            )
    raw = lifespan.RawLifespan(
        settings=settings,
        defines={"READ_ALLOC_TAG": 1},
        backend="raw_tracepoint",
        counters={"tracked": len(tracked)},
        tracked=tracked,
        lifespans=lives,
        stacks=stacks,
        tags={
            0x10 + k: AllocTag(TAGS[k].file, TAGS[k].line, TAGS[k].function)
            for k in range(len(CALLERS))
        },
        addr_sums=[],
        start_ns=0,
        end_ns=end_ns,
    )
    payload = lifespan.build_payload(raw, KSYMS, view="lifespan", older_ns=int(1e9))
    return Result(
        kind="lifespan",
        host=host,
        start=start,
        duration=duration,
        settings={"duration": duration, "synthetic": True},
        payload=payload.to_dict(),
    )
