"""A damaged store part is named, with how to move it aside, by every verb that reads it.

A zero-byte or truncated part in ``allocinfo``, ``hosts`` or ``callers`` (and, since the agent
stores them, the interval datasets ``context`` and ``lifespan``) used to give a
traceback in ``export --store``, ``report --store`` and ``ingest``. Every verb reads the store
through collector/store_read.py now and refuses (exit 2) with one line naming the file; none
skips it, since an answer without one snapshot or commit record is silently wrong. A verb that
does not read the damaged dataset is not affected (ingest reads only the commit records).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import Cli
from report_samples import HOST, ingest_results, make_store, who_calls_result

from allocscope.collector.store import Store


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("damage")
    store = make_store(d / "store", hosts=2, sites=20, snapshots=2)
    ingest_results(store, d)
    # the interval datasets the agent writes with --context / --lifespan
    from support.synth_context import context_result, lifespan_result

    from allocscope.collector.ingest import ingest

    paths = []
    for i, make in enumerate((context_result, lifespan_result)):
        p = d / f"interval{i}.json"
        make(0, HOST, 1_800_000_000.0 + 60 * i, 60.0).write(str(p))
        paths.append(str(p))
    ingest(Store(str(store)), paths)
    return store


def _damage(pristine: Path, tmp_path: Path, dataset: str, how: str) -> tuple[Path, str]:
    root = tmp_path / "store"
    shutil.copytree(pristine, root)
    store = Store(str(root))
    # host00000's latest snapshot (export reads that one), or the first result part
    part = [f for f in store.files(dataset) if "host00000" in f or dataset in RESULTS][-1]
    if how == "zero-byte":
        Path(part).write_bytes(b"")
    else:
        data = Path(part).read_bytes()
        Path(part).write_bytes(data[: len(data) // 2])
    return root, part


def _new_result(tmp_path: Path) -> str:
    p = who_calls_result(tmp_path / "new-wc.json")
    doc = json.loads(p.read_text())
    doc["host"]["hostname"] = "newhost"
    p.write_text(json.dumps(doc))
    return str(p)


def _commands(root: Path, tmp_path: Path) -> dict[str, list[str]]:
    s = str(root)
    return {
        "export": ["export", "--prometheus", "--store", s, "--host", "host00000"],
        "report": ["report", "--store", s, "-o", str(tmp_path / "r.html")],
        "query": ["query", "--store", s, "top-sites"],
        "query-callers": ["query", "--store", s, "--sql", "SELECT count(*) FROM {callers}"],
        "ingest": ["ingest", "--store", s, _new_result(tmp_path)],
        "export-context": ["export", "--prometheus", "--store", s, "--context"]
        + ["--host", HOST.hostname],
        "query-charged": ["query", "--store", s, "charged-by-subsystem"],
        "query-lifespans": ["query", "--store", s, "lifespan-by-tag"],
    }


# which verbs read which dataset
READS = {
    "allocinfo": {"export", "report", "query"},
    "hosts": {"export", "report", "query", "ingest", "export-context"},
    "callers": {"report", "query-callers", "ingest"},
    "context": {"report", "export-context", "query-charged", "ingest"},
    "lifespan": {"report", "query-lifespans", "ingest"},
}
# named queries whose engine may skip another host's commit record (the damaged hosts part is
# host00000's; the interval rows are another host's): either a right answer or the named error
MAY_READ = {"hosts": {"query-charged", "query-lifespans"}}
RESULTS = {"callers", "context", "lifespan"}  # datasets of ingested results (one part each)


@pytest.mark.parametrize("how", ["zero-byte", "truncated"])
@pytest.mark.parametrize("dataset", sorted(READS))
def test_a_damaged_part_is_named_everywhere(
    pristine: Path, tmp_path: Path, cli: Cli, dataset: str, how: str
) -> None:
    root, part = _damage(pristine, tmp_path, dataset, how)
    for verb, args in _commands(root, tmp_path).items():
        rc, _out, err = cli(*args)
        if verb in MAY_READ.get(dataset, ()) and rc == 0:
            continue
        if verb not in READS[dataset] | MAY_READ.get(dataset, set()):
            assert rc == 0, (verb, err)
            continue
        assert rc == 2, (verb, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (verb, err)
        assert err.startswith(f"allocscope: error: {part}: not a whole Parquet file"), (verb, err)
        assert f"move it aside: mv {part} {part}.damaged" in err, (verb, err)
        if how == "zero-byte":
            assert "zero bytes" in err


def test_moved_aside_the_store_reads_again(pristine: Path, tmp_path: Path, cli: Cli) -> None:
    root, part = _damage(pristine, tmp_path, "allocinfo", "truncated")
    rc, _out, err = cli("query", "--store", str(root), "top-sites")
    assert rc == 2 and "mv " in err
    os.rename(part, part + ".damaged")
    rc, out, err = cli("query", "--store", str(root), "top-sites")
    assert rc == 0 and "(no rows)" not in out, err


def test_query_refuses_a_store_that_is_not_one(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a store\n")
    for name, why in (
        ("missing", "no such store directory"),
        ("empty", "no allocinfo snapshots or results in this store"),
        ("file", "not a directory"),
    ):
        rc, out, err = cli("query", "--store", str(tmp_path / name), "top-sites")
        assert rc == 2 and out == "", name
        assert err.startswith(f"allocscope: error: {tmp_path / name}: {why}"), err
        assert err.count("\n") == 1
