"""Namespace names and listing: every valid name (turbopuffer's [A-Za-z0-9-_.]{1,128},
leading dots included) is written, read, listed, indexed by `index --all` and deleted
alike on every backend; names puffer cannot store or reserves are refused at creation."""

from __future__ import annotations

import json

import pytest
from puffer_cli.cli import main as cli
from puffer_cli.errors import InvalidRequest
from puffer_cli.server.app import ServeConfig, create_app
from puffer_cli.store import layout
from starlette.testclient import TestClient

from .conftest import store_args

EDGE_NAMES = [".hidden", "..a", "...", ".tmp-x", "-", "_", "a" * 128, "_puffe"]
BAD_NAMES = [
    ".",
    "..",
    "",
    "a" * 129,
    "a/b",
    "a b",
    "é",
    "name\n",
    "_puffer_probe",
    "_puffer",
    "_PUFFER_x",
    "_Puffer_probe",
    None,
    7,
]


def _write(db, name):
    db.open_namespace(name).write({"upsert_rows": [{"id": 1, "x": 1}]})


def _all(db, **kw):
    out, cursor = [], None
    while True:
        page, cursor = db.namespaces_page(cursor=cursor, **kw)
        out.extend(page)
        if not cursor:
            return out


def test_edge_names_are_listed_on_every_backend(db):
    for n in EDGE_NAMES:
        _write(db, n)
    assert _all(db) == sorted(EDGE_NAMES)
    assert _all(db, page_size=3) == sorted(EDGE_NAMES)  # paging: no name lost or repeated
    assert _all(db, prefix=".") == sorted(n for n in EDGE_NAMES if n.startswith("."))
    for n in EDGE_NAMES:
        assert db.open_namespace(n).exists() and db.open_namespace(n).docs()[0].height == 1


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_puffer_cannot_store_or_reserves_are_refused(mem_db, name):
    with pytest.raises(InvalidRequest):
        mem_db.open_namespace(name)
    assert not layout.is_namespace_name(name)
    assert mem_db.namespaces_page()[0] == []


def test_reserved_prefix_covers_the_probe_dir():
    assert layout.PROBE_DIR.lower().startswith(layout.RESERVED_PREFIX)
    assert not layout.is_namespace_name(layout.PROBE_DIR.rstrip("/"))


def test_deleted_namespace_disappears_from_listing(db):
    for n in ("keep", ".gone", "gone"):
        _write(db, n)
    db.open_namespace(".gone").delete_all()
    db.open_namespace("gone").delete_all()
    assert _all(db) == ["keep"]
    # recreated: listed again
    _write(db, "gone")
    assert _all(db) == ["gone", "keep"]


def test_leftovers_are_not_namespaces(local_db):
    """What a delete (or a racing indexer) leaves in a local store: directories, lock
    files, a stray object outside meta.json and wal/: not listed."""
    _write(local_db, "real")
    _write(local_db, ".dot")
    local_db.open_namespace(".dot").delete_all()
    root = local_db.store.local_path("")
    assert not (root / ".dot").exists()  # delete takes the directories and lock files too
    (root / ".dot" / "wal").mkdir(parents=True)  # what a racing writer could leave
    (root / ".dot" / ".meta.json.lock").touch()
    (root / "emptydir" / "wal").mkdir(parents=True)
    local_db.store.write("stray/index/00000000000000000001/x.bin", b"x")
    (root / "not valid").mkdir()
    assert _all(local_db) == ["real"]


def test_namespace_with_wal_but_no_meta_is_listed(mem_db):
    """meta.json is a hint: a writer killed between its WAL commit and the meta update
    leaves a namespace that exists (head() finds it) and so must be listed."""
    _write(mem_db, "w")
    mem_db.store.delete(layout.meta("w"))
    assert mem_db.open_namespace("w").exists()
    assert _all(mem_db) == ["w"]


def test_http_listing_matches(db, store_url):
    url, endpoint = store_url
    for n in ("...", ".h", "z"):
        _write(db, n)
    db.open_namespace("z").delete_all()
    app = create_app(ServeConfig(store=url, s3_endpoint=endpoint, commit_window_ms=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/namespaces")
        assert r.status_code == 200 and [x["id"] for x in r.json()["namespaces"]] == ["...", ".h"]
        r = c.get("/v1/namespaces", params={"page_size": 1})
        assert [x["id"] for x in r.json()["namespaces"]] == ["..."] and r.json().get("next_cursor") == "..."
        assert c.delete("/v2/namespaces/.h").status_code == 200
        assert [x["id"] for x in c.get("/v1/namespaces").json()["namespaces"]] == ["..."]
        r = c.post("/v2/namespaces/_puffer_x", json={"upsert_rows": [{"id": 1}]})
        assert r.status_code == 400 and r.json()["status"] == "error"


def test_index_all_covers_exactly_the_listed_names(db, store_url, capsys, tmp_path):
    names = [".hidden", "..a", "...", "plain"]
    for n in names:
        _write(db, n)
    _write(db, "deleted")
    db.open_namespace("deleted").delete_all()
    listed = _all(db)
    assert listed == sorted(names)
    args = ["index", "--all", "--json", "--gc-grace", "0", "--cache-dir", str(tmp_path / "c")]
    assert cli.main(args + store_args(store_url)) == 0
    reps = json.loads(capsys.readouterr().out)["namespaces"]
    assert sorted(r["namespace"] for r in reps) == listed
    assert all(r["status"] == "indexed" for r in reps)
