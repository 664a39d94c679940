"""Copy-on-write branches (branch_from_namespace; docs/http.md "Branches"): a branch sees its source's
indexed rows and WAL tail at branch time, writes on either side stay independent, the source's
index runs and GC keep what a branch references, delete_all of the branch releases its pin."""

from __future__ import annotations

import json
import threading

import pytest
import turbopuffer
from puffer_cli.db import NamespaceHandle
from puffer_cli.errors import InvalidRequest, NamespaceNotFound
from puffer_cli.index import builder
from puffer_cli.jobs import branch
from puffer_cli.server.app import ServeConfig
from puffer_cli.store import layout
from puffer_cli.wal import namespace as nsmod

from .serve_proc import ThreadServer


def rows(n, start=0, tag="s"):
    return [{"id": i, "vector": [float(i), 1.0], "t": tag} for i in range(start, start + n)]


def ids(ns, **kw) -> list:
    return sorted(r["id"] for r in NamespaceHandle(ns).query({"rank_by": ["id", "asc"], "top_k": 1000, **kw}).rows)


def near(ns, v, k=3) -> list:
    return [r["id"] for r in NamespaceHandle(ns).query({"rank_by": ["vector", "ANN", v], "top_k": k}).rows]


def index(ns):
    return builder.index_namespace(ns, gc_grace_s=0)


def test_branch_sees_source_and_stays_independent(db):
    src = db.open_namespace("src")
    src.write({"upsert_rows": rows(20), "distance_metric": "euclidean_squared"})
    index(src)
    src.write({"upsert_rows": rows(2, 100), "deletes": [0]})  # unindexed WAL tail at branch time
    out = branch.branch_namespace(db.store, "br", "src")
    assert out["status"] == "OK" and out["base_seq"] == 2
    br = db.open_namespace("br")
    want = [*range(1, 20), 100, 101]
    assert ids(br) == want == ids(br, consistency={"level": "eventual"})
    assert near(br, [100.0, 1.0]) == near(src, [100.0, 1.0])
    assert not db.store.list(layout.wal_dir("br"))  # nothing copied: no WAL of its own yet
    br.write({"upsert_rows": rows(1, 200, "b"), "deletes": [1]})
    src.write({"upsert_rows": rows(1, 300), "deletes": [2]})
    assert ids(br) == sorted([i for i in want if i != 1] + [200])
    assert ids(src) == sorted([i for i in want if i != 2] + [300])
    assert db.open_namespace("br").docs()[0].height == len(want)
    assert "br" in db.namespaces()


def test_source_gc_and_branch_index(db):
    src = db.open_namespace("src")
    src.write({"upsert_rows": rows(30), "distance_metric": "euclidean_squared"})
    index(src)
    branch.branch_namespace(db.store, "br", "src")
    br = db.open_namespace("br")
    # the source rewrites everything: its old generation is unreferenced but for the pin
    src.write({"deletes": list(range(25))})
    index(src)
    index(src)
    assert ids(src) == list(range(25, 30))
    assert ids(br) == list(range(30)) and near(br, [3.0, 1.0], 1) == [3]
    br.write({"upsert_rows": rows(1, 500, "b")})
    rep = index(br)
    assert rep.status == "indexed" and rep.live_rows == 31
    assert ids(br) == [*range(30), 500] and near(br, [500.0, 1.0], 1) == [500]
    assert all(k.startswith("br/") for k in db.store.list("br/index/"))
    with pytest.raises(InvalidRequest, match="live branch"):
        src.delete_all()
    br.delete_all()
    assert not db.store.list(layout.branch_pins_dir("src"))
    assert ids(src) == list(range(25, 30))
    src.delete_all()
    assert not db.open_namespace("src").exists()


def test_branch_of_branch_and_errors(mem_db):
    db = mem_db
    with pytest.raises(NamespaceNotFound):
        branch.branch_namespace(db.store, "b1", "nope")
    db.open_namespace("a").write({"upsert_rows": [{"id": 1, "x": 1}]})
    db.open_namespace("other").write({"upsert_rows": [{"id": 9}]})
    with pytest.raises(InvalidRequest, match="already exists"):
        branch.branch_namespace(db.store, "other", "a")
    with pytest.raises(InvalidRequest, match="itself"):
        branch.branch_namespace(db.store, "a", "a")
    branch.branch_namespace(db.store, "b1", "a")
    with pytest.raises(InvalidRequest, match="already exists"):
        branch.branch_namespace(db.store, "b1", "a")
    db.open_namespace("b1").write({"upsert_rows": [{"id": 2, "x": 2}]})
    branch.branch_namespace(db.store, "b2", "b1")
    db.open_namespace("b2").write({"upsert_rows": [{"id": 3, "x": 3}]})
    assert (
        ids(db.open_namespace("b2")) == [1, 2, 3]
        and ids(db.open_namespace("b1")) == [1, 2]
        and ids(db.open_namespace("a")) == [1]
    )
    with pytest.raises(InvalidRequest, match="b2"):
        db.open_namespace("b1").delete_all()
    db.open_namespace("b2").delete_all()
    db.open_namespace("b1").delete_all()
    db.open_namespace("a").delete_all()
    for v in (5, {"source_namespace": 5}, {"source_namespace": "a", "x": 1}):
        with pytest.raises(InvalidRequest):
            branch.parse_source(v)


def test_stale_pin_is_dropped(mem_db):
    """A crash between the pin and the branch's meta.json: the pin protects nothing after the
    grace period; the source's GC drops it and the source can be deleted."""
    db = mem_db
    src = db.open_namespace("src")
    src.write({"upsert_rows": [{"id": 1}]})
    pin = {"branch": "ghost", "id": "x", "seq": 1, "manifest": None, "created_at": 0}
    db.store.create(layout.branch_pin("src", "ghost"), json.dumps(pin).encode())
    assert [live for _k, _p, live in src.pins()] == [False]
    index(src)
    assert not db.store.list(layout.branch_pins_dir("src"))
    src.delete_all()


def _crash_left_pin(db, dest="br", age_s=1.0):
    """The pin a creation that crashed between its steps 1 and 2 leaves: no branch meta.json."""
    from puffer_cli.store import now_ms

    pin = {"branch": dest, "id": "crashed", "seq": 1, "manifest": None, "created_at": now_ms() - int(age_s * 1000)}
    assert db.store.create(layout.branch_pin("src", dest, "crashed"), json.dumps(pin).encode())


def test_retry_after_a_crash_left_pin(db):
    """A crash between the pin and the branch's meta.json: a retry succeeds at once (its pin
    is a key of its own); the crashed creation's pin is stale once the branch names another id,
    and the source's GC drops it, never the live one."""
    db.open_namespace("src").write({"upsert_rows": [{"id": 1}, {"id": 2}]})
    _crash_left_pin(db)
    out = branch.branch_namespace(db.store, "br", "src")
    assert out["status"] == "OK" and out["base_seq"] == 1
    assert ids(db.open_namespace("br")) == [1, 2]
    bid = db.open_namespace("br").read_meta()[0]["branch"]["id"]
    pins = {p["id"]: live for _k, p, live in db.open_namespace("src").pins()}
    assert pins == {"crashed": False, bid: True}
    index(db.open_namespace("src"))
    [(_k, pin, live)] = db.open_namespace("src").pins()
    assert live and pin["id"] == bid
    with pytest.raises(InvalidRequest, match="already exists"):
        branch.branch_namespace(db.store, "br", "src")
    with pytest.raises(InvalidRequest, match="live branch"):
        db.open_namespace("src").delete_all()
    db.open_namespace("br").delete_all()
    assert not db.store.list(layout.branch_pins_dir("src"))


def test_old_style_pin_is_released(mem_db):
    """A branch created when pins had one key per branch (``{dest}.json``) releases it on delete."""
    db = mem_db
    db.open_namespace("src").write({"upsert_rows": [{"id": 1}]})
    branch.branch_namespace(db.store, "br", "src")
    bid = db.open_namespace("br").read_meta()[0]["branch"]["id"]
    new_key = layout.branch_pin("src", "br", bid)
    db.store.write(layout.branch_pin("src", "br"), db.store.read(new_key))  # as the old code wrote it
    db.store.delete(new_key)
    assert [live for _k, _p, live in db.open_namespace("src").pins()] == [True]
    db.open_namespace("br").delete_all()
    assert not db.store.list(layout.branch_pins_dir("src"))
    db.open_namespace("src").delete_all()


def test_gc_and_delete_never_drop_a_live_pin(mem_db):
    """The races a rewritable pin allowed: the source's GC judging a crash-left pin stale while
    a retry commits, and ``delete_all`` of a branch while it is branched again under its name.
    Pins are never rewritten, so each deletion removes only the pin it judged."""
    db = mem_db
    src = db.open_namespace("src")
    src.write({"upsert_rows": [{"id": 1}]})
    _crash_left_pin(db, age_s=10_000)  # stale: older than PIN_GRACE_S
    stale = [k for k, _p, live in src.pins() if not live]
    branch.branch_namespace(db.store, "br", "src")  # the retry commits between GC's read and delete
    for k in stale:
        db.store.delete(k)  # what GC does with the pins it judged stale
    assert [live for _k, _p, live in src.pins()] == [True]
    # delete_all of br racing a new branch of the same name: the old branch's pin release
    # (after its keys are gone) must not take the new branch's pin
    old_bid = db.open_namespace("br").read_meta()[0]["branch"]["id"]
    db.store.delete_prefix(layout.namespace_prefix("br"))  # delete_all's first step
    nsmod.Namespace(db.store, "br").reset_cache()
    branch.branch_namespace(db.store, "br", "src")
    nsmod.release_pin(db.store, "src", "br", old_bid)  # delete_all's last step
    [(_k, pin, live)] = src.pins()
    assert live and pin["id"] == db.open_namespace("br").read_meta()[0]["branch"]["id"] != old_bid
    with pytest.raises(InvalidRequest, match="live branch"):
        src.delete_all()


def test_concurrent_creators_have_one_winner(db):
    db.open_namespace("src").write({"upsert_rows": [{"id": 1}]})
    wins, refused, other = [], [], []
    go = threading.Barrier(6)

    def create(i):
        go.wait()
        try:
            branch.branch_namespace(db.store, "br", "src")
            wins.append(i)
        except InvalidRequest as e:
            refused.append(str(e))
        except Exception as e:  # noqa: BLE001 - reported below
            other.append(repr(e))

    ts = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not other and len(wins) == 1 and len(refused) == 5
    assert all("already exists" in m for m in refused)
    [(_k, pin, live)] = db.open_namespace("src").pins()  # the losers deleted their own pins
    assert live and pin["id"] == db.open_namespace("br").read_meta()[0]["branch"]["id"]
    assert ids(db.open_namespace("br")) == [1]


def test_official_client_branch_from(tmp_path):
    s = ThreadServer(ServeConfig(store=str(tmp_path / "store"), api_key="k", commit_window_ms=3))
    try:
        c = turbopuffer.Turbopuffer(base_url=s.url, api_key="k", max_retries=0)
        c.namespace("src").write(upsert_rows=rows(5), distance_metric="euclidean_squared")
        r = c.namespace("br").branch_from(source_namespace="src")
        assert r.status == "OK"
        c.namespace("br2").write(branch_from_namespace={"source_namespace": "src"})
        c.namespace("br").write(upsert_rows=rows(1, 50, "b"))
        got = c.namespace("br").query(rank_by=("id", "asc"), top_k=10).rows or []
        assert [row.id for row in got] == [0, 1, 2, 3, 4, 50]
        assert c.namespace("src").metadata().approx_row_count == 5
        assert c.namespace("br2").metadata().approx_row_count == 5
        for name, source, status in (("br3", "missing", 404), ("br", "src", 400)):
            with pytest.raises(turbopuffer.APIStatusError) as e:
                c.namespace(name).branch_from(source_namespace=source)
            assert e.value.status_code == status and e.value.body["status"] == "error"
        with pytest.raises(turbopuffer.APIStatusError) as e:
            c.namespace("src").delete_all()
        assert e.value.status_code == 400
        c.namespace("br").delete_all()
        c.namespace("br2").delete_all()
        c.namespace("src").delete_all()
    finally:
        s.stop()


def test_cli_branch(tmp_path, capsys):
    import puffer_cli
    from puffer_cli.cli.main import main

    st = str(tmp_path / "store")
    puffer_cli.connect(st).open_namespace("src").write({"upsert_rows": [{"id": 1}, {"id": 2}]})
    assert main(["branch", "src", "dst", "--store", st]) == 0
    assert "seq 1" in capsys.readouterr().out
    assert ids(puffer_cli.connect(st).open_namespace("dst")) == [1, 2]
    assert main(["branch", "src", "dst", "--store", st]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error:") and "already exists" in err


def test_wal_inspect_of_a_branch(mem_db):
    from puffer_cli.jobs import walinspect

    db = mem_db
    db.open_namespace("src").write({"upsert_rows": [{"id": 1}]})
    branch.branch_namespace(db.store, "br", "src")
    br = db.open_namespace("br")
    br.write({"upsert_rows": [{"id": 2}]})
    assert [r["seq"] for r in walinspect.inspect(br)] == [1, 2] and not walinspect.verify(br)
    assert walinspect.show(br, 1)["ops"][0]["data"] == [{"id": 1}]
    db.store.delete(layout.wal("src", 1))
    with pytest.raises(InvalidRequest, match="source"):
        walinspect.repair(br)


def test_other_process_branch_is_seen(tmp_path):
    """A process that looked at a name before another made it a branch sees the branch."""
    import puffer_cli
    from puffer_cli.wal import namespace as nsmod

    st = str(tmp_path / "store")
    db = puffer_cli.connect(st)
    db.open_namespace("src").write({"upsert_rows": [{"id": 1}]})
    assert not db.open_namespace("br").exists()
    other = puffer_cli.connect(st).store
    branch.branch_namespace(other, "br", "src")
    nsmod._cache_for(db.store, "br").base_known = True  # as if this process's view were stale
    assert db.open_namespace("br").exists() and ids(db.open_namespace("br")) == [1]
