"""ab: group comparison from result files, refusal of incomparable inputs, toggle pairing."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.ab import Loaded, compare_groups, compare_toggle
from allocscope.collector.host import HostMetadata
from allocscope.collector.payloads import OverheadPayload
from allocscope.collector.result import Result, read_result
from allocscope.errors import AllocscopeError

PERIOD_NS = 1e9 / 99


def _row(name: str, kind: str, samples: int, calls: int, busy: int) -> dict[str, Any]:
    return {
        "function": name,
        "kind": kind,
        "present": True,
        "inclusive_samples": samples,
        "self_samples": samples // 2,
        "inclusive_share": samples / busy,
        "self_share": samples / 2 / busy,
        "calls": calls,
        "calls_per_second": calls / 10,
        "ns_per_call": samples * PERIOD_NS / calls if calls else None,
    }


def _payload(page_ns: float, rng: random.Random, exact: bool = False) -> dict[str, Any]:
    calls = 1_000_000
    samples = max(1, round(page_ns * calls / PERIOD_NS))
    slab = round(rng.uniform(90, 110))
    busy = 20_000
    p: dict[str, Any] = {
        "seconds": 10.0,
        "period_ns": PERIOD_NS,
        "functions": [
            _row("__alloc_pages_noprof", "page", samples, calls, busy),
            _row("[page allocator]", "page", samples, calls, busy),
            _row("[slab allocator]", "slab", slab, 3_000_000, busy),
            {
                "function": "__alloc_pages",
                "kind": "page",
                "present": False,
                "inclusive_samples": 0,
                "calls": None,
                "ns_per_call": None,
                "inclusive_share": None,
            },
        ],
    }
    if exact:
        med = page_ns * 0.9
        p["exact"] = {
            "function": "__alloc_pages_noprof",
            "calls": calls,
            "total_ns": int(page_ns * calls * 1.2),
            "mean_ns": page_ns * 1.2,
            "median_ns": med,
            # most calls near the median, a few slow ones (reclaim) far above it
            "hist": [
                {"lo_ns": int(med * 0.97), "hi_ns": int(med * 1.03), "count": calls - 10},
                {"lo_ns": int(med * 20), "hi_ns": int(med * 40), "count": 10},
            ],
        }
    return p


def _result(
    page_ns: float,
    rng: random.Random,
    *,
    event: str = "cpu-clock",
    freq: int = 99,
    kernel: str = "6.12.0",
    profiling: str = "1",
) -> Result:
    host = HostMetadata(
        hostname=f"h{rng.randrange(10**6)}",
        kernel_release=kernel,
        boot_id="b",
        boot_time=0.0,
        cpus=8,
        cpu_model="x",
        memory_bytes=1 << 34,
        mem_profiling=profiling,
    )
    return Result(
        kind="overhead",
        host=host,
        start=0.0,
        duration=10.0,
        settings={"event": event, "frequency": freq},
        payload=_payload(page_ns, rng),
    )


def _groups(effect: float, n: int = 12, seed: int = 1) -> tuple[list[Loaded], list[Loaded]]:
    rng = random.Random(seed)
    pilot = [
        Loaded(f"p{i}", _result(2000 * effect * math.exp(rng.gauss(0, 0.08)), rng))
        for i in range(n)
    ]
    control = [
        Loaded(f"c{i}", _result(2000 * math.exp(rng.gauss(0, 0.08)), rng, profiling="0"))
        for i in range(n)
    ]
    return pilot, control


def test_pilot_41_percent_more_is_the_verdict() -> None:
    pilot, control = _groups(1.41)
    out = compare_groups(pilot, control).to_dict()
    verdict = out["verdicts"][0]
    assert verdict["function"] == "__alloc_pages_noprof"
    assert verdict["metric"] == "ns_per_call"
    assert verdict["significant"]
    assert 1.3 < verdict["ratio"] < 1.55
    assert verdict["ci_low"] > 1.0 and verdict["n_a"] == verdict["n_b"] == 12
    # absent functions are not compared
    assert not any(c["function"] == "__alloc_pages" for c in out["comparisons"])


def test_no_effect_is_not_significant() -> None:
    pilot, control = _groups(1.0, seed=5)
    out = compare_groups(pilot, control).to_dict()
    page = [c for c in out["comparisons"] if c["function"] == "__alloc_pages_noprof"]
    assert page and not any(c["significant"] for c in page)


@pytest.mark.parametrize(
    "field,kw",
    [
        ("event types", {"event": "cpu-cycles"}),
        ("sampling frequencies", {"freq": 999}),
        ("kernels", {"kernel": "6.13.0"}),
    ],
)
def test_refuses_incomparable_results(field: str, kw: dict[str, Any]) -> None:
    pilot, control = _groups(1.2, n=3)
    odd = Loaded("odd.json", _result(2000, random.Random(3), **kw))
    with pytest.raises(AllocscopeError, match=field) as e:
        compare_groups(pilot, [*control, odd])
    assert "odd.json" in str(e.value) and "--force" in str(e.value)
    out = compare_groups(pilot, [*control, odd], force=True).to_dict()
    assert any(field in n for n in out["notes"])


def test_cli_groups_end_to_end(tmp_path: Path, cli: Any) -> None:
    pilot, control = _groups(1.41, n=6)
    paths = {}
    for item in [*pilot, *control]:
        path = tmp_path / f"{item.path}.json"
        item.result.write(str(path))
        paths[item.path] = str(path)
    args = [
        "ab",
        "--pilot",
        *[paths[p.path] for p in pilot],
        "--control",
        *[paths[c.path] for c in control],
    ]
    rc, out, err = cli(*args)
    assert rc == 0, err
    assert "pilot spends +" in out and "`__alloc_pages_noprof`" in out and "n=6/6" in out
    rc, out, err = cli(*args, "--json", "-o", str(tmp_path / "ab.json"))
    assert rc == 0
    data = json.loads(out)
    assert data["kind"] == "ab" and data["payload"]["verdicts"][0]["significant"]
    assert read_result(str(tmp_path / "ab.json"), expect_kind="ab").payload["comparisons"]


def test_cli_rejects_wrong_kind_and_bad_json(tmp_path: Path, cli: Any) -> None:
    pilot, _ = _groups(1.0, n=2)
    good = tmp_path / "good.json"
    pilot[0].result.write(str(good))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1,\n "kind": ')
    rc, _, err = cli("ab", "--pilot", str(good), "--control", str(bad))
    assert rc != 0 and f"{bad}:2" in err and "Traceback" not in err
    # an overhead payload labelled who-calls is refused at the door, naming the field
    bad.write_text(json.dumps({**pilot[0].result.to_dict(), "kind": "who-calls"}))
    rc, _, err = cli("ab", "--pilot", str(good), "--control", str(bad))
    assert rc != 0 and "payload.site: missing" in err and "looks like a 'overhead'" in err
    rc, _, err = cli("ab", "--pilot", str(good))
    assert rc != 0 and "--control" in err


def test_toggle_pairs_adjacent_windows_and_reports_on_off_ratio() -> None:
    rng = random.Random(11)
    windows = []
    for _ in range(8):
        on = _payload(2000 * 1.41 * math.exp(rng.gauss(0, 0.03)), rng, True)
        off = _payload(2000 * math.exp(rng.gauss(0, 0.03)), rng, True)
        windows.append(("1", OverheadPayload.from_dict(on)))
        windows.append(("0", OverheadPayload.from_dict(off)))
    out = compare_toggle(windows).to_dict()
    assert out["pairs"] == 8
    v = out["verdicts"][0]
    assert v["function"] == "__alloc_pages_noprof" and v["metric"] == "exact_median_ns"
    assert v["test"].startswith("wilcoxon") and v["significant"] and 1.3 < v["ratio"] < 1.55
    pooled = {r["function"]: r for r in out["pooled"]}
    assert 1.3 < pooled["exact:__alloc_pages_noprof"]["ratio"] < 1.55
    assert 1.3 < pooled["exact:__alloc_pages_noprof (median)"]["ratio"] < 1.55
    assert 1.3 < pooled["[page allocator]"]["ratio"] < 1.55
    # an unpaired trailing window is dropped, and B A order pairs the same way
    flipped = [windows[1], windows[0], *windows[2:5]]
    assert compare_toggle(flipped).pairs == 2
