"""The Python API: doctests of db/handle, and a flow that imports only ``puffer_cli``."""

import doctest

import puffer_cli
import pytest
from puffer_cli import db as db_mod
from puffer_cli.errors import InvalidRequest, NamespaceNotFound


@pytest.mark.parametrize("mod", [db_mod])
def test_doctests(mod):
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


@pytest.fixture(params=["local", "memory"])
def db(request, tmp_path):
    url = str(tmp_path / "store") if request.param == "local" else f"memory://lib-{tmp_path.name}"
    return puffer_cli.connect(url)


def test_flow_ingest_index_query_export_delete(db, tmp_path):
    src = tmp_path / "in.ndjson"
    src.write_text(
        "".join(f'{{"id": {i}, "vector": [{i}.0, 1.0], "lang": "{"en" if i % 2 else "de"}"}}\n' for i in range(20))
    )
    ns = db.namespace("lib")
    assert "query" in dir(ns) and "update_meta" not in dir(ns)
    assert repr(ns).startswith("NamespaceHandle('lib'")
    with pytest.raises(NamespaceNotFound):
        ns.query(top_k=1)
    assert ns.ingest(str(src), vector_col="vector").rows == 20
    assert ns.index().status == "indexed"
    res = ns.query(rank_by=["vector", "ANN", [3.0, 1.0]], top_k=3, filters=["lang", "Eq", "en"])
    assert res.rows[0]["id"] == 3 and len(res) == 3
    assert res.to_polars().height == 3
    agg = ns.query(aggregate_by={"n": ["Count"]}, group_by=["lang"])
    assert sorted(g["lang"] for g in agg.aggregation_groups) == ["de", "en"]
    multi = ns.query(queries=[{"rank_by": ["id", "asc"], "top_k": 2}, {"rank_by": ["id", "desc"], "top_k": 2}])
    assert [r.rows[0]["id"] for r in multi.results] == [0, 19]
    assert ns.metadata()["seq"] >= 1 and "vector" in ns.schema()
    assert ns.warm()["generation"] is not None
    out = tmp_path / "out.parquet"
    assert ns.export(str(out))["rows"] == 20
    assert list(db.namespaces()) == ["lib"] and list(db.namespaces(prefix="x")) == []
    assert db.namespaces_page() == (["lib"], None)  # the paged form (the server's)
    assert db.namespaces_page() == (["lib"], None)
    assert ns.delete() > 0
    assert not ns.exists() and list(db.namespaces()) == []
    with pytest.raises(NamespaceNotFound):
        ns.metadata()


def test_namespaces_iterates_past_one_page(db):
    for i in range(3):
        db.namespace(f"n{i}").write({"upsert_rows": [{"id": 1}]})
    assert db.namespaces_page(page_size=2) == (["n0", "n1"], "n1")
    assert list(db.namespaces()) == ["n0", "n1", "n2"]


def test_reads_of_a_missing_namespace_raise_not_found(db, tmp_path):
    """Every public read of rows refuses a namespace that does not exist, as query does
    (``docs()``, the replay the jobs use, too); writes still create it."""
    ns = db.namespace("never")
    assert "rows" in dir(ns) and not {"docs", "update_meta", "wal_keys", "entries", "head"} & set(dir(ns))
    for read in (
        ns.rows,
        lambda: ns.rows(at_seq=1),
        db.open_namespace("never").docs,
        lambda: ns.export(str(tmp_path / "x.ndjson")),
    ):
        with pytest.raises(NamespaceNotFound, match="'never' not found"):
            read()
    assert not ns.exists() and not (tmp_path / "x.ndjson").exists()


def test_first_writes_plan_against_the_empty_state(db):
    """The write path reads the (empty) documents of a namespace that does not exist yet:
    conditional upserts and filter writes in a first write commit, they do not raise."""
    ns = db.namespace("fresh")
    out = ns.write(
        {
            "upsert_rows": [{"id": 1, "n": 1}, {"id": 2, "n": 2}],
            "upsert_condition": ["n", "Lt", {"$ref_new": "n"}],
        }
    )
    assert out["rows_upserted"] == 2
    other = db.namespace("fresh-filter")
    out = other.write({"delete_by_filter": ["n", "Eq", 1], "patch_by_filter": {"filters": ["n", "Eq", 1], "patch": {}}})
    assert out["status"] == "OK"
    assert ns.rows()["id"].to_list() == [1, 2] and ns.rows(at_seq=1).height == 2
    ns.write({"deletes": [1]})
    assert ns.rows()["id"].to_list() == [2] and ns.rows(at_seq=1)["id"].to_list() == [1, 2]


def test_help_lists_only_the_public_api(mem_db):
    """The handle holds the commit protocol instead of subclassing it: help() and dir() show the API."""
    import pydoc

    ns = mem_db.namespace("h")
    text = pydoc.render_doc(ns, renderer=pydoc.plaintext)
    public = {"name", "store", "write", "query", "ingest", "export", "index", "branch", "warm", "recall"}
    public |= {"metadata", "schema", "rows", "delete", "exists"}
    methods = {m for m in dir(ns) if not m.startswith("_")}
    assert methods == public
    for internal in ("write_batch", "_commit", "update_meta", "read_meta", "wal_keys", "head", "docs"):
        assert f" {internal}(" not in text and f"\n |  {internal}" not in text


def _demo(db, name="r"):
    ns = db.namespace(name)
    rows = [{"id": i, "vector": [float(i), 1.0], "lang": "en" if i % 2 else "de"} for i in range(5)]
    ns.write({"upsert_rows": rows, "distance_metric": "euclidean_squared"})
    return ns


def test_results_convert_to_arrow_pandas_polars_and_iterate(mem_db):
    res = _demo(mem_db).query(rank_by=["id", "asc"], top_k=3, include_attributes=["lang"])
    assert len(res) == 3 and [r["id"] for r in res] == [0, 1, 2]
    assert res.to_arrow().column("id").to_pylist() == [0, 1, 2]
    df = res.to_pandas()
    assert list(df["id"]) == [0, 1, 2] and list(df["lang"]) == ["de", "en", "de"]
    assert res.to_polars()["id"].to_list() == [0, 1, 2]


@pytest.mark.parametrize(
    ("module", "call", "extra"), [("pyarrow", "to_arrow", "arrow"), ("pandas", "to_pandas", "pandas")]
)
def test_a_missing_extra_is_named(mem_db, monkeypatch, module, call, extra):
    import sys

    from puffer_cli.errors import MissingDependency

    res = _demo(mem_db).query(rank_by=["id", "asc"], top_k=1)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependency, match=f"{call}\\(\\) needs {module}") as ei:
        getattr(res, call)()
    assert ei.value.hint == f"pip install 'puffer-cli[{extra}]'"


def test_branch_from_the_library(mem_db):
    src = _demo(mem_db, "src")
    br = src.branch("br")
    br.write({"deletes": [0]})
    assert [r["id"] for r in br.query(rank_by=["id", "asc"])] == [1, 2, 3, 4]
    assert [r["id"] for r in src.query(rank_by=["id", "asc"])] == [0, 1, 2, 3, 4]
    with pytest.raises(InvalidRequest):
        src.branch("br")


def test_async_api_does_not_block_the_event_loop(tmp_path):
    """A real asyncio server answers queries through the async API while a timer keeps ticking."""
    import asyncio
    import json
    import time

    async def main():
        db = await puffer_cli.connect_async(str(tmp_path / "s"))
        ns = db.namespace("a")
        assert "AsyncNamespaceHandle('a'" in repr(ns) and not await ns.exists()
        rows = [{"id": i, "vector": [float(i % 7), float(i % 5)], "t": "x"} for i in range(3000)]
        await ns.write({"upsert_rows": rows, "distance_metric": "euclidean_squared"})

        async def handle(reader, writer):
            while line := await reader.readline():
                res = await ns.query(rank_by=["vector", "ANN", json.loads(line)], top_k=2)
                writer.write((json.dumps([r["id"] for r in res]) + "\n").encode())
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        gaps, stop = [], asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for i in range(20):
            writer.write((json.dumps([float(i % 7), float(i % 5)]) + "\n").encode())
            await writer.drain()
            answers.append(json.loads(await reader.readline()))
        # a whole index run in flight: the loop keeps turning meanwhile (a blocked loop turns 0 times)
        run = asyncio.create_task(ns.index())
        turns = 0
        while not run.done():
            await asyncio.sleep(0.005)
            turns += 1
        idx = await run
        stop.set()
        await tick
        writer.close()
        server.close()
        await server.wait_closed()
        assert idx.status == "indexed", idx
        assert await db.namespaces() == ["a"]
        assert all(len(a) == 2 for a in answers)
        assert turns >= 2, turns
        return gaps

    gaps = asyncio.run(main())
    # the timer fired throughout the queries and the index run (a blocked loop would not tick)
    assert len(gaps) >= 3, len(gaps)


def test_bad_values_of_the_new_library_options(mem_db, tmp_path):
    """Each new option refuses a wrong type or value with a one-line PufferError."""
    import asyncio

    from puffer_cli.errors import InvalidFilter, PufferError

    ns = _demo(mem_db, "bad")
    for where in (5, ["a"], "", "x" * 20_000, "(" * 100 + "id = 1" + ")" * 100, "id = 1; DROP TABLE t"):
        with pytest.raises(InvalidFilter):
            ns.query(where=where)
    for dest in ("", "a/b", "x" * 200, "bad"):
        with pytest.raises(PufferError):
            ns.branch(dest)  # invalid names, or itself
    for policy in ("bogus", "", "SKIP"):
        with pytest.raises(InvalidRequest, match="WAL corruption policy"):
            puffer_cli.connect("memory://bad-policy", wal_policy=policy)
    with pytest.raises(InvalidRequest):
        asyncio.run(puffer_cli.connect_async("ftp://nowhere"))
    for bad in (-1, float("nan"), "big"):
        with pytest.raises(PufferError):
            puffer_cli.connect("memory://bad-cache", cache_max_gb=bad)
