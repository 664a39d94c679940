"""`puffer query` (a hybrid query is a multi-query fused by the server's RRF) and `puffer serve`."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from puffer_cli import limits
from puffer_cli.cli.options import (
    CacheMaxOpt,
    EndpointOpt,
    PolicyOpt,
    SingleWriterOpt,
    StoreOpt,
    app,
    open_db,
    parse_json_arg,
)
from puffer_cli.errors import InvalidRequest


# ---------------------------------------------------------------- serve
@app.command(epilog="Example: puffer serve --listen 0.0.0.0:8080 --api-key secret --store s3://bucket/puffer")
def serve(
    listen: Annotated[
        str, typer.Option("--listen", envvar="PUFFER_LISTEN", help="HOST:PORT to listen on")
    ] = "127.0.0.1:8080",
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="PUFFER_API_KEY", help="Require Authorization: Bearer KEY on every request but /health"
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Server processes (uvicorn workers)")] = 1,
    index_interval: Annotated[
        float | None,
        typer.Option(
            "--index-interval", help="Also run the indexer in-process every S seconds (off: run it from cron)"
        ),
    ] = None,
    commit_window_ms: Annotated[
        float,
        typer.Option(
            "--commit-window-ms", min=0, help="Group commit window: concurrent writes within it share one WAL entry"
        ),
    ] = 2.0,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.001, help="Request body size limit (MiB)")
    ] = 256.0,
    hot_namespaces: Annotated[
        int, typer.Option("--hot-namespaces", min=1, help="Namespaces kept loaded in memory (LRU)")
    ] = 64,
    query_threads: Annotated[
        int | None,
        typer.Option(
            "--query-threads", min=1, help="Queries executed at once per process (default: cores, at least 2)"
        ),
    ] = None,
    query_budget: Annotated[
        float,
        typer.Option(
            "--query-budget",
            min=0,
            envvar="PUFFER_QUERY_BUDGET",
            help="Seconds one query may run before it is stopped with HTTP 408 (0: no budget)",
        ),
    ] = limits.QUERY_BUDGET_S,
    log_level: Annotated[str, typer.Option("--log-level", help="debug|info|warning|error")] = "info",
    cache_dir: Annotated[
        str | None,
        typer.Option(
            "--cache-dir",
            envvar="PUFFER_CACHE_DIR",
            help='Local cache of index files, shared by the workers (default: the user cache dir; "" disables)',
        ),
    ] = None,
    cache_max_gb: CacheMaxOpt = None,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    single_writer: SingleWriterOpt = False,
    policy: PolicyOpt = "fail",
):
    """Serve the turbopuffer-compatible HTTP API over the store (stateless: run as many as you like)."""
    from puffer_cli.server.app import ServeConfig
    from puffer_cli.server.proto import parse_listen
    from puffer_cli.server.run import serve as run_server

    parse_listen(listen)
    import os

    if cache_max_gb is not None:  # read by connect() in this process and in every uvicorn worker
        os.environ["PUFFER_CACHE_MAX_GB"] = repr(float(cache_max_gb))
    if cache_dir is not None:  # read by run.apply_env() in this process and in every uvicorn worker
        os.environ["PUFFER_CACHE_DIR"] = cache_dir
    if log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise InvalidRequest(f"--log-level {log_level!r} is not one of debug, info, warning, error")
    if math.isnan(query_budget):
        raise InvalidRequest("--query-budget must be a number of seconds (0: no budget)")
    if index_interval is not None and index_interval <= 0:
        raise InvalidRequest("--index-interval must be a positive number of seconds")
    cfg = ServeConfig(
        store=store,
        s3_endpoint=s3_endpoint,
        single_writer=single_writer,
        wal_policy=policy,
        api_key=api_key or None,
        commit_window_ms=commit_window_ms,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        hot_namespaces=hot_namespaces,
        index_interval=index_interval,
        query_threads=query_threads,
        query_budget_s=query_budget or None,
    )
    run_server(cfg, listen, workers=workers, log_level=log_level.lower())


# ---------------------------------------------------------------- query
VectorOpt = Annotated[
    str | None,
    typer.Option("--vector", help="Query vector: JSON list, base64, @file.json, @file.npy or @file.npy:ROW"),
]
Bm25Opt = Annotated[
    tuple[str, str] | None,
    typer.Option(
        "--bm25",
        help="BM25 full-text search of TEXT in the attribute FIELD. With --vector: hybrid, a multi-query of both, each "
        "max(top-k, 100) deep, fused by reciprocal rank fusion (k=60; $dist is the fused score)",
    ),
]
AggregateOpt = Annotated[str | None, typer.Option("--aggregate", help='aggregate_by JSON, e.g. \'{"n": ["Count"]}\'')]
GroupByOpt = Annotated[
    str | None, typer.Option("--group-by", help="Attributes to group the aggregation by, comma-separated")
]
RankByOpt = Annotated[str | None, typer.Option("--rank-by", help='rank_by JSON, e.g. \'["price","desc"]\'')]
BodyOpt = Annotated[
    str | None,
    typer.Option(
        "--body",
        help="A whole turbopuffer query body: JSON or @file.json "
        '(with "queries": a multi-query); flags override its keys',
    ),
]
QueryFormatOpt = Annotated[
    str | None, typer.Option("--format", help="table|json|ndjson (default: table on a TTY, else json)")
]
BudgetOpt = Annotated[
    float | None, typer.Option("--budget", help="Stop the query after SECONDS with an error (default: no budget)")
]


@app.command(
    epilog='Example: puffer query docs --bm25 text \'quick fox\' --filter \'["lang","Eq","en"]\' '
    "--include title --top-k 5"
)
def query(
    namespace: Annotated[str, typer.Argument(help="Namespace to query")],
    vector: VectorOpt = None,
    vector_attr: Annotated[str, typer.Option("--vector-attr", help="Vector attribute to rank by")] = "vector",
    exact: Annotated[bool, typer.Option("--exact", help="Exact kNN instead of ANN")] = False,
    bm25: Bm25Opt = None,
    aggregate: AggregateOpt = None,
    group_by: GroupByOpt = None,
    rank_by: RankByOpt = None,
    filters: Annotated[str | None, typer.Option("--filter", help="filters JSON (or @file.json)")] = None,
    where: Annotated[
        str | None,
        typer.Option("--where", metavar="SQL", help="filter in SQL: \"lang = 'en' AND n >= 5\" (And-ed with --filter)"),
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Number of rows (default 10, max 10000)")] = None,
    include: Annotated[str | None, typer.Option("--include", help="Attributes to return, comma-separated")] = None,
    include_all: Annotated[bool, typer.Option("--include-all", help="Return every attribute")] = False,
    consistency: Annotated[str | None, typer.Option("--consistency", help="strong (default) or eventual")] = None,
    body: BodyOpt = None,
    fmt: QueryFormatOpt = None,
    cache_max_gb: CacheMaxOpt = None,
    budget: BudgetOpt = None,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    policy: PolicyOpt = "fail",
):
    """Query a namespace: vector (ANN/kNN), BM25 full-text, order by attribute, filters, aggregations.

    Without any ranking flag it lists documents by id. JSON output is exactly the
    turbopuffer response body, always valid JSON: a NaN or infinite number is written as null."""
    import time

    from puffer_cli.query.checks import check_known_attributes
    from puffer_cli.search import engine
    from puffer_cli.store.filecache import get_cache

    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "json"
    if fmt not in ("table", "json", "ndjson"):
        raise InvalidRequest(f"unknown --format {fmt!r}", hint="use table, json or ndjson")
    if budget is not None and not (budget > 0 and math.isfinite(budget)):
        raise InvalidRequest(f"--budget must be a positive number of seconds, got {budget}")
    hybrid = vector is not None and bm25 is not None
    q = _query_body(
        body,
        None if hybrid else vector,
        vector_attr,
        exact,
        None if hybrid else bm25,
        rank_by,
        filters,
        top_k,
        include,
        include_all,
        consistency,
    )
    _add_aggregation(q, aggregate, group_by, rank_by)
    if where is not None:
        from puffer_cli.filters.sql import where_to_filter

        w = where_to_filter(where)
        q["filters"] = w if q.get("filters") is None else ["And", [q["filters"], w]]
    if hybrid:
        if rank_by is not None or "queries" in q:
            raise InvalidRequest("--vector with --bm25 is a hybrid query: give no --rank-by or multi-query --body")
        assert vector is not None and bm25 is not None
        vrank = [vector_attr, "kNN" if exact else "ANN", _cli_vector(vector)]
        q = _hybrid_body(q, vrank, [bm25[0], "BM25", bm25[1]], int(top_k or 10))
    _require_utf8(q)
    db = open_db(store, s3_endpoint, policy=policy, cache_max_gb=cache_max_gb)
    get_cache().background_fetch = False  # one query, then exit: `puffer warm` fetches whole files
    ns = db.open_namespace(namespace)
    t0 = time.perf_counter()
    with limits.deadline(budget):
        out = engine.run(ns, q)
    if hybrid:  # one fused result: print it as a plain query's
        out = {"rows": out["results"][0]["rows"], **{k: v for k, v in out.items() if k != "results"}}
    ms = (time.perf_counter() - t0) * 1000
    schema = ns.head(refresh=False).schema  # what the query just read: no extra request
    for sub in q.get("queries") or [q]:
        if isinstance(sub, dict):
            check_known_attributes(sub.get("filters"), sub.get("include_attributes"), schema)
    _print_query_result(out, fmt, schema, ms)


def _require_utf8(v, depth: int = 0) -> None:
    """Refuse text that is not valid Unicode (bytes of the command line that are not UTF-8
    arrive as lone surrogates; the analyzer and the filters cannot encode them).  The HTTP
    API never gets such text: its JSON parser refuses it."""
    if isinstance(v, str):
        try:
            v.encode()
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"the query holds text that is not valid UTF-8: {ascii(v)[:80]}",
                hint="give the terminal or the file UTF-8 text",
            ) from None
    elif isinstance(v, dict) and depth < 64:
        for k, x in v.items():
            _require_utf8(k, depth + 1)
            _require_utf8(x, depth + 1)
    elif isinstance(v, (list, tuple)) and depth < 64:
        for x in v:
            _require_utf8(x, depth + 1)


def _add_aggregation(q: dict, aggregate: str | None, group_by: str | None, rank_by: str | None) -> None:
    """--aggregate / --group-by onto the body (an aggregation alone needs no rank_by)."""
    if aggregate is not None:
        q["aggregate_by"] = parse_json_arg(aggregate, "--aggregate")
        if q.get("rank_by") == ["id", "asc"] and rank_by is None:
            q.pop("rank_by")
    if group_by is not None:
        if aggregate is None and "aggregate_by" not in q:
            raise InvalidRequest("--group-by needs --aggregate", hint='e.g. --aggregate \'{"n": ["Count"]}\'')
        q["group_by"] = [a.strip() for a in group_by.split(",") if a.strip()]


def _query_body(
    body, vector, vector_attr, exact, bm25, rank_by, filters, top_k, include, include_all, consistency
) -> dict:
    q = parse_json_arg(body, "--body") if body is not None else {}
    if not isinstance(q, dict):
        raise InvalidRequest("--body must be a JSON object (a turbopuffer query body)")
    multi = "queries" in q
    ranks = [x for x in (vector, bm25, rank_by) if x is not None]
    if len(ranks) > 1:
        raise InvalidRequest(
            "give only one of --vector, --bm25 and --rank-by",
            hint="--vector with --bm25 (no --rank-by) is a hybrid query fused by RRF",
        )
    if multi and (ranks or filters or top_k is not None or include or include_all):
        raise InvalidRequest("with a multi-query --body, put rank_by/filters/top_k/include inside each query")
    if vector is not None:
        q["rank_by"] = [vector_attr, "kNN" if exact else "ANN", _cli_vector(vector)]
    elif bm25 is not None:
        q["rank_by"] = [bm25[0], "BM25", bm25[1]]
    elif rank_by is not None:
        q["rank_by"] = parse_json_arg(rank_by, "--rank-by")
    if filters is not None:
        q["filters"] = parse_json_arg(filters, "--filter")
    if top_k is not None:
        q.pop("limit", None)
        q["top_k"] = top_k
    if include_all and include:
        raise InvalidRequest("give either --include or --include-all")
    if include_all:
        q["include_attributes"] = True
    elif include:
        q["include_attributes"] = [a.strip() for a in include.split(",") if a.strip()]
    if consistency is not None:
        if consistency not in ("strong", "eventual"):
            raise InvalidRequest(f"unknown --consistency {consistency!r}", hint="use strong or eventual")
        q["consistency"] = {"level": consistency}
    if not multi and q.get("rank_by") is None and not q.get("aggregate_by"):
        q["rank_by"] = ["id", "asc"]
    return q


RRF_K = 60  # turbopuffer's rank_constant default
HYBRID_DEPTH = 100  # rows per sub-query a hybrid query fuses (at least --top-k): fusion deeper than the result


def _hybrid_body(q: dict, vector_rank: list, bm25_rank: list, top_k: int) -> dict:
    """A multi-query of the vector and the BM25 ranking, each over the same filters, each
    max(top_k, HYBRID_DEPTH) deep, fused by the server's RRF (``rerank_by``) to ``top_k`` rows."""
    base = {k: v for k, v in q.items() if k not in ("rank_by", "consistency", "top_k", "limit")}
    depth = max(top_k, HYBRID_DEPTH)
    out: dict = {
        "queries": [{**base, "rank_by": vector_rank, "top_k": depth}, {**base, "rank_by": bm25_rank, "top_k": depth}],
        "rerank_by": ["RRF", {"rank_constant": RRF_K}],
        "limit": top_k,
    }
    if "consistency" in q:
        out["consistency"] = q["consistency"]
    return out


_NPY_ROW = re.compile(r"^@(?P<path>.+\.npy)(?::(?P<row>-?\d+))?$", re.IGNORECASE)


def _cli_vector(value: str):
    """--vector: a JSON list, base64, @file.json, or @file.npy (one vector, or ``@file.npy:ROW``:
    row ROW of a matrix, counted from 0; negative rows count from the end)."""
    m = _NPY_ROW.match(value)
    if m:
        import numpy as np

        p = Path(m["path"])
        if not p.exists():
            raise InvalidRequest(f"--vector: file {p} does not exist")
        try:
            arr = np.load(p, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise InvalidRequest(f"--vector: cannot read {p} as .npy: {e}") from e
        if m["row"] is not None:
            if arr.ndim != 2:
                raise InvalidRequest(f"--vector: {p} holds an array of shape {arr.shape}; :ROW needs a matrix")
            row = int(m["row"])
            if not -arr.shape[0] <= row < arr.shape[0]:
                raise InvalidRequest(f"--vector: {p} has {arr.shape[0]:,} rows; row {row} is out of range")
            arr = arr[row]
        elif arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1:
            hint = f"pick a row: --vector @{p}:0" if arr.ndim == 2 else None
            raise InvalidRequest(f"--vector: {p} holds an array of shape {arr.shape}; expected one vector", hint=hint)
        if arr.dtype.kind not in "iuf":
            raise InvalidRequest(f"--vector: {p} holds {arr.dtype} values; expected numbers (float32)")
        return [float(x) for x in arr]
    if not value.startswith(("[", "@")):
        return value  # base64
    return parse_json_arg(value, "--vector")


def _print_query_result(out: dict, fmt: str, schema: dict, ms: float = 0.0) -> None:
    """json: the HTTP response body (one :func:`response.render`); ndjson: its rows, aggregations
    and groups, one JSON value a line, in the same wire form; table: for people."""
    from puffer_cli.search import response

    if fmt == "json":
        from puffer_cli.wal.namespace import skipped

        out = {**out, "skipped": skipped()} if skipped() else out  # --wal-corrupt-policy skip: never silent
        sys.stdout.write(response.render(out, response.vector_attrs(schema), indent=True).decode() + "\n")
        return
    results = out.get("results", [out])
    if fmt == "ndjson":
        wired = response.to_wire({"results": results}, response.vector_attrs(schema))["results"]
        for r in wired:
            for row in r.get("rows", []):
                sys.stdout.write(response.dumps(row).decode() + "\n")
            if "aggregations" in r:
                sys.stdout.write(response.dumps({"aggregations": r["aggregations"]}).decode() + "\n")
            for g in r.get("aggregation_groups", []):
                sys.stdout.write(response.dumps(g).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    for i, r in enumerate(results):
        title = f"query {i}" if len(results) > 1 else None
        for key in ("rows", "aggregation_groups"):
            rows = r.get(key)
            if rows is None:
                continue
            cols = list(dict.fromkeys(k for row in rows for k in row))
            t = Table(title=title)
            for c in cols:
                t.add_column(c, overflow="fold", max_width=60)
            for row in rows:
                t.add_row(*[_cell(row.get(c)) for c in cols])
            con.print(t)
            con.print(f"{len(rows)} {'row' if key == 'rows' else 'group'}{'s' if len(rows) != 1 else ''}")
        if "aggregations" in r:
            for k, v in r["aggregations"].items():
                con.print(f"{k}: {v}")
    p = out.get("performance", {})
    typer.echo(
        f"{ms:.2f} ms, {p.get('approx_namespace_size', 0):,} docs, "
        f"{p.get('object_store_requests', 0)} object-store requests",
        err=True,
    )


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list) and len(v) > 8 and all(isinstance(x, (int, float)) for x in v):
        return "[" + ", ".join(f"{x:.4g}" for x in v[:4]) + f", ... ({len(v)} values)]"
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s if len(s) <= 200 else s[:197] + "..."
