"""Flip a byte, truncate, delete a segment: --verify names it; fail errors
clearly; skip skips; --repair quarantines, salvages and never deletes data."""

import json

import pytest
from puffer_cli.cli.main import main
from puffer_cli.errors import CorruptWal
from puffer_cli.store import layout
from puffer_cli.wal import namespace as N

from .conftest import store_args


def setup_ns(db):
    ns = db.open_namespace("cw")
    ns.write({"upsert_rows": [{"id": 1, "x": "a"}]})
    ns.write({"upsert_rows": [{"id": 2, "x": "b"}], "deletes": [1]})
    ns.write({"upsert_rows": [{"id": 3, "x": "c"}]})
    N.forget(db.store, "cw")
    return db.store


def damage(store, how, seq=2):
    key = layout.wal("cw", seq)
    data = bytearray(store.read(key))
    if how == "flip":
        data[len(data) // 2] ^= 0x40
        store.write(key, bytes(data))
    elif how == "flip-last-op":
        data[-20] ^= 0x01
        store.write(key, bytes(data))
    elif how == "truncate":
        store.write(key, bytes(data[: len(data) - 30]))
    elif how == "delete":
        store.delete(key)
    N.forget(store, "cw")


def run(capsys, store_url, *args):
    code = main([*args, *store_args(store_url)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("how,word", [("flip", "checksum"), ("truncate", "truncated"), ("delete", "missing")])
def test_verify_names_the_segment(db, store_url, capsys, how, word):
    store = setup_ns(db)
    code, out, err = run(capsys, store_url, "wal-inspect", "cw", "--verify")
    assert code == 0 and "ok" in out
    damage(store, how)
    code, out, err = run(capsys, store_url, "wal-inspect", "cw", "--verify")
    assert code == 1
    assert "seq 2" in out and word in out and "00000000000000000002.wal" in out
    code, out, err = run(capsys, store_url, "wal-inspect", "cw", "--verify", "--json")
    assert code == 1 and json.loads(out)["bad"][0]["seq"] == 2


def test_fail_policy_errors_clearly_and_skip_skips(db, store_url, capsys):
    store = setup_ns(db)
    damage(store, "flip")
    with pytest.raises(CorruptWal) as e:
        db.open_namespace("cw").docs()
    assert "00000000000000000002.wal" in str(e.value)
    code, out, err = run(capsys, store_url, "export", "cw")
    assert code == 1 and err.startswith("Error: ") and "corrupt" in err and "wal-inspect" in err
    N.forget(store, "cw")
    code, out, err = run(capsys, store_url, "export", "cw", "--wal-corrupt-policy", "skip")
    assert code == 0
    ids = sorted(json.loads(line)["id"] for line in out.splitlines())
    assert ids == [1, 3]  # entry 2 (upsert 2, delete 1) skipped


def test_repair_salvages_and_quarantines(db, store_url, capsys):
    store = setup_ns(db)
    original = store.read(layout.wal("cw", 2))
    damage(store, "flip-last-op")  # the delete op's block is damaged, the upsert is intact
    code, out, err = run(capsys, store_url, "wal-inspect", "cw", "--repair", "--json")
    assert code == 0
    done = json.loads(out)["repaired"]
    assert done[0]["seq"] == 2 and done[0]["ops_salvaged"] == 1 and done[0]["ops_lost"] == 1
    q = store.list(layout.quarantine_dir("cw"))
    assert any(k.endswith(".wal") for k in q) and any(k.endswith(".json") for k in q)
    damaged = [store.read(k) for k in q if k.endswith(".wal")][0]
    assert len(damaged) == len(original) and damaged != original  # the damaged bytes, kept
    code, out, err = run(capsys, store_url, "wal-inspect", "cw", "--verify")
    assert code == 0
    N.forget(store, "cw")
    docs, _ = db.open_namespace("cw").docs()
    assert sorted(docs["id"].to_list()) == [1, 2, 3]  # the lost delete of 1 did not replay
    code, out, err = run(capsys, store_url, "wal-inspect", "cw")
    assert "repaired" in out


def test_repair_missing_segment(db, store_url, capsys):
    store = setup_ns(db)
    damage(store, "delete")
    code, out, err = run(capsys, store_url, "wal-inspect", "cw", "--repair")
    assert code == 0 and "missing" in out
    code, _, _ = run(capsys, store_url, "wal-inspect", "cw", "--verify")
    assert code == 0
    N.forget(store, "cw")
    assert sorted(db.open_namespace("cw").docs()[0]["id"].to_list()) == [1, 3]


def test_show(db, store_url, capsys):
    setup_ns(db)
    code, out, _ = run(capsys, store_url, "wal-inspect", "cw", "--show", "2", "--json")
    assert code == 0
    shown = json.loads(out)
    assert [o["kind"] for o in shown["ops"]] == ["upsert", "delete"]
    assert shown["ops"][0]["data"][0]["x"] == "b"
    code, out, _ = run(capsys, store_url, "wal-inspect", "cw", "--show", "2")
    assert "upsert (1 rows)" in out
