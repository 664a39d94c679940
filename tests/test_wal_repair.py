"""The corruption suite for WAL format 2 and repair (issue 23, part 2): for each damage kind,
`wal-inspect --verify` reports it, `--repair` fixes it, every id that still exists in an intact
block or in the covering index generation survives, `namespaces` keeps working and the next
`puffer index` succeeds.  The long random-offset sweep is marked slow."""

import json
import random

import numpy as np
import polars as pl
import pytest
from puffer_cli.cli.main import main
from puffer_cli.store import layout
from puffer_cli.wal import codec as wal
from puffer_cli.wal import namespace as N

from .conftest import store_args

#: the store kinds each test runs on: every damage kind on local and memory; the main kinds (a
#: flipped block, truncation, a swapped segment, a deleted newest entry) on moto and SeaweedFS too
LOCAL = pytest.mark.parametrize("store_url", ["local", "memory"], indirect=True)
S3 = pytest.mark.parametrize(
    "store_url",
    ["local", "memory", "s3", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)],
    indirect=True,
)

B = wal.BLOCK_ROWS
ROWS = 2 * B + 100  # 3 blocks per chunk


def run(capsys, store_url, *args):
    code = main([*args, *store_args(store_url)])
    out = capsys.readouterr()
    return code, out.out, out.err


def frame(lo: int, n: int) -> pl.DataFrame:
    ids = np.arange(lo, lo + n, dtype=np.uint64)
    return pl.DataFrame({"id": ids, "v": np.random.default_rng(lo).random((n, 4), dtype=np.float32), "t": ids % 7})


def build(db, capsys, store_url, index: bool):
    """3 entries: ids [0, ROWS), [ROWS, 2 ROWS), a patch of id 1. Indexed through seq 3 if ``index``."""
    ns = db.open_namespace("rp")
    ns.write_frame(frame(0, ROWS))
    ns.write_frame(frame(ROWS, ROWS))
    ns.write({"patch_rows": [{"id": 1, "t": 99}]})
    if index:
        assert run(capsys, store_url, "index", "rp")[0] == 0
    N.forget(db.store, "rp")
    return db.store


def ids_now(db) -> set[int]:
    N.forget(db.store, "rp")
    return set(db.open_namespace("rp").docs()[0]["id"].to_list())


def flip_block(store, seq: int, block: int, nbytes: int = 16):
    key = layout.wal("rp", seq)
    data = bytearray(store.read(key))
    header, start = wal.read_header(bytes(data))
    b = header["ops"][0]["blocks"][block]
    for i in range(nbytes):
        data[start + b["offset"] + b["length"] // 3 + i] ^= 0x5A
    store.write(key, bytes(data))
    return b


def check_after(db, capsys, store_url, expect: set[int]):
    assert run(capsys, store_url, "wal-inspect", "rp", "--verify")[0] == 0
    assert ids_now(db) == expect
    code, out, err = run(capsys, store_url, "namespaces", "--json")
    assert code == 0, err
    assert [r["rows"] for r in json.loads(out)["namespaces"] if r["namespace"] == "rp"] == [len(expect)]
    code, out, err = run(capsys, store_url, "index", "rp")
    assert code == 0, err
    code, out, err = run(capsys, store_url, "query", "rp", "--filter", '["t","Eq",99]', "--format", "json")
    assert code == 0, err


@S3
def test_flipped_block_recovered_from_index(db, store_url, capsys):
    store = build(db, capsys, store_url, index=True)
    every = set(range(2 * ROWS))
    flip_block(store, 1, 1)
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--verify")
    assert code == 1 and "seq 1" in out and "checksum" in out
    before = store.read(layout.wal("rp", 1))
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--dry-run", "--json")
    plan = json.loads(out)["dry_run"][0]
    assert (plan["rows_salvaged"], plan["rows_from_index"], plan["rows_lost"]) == (ROWS - B, B, 0)
    assert store.read(layout.wal("rp", 1)) == before and not store.list(layout.quarantine_dir("rp"))
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--repair")
    assert code == 0 and f"rows salvaged {ROWS - B:,}" in out and "rows recovered from index generation" in out
    q = [k for k in store.list(layout.quarantine_dir("rp")) if k.endswith(".wal")]
    assert [store.read(k) for k in q] == [before]  # the damaged bytes, kept
    check_after(db, capsys, store_url, every)
    N.forget(store, "rp")
    docs = db.open_namespace("rp").docs()[0]
    assert docs.filter(pl.col("id") == 1)["t"].to_list() == [99]  # the later patch still applies


@LOCAL
def test_flipped_block_without_index_reports_the_ids(db, store_url, capsys):
    store = build(db, capsys, store_url, index=False)
    b = flip_block(store, 2, 0)
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--repair", "--yes", "--json")
    (d,) = json.loads(out)["repaired"]
    lost = list(range(b["min_id"], b["max_id"] + 1))
    assert d["rows_lost"] == B and d["ids_lost"] == lost and d["rows_from_index"] == 0
    note = [k for k in store.list(layout.quarantine_dir("rp")) if k.endswith(".json")][0]
    assert json.loads(store.read(note))["ids_lost"] == lost
    check_after(db, capsys, store_url, set(range(2 * ROWS)) - set(lost))


@S3
def test_truncated_entry(db, store_url, capsys):
    store = build(db, capsys, store_url, index=True)
    key = layout.wal("rp", 2)
    data = store.read(key)
    store.write(key, data[: len(data) // 2])
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--verify")
    assert code == 1 and "truncated" in out
    assert run(capsys, store_url, "wal-inspect", "rp", "--repair")[0] == 0
    check_after(db, capsys, store_url, set(range(2 * ROWS)))


@S3
def test_swapped_segment(db, store_url, capsys):
    """`cp wal/..03.wal wal/..01.wal`: readers fail with "header says seq 3, key says 1"."""
    store = build(db, capsys, store_url, index=True)
    store.write(layout.wal("rp", 1), store.read(layout.wal("rp", 3)))
    N.forget(store, "rp")
    code, out, err = run(capsys, store_url, "export", "rp")
    assert code == 1 and "header says seq 3, key says 1" in err and "wal-inspect" in err
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--verify")
    assert code == 1 and "seq 1" in out and "header says seq 3" in out
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--repair", "--json")
    (d,) = json.loads(out)["repaired"]
    assert d["rows_salvaged"] == 0 and d["rows_from_index"] == ROWS  # another seq's ops are never replayed here
    check_after(db, capsys, store_url, set(range(2 * ROWS)))


@S3
def test_deleted_newest_segment_covered(db, store_url, capsys):
    store = build(db, capsys, store_url, index=False)
    db.open_namespace("rp").write({"upsert_rows": [{"id": 10**6, "t": 5}]})
    assert run(capsys, store_url, "index", "rp")[0] == 0
    store.delete(layout.wal("rp", 4))
    N.forget(store, "rp")
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--verify")
    assert code == 1 and "seq 4" in out and "newest WAL entry is 3" in out
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--repair", "--json")
    (d,) = json.loads(out)["repaired"]
    assert d["rows_from_index"] == 1
    check_after(db, capsys, store_url, set(range(2 * ROWS)) | {10**6})


@LOCAL
def test_deleted_newest_segment_not_covered(db, store_url, capsys):
    store = build(db, capsys, store_url, index=True)
    db.open_namespace("rp").write({"upsert_rows": [{"id": 10**6, "t": 5}]})
    store.delete(layout.wal("rp", 4))
    N.forget(store, "rp")
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--verify")
    assert code == 1 and "seq 4" in out
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--repair", "--json")
    (d,) = json.loads(out)["repaired"]
    assert d["seq"] == 4 and d["action"].startswith("lost")
    meta, _ = db.open_namespace("rp").read_meta()
    assert meta["last_seq"] == 3
    check_after(db, capsys, store_url, set(range(2 * ROWS)))
    db.open_namespace("rp").write({"upsert_rows": [{"id": 7, "t": 1}]})  # writers go on at seq 4
    assert db.open_namespace("rp").head().seq == 4


@LOCAL
def test_gap_in_the_chain(db, store_url, capsys):
    store = build(db, capsys, store_url, index=True)
    store.delete(layout.wal("rp", 2))
    N.forget(store, "rp")
    code, out, _ = run(capsys, store_url, "wal-inspect", "rp", "--verify")
    assert code == 1 and "seq 2" in out and "missing" in out
    assert run(capsys, store_url, "wal-inspect", "rp", "--repair")[0] == 0
    check_after(db, capsys, store_url, set(range(2 * ROWS)))


@LOCAL
def test_skip_policy_says_what_it_skipped(db, store_url, capsys):
    store = build(db, capsys, store_url, index=False)
    flip_block(store, 2, 0)
    N.forget(store, "rp")
    code, out, err = run(capsys, store_url, "export", "rp", "--wal-corrupt-policy", "skip")
    assert code == 0 and "skipped WAL entry 2" in err and f"{ROWS:,} rows" in err
    N.forget(store, "rp")
    code, out, err = run(capsys, store_url, "namespaces", "--json", "--wal-corrupt-policy", "skip")
    assert code == 0 and "skipped WAL entry 2" in err
    (s,) = json.loads(out)["skipped"]
    assert (s["namespace"], s["seq"], s["rows"]) == ("rp", 2, ROWS)
    N.forget(store, "rp")
    code, out, err = run(capsys, store_url, "query", "rp", "--wal-corrupt-policy", "skip", "--format", "json")
    assert code == 0 and json.loads(out)["skipped"][0]["seq"] == 2


@pytest.mark.slow
@S3
def test_random_offsets(db, store_url, capsys):
    """Flipped bytes at 20 random offsets of an entry the index covers: no id is lost."""
    store = build(db, capsys, store_url, index=True)
    key = layout.wal("rp", 2)
    data = bytearray(store.read(key))
    rnd = random.Random(23)
    for off in rnd.sample(range(len(data)), 20):
        data[off] ^= 1 << rnd.randrange(8)
    store.write(key, bytes(data))
    assert run(capsys, store_url, "wal-inspect", "rp", "--repair")[0] == 0
    check_after(db, capsys, store_url, set(range(2 * ROWS)))
