"""The `puffer` command line: glue over the library. Errors are translated once,
in :func:`main`, into one ``Error: ...`` line (plus a hint) on stderr: exit code 1,
2 for a usage error (unknown option, bad option value). Anything unexpected is one
``Error: internal error: ...`` line too; ``--debug`` (or PUFFER_DEBUG=1) shows the
traceback instead."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import limits
from .db import DB, connect
from .errors import InvalidRequest, PufferError

app = typer.Typer(
    name="puffer",
    help="Vector, full-text and hybrid search on object storage (turbopuffer-compatible).\n\n"
    "Every command takes --store URL (env PUFFER_STORE): a local directory (default ./puffer-data), "
    "s3://bucket/prefix, or memory://.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="PUFFER_STORE",
        help="Store URL: a path (default ./puffer-data), s3://bucket/prefix or memory://",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option("--s3-endpoint", envvar="PUFFER_S3_ENDPOINT", help="S3-compatible endpoint URL (MinIO, moto, ...)"),
]
CacheMaxOpt = Annotated[
    float | None,
    typer.Option(
        "--cache-max-gb",
        envvar="PUFFER_CACHE_MAX_GB",
        min=0,
        help="Size bound of the local index-file cache, GB (default: min(10, 25% of its disk); LRU eviction)",
    ),
]
SingleWriterOpt = Annotated[
    bool,
    typer.Option(
        "--single-writer",
        envvar="PUFFER_SINGLE_WRITER",
        help="Allow writes to a store that ignores conditional writes (you promise one writer)",
    ),
]
PolicyOpt = Annotated[
    str,
    typer.Option(
        "--wal-corrupt-policy",
        envvar="PUFFER_WAL_CORRUPT_POLICY",
        help="On a corrupt WAL segment: fail (default) or skip it",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def open_db(
    store: str | None,
    s3_endpoint: str | None,
    single_writer: bool = False,
    policy: str = "fail",
    cache_max_gb: float | None = None,
) -> DB:
    return connect(
        store, s3_endpoint=s3_endpoint, single_writer=single_writer, wal_policy=policy, cache_max_gb=cache_max_gb
    )


def _json_default(o):
    item = getattr(o, "item", None)  # numpy scalars
    if callable(item):
        return item()
    iso = getattr(o, "isoformat", None)
    if callable(iso):
        return iso()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def _finite(o):
    """``o`` with every NaN / +-inf float replaced by None (JSON has no such numbers)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def to_json(obj, indent: int | None = None) -> str:
    """Strict JSON, always parseable: NaN and +-inf are written as null."""
    kw = dict(indent=indent, ensure_ascii=False, default=_json_default, allow_nan=False)
    try:
        return json.dumps(obj, **kw)
    except ValueError:  # a non-finite float somewhere (rare): clean a copy
        return json.dumps(_finite(json.loads(json.dumps(obj, indent=None, default=_json_default))), **kw)


def echo_json(obj) -> None:
    sys.stdout.write(to_json(obj, indent=2) + "\n")


def console():
    from rich.console import Console

    return Console(stderr=True)


def parse_json_arg(value: str | None, what: str):
    """JSON from an argument, or from a file with ``@path``."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        p = Path(value[1:])
        if not p.exists():
            raise InvalidRequest(f"{what}: file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidRequest(
                f"{what}: cannot read {p} as UTF-8 text ({type(e).__name__}: {e})",
                hint=f"pass {what} as JSON or @file.json",
            ) from e
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"{what} is not valid JSON: {e}", hint=f"pass {what} as JSON or @file.json") from e


# ---------------------------------------------------------------- ingest
@app.command(epilog="Example: puffer ingest docs data.parquet --id id --vector emb")
def ingest(
    namespace: Annotated[str, typer.Argument(help="Namespace to write into (created on first write)")],
    paths: Annotated[list[str], typer.Argument(help="Input files (parquet, ndjson, csv)")],
    id_col: Annotated[str, typer.Option("--id", help="Column holding document ids")] = "id",
    vector_col: Annotated[str | None, typer.Option("--vector", help="Column holding vectors")] = None,
    schema: Annotated[str | None, typer.Option("--schema", help="Schema JSON or @file.json")] = None,
    distance_metric: Annotated[
        str | None, typer.Option("--distance-metric", help="cosine_distance (default) or euclidean_squared")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="parquet|ndjson|csv (default: from the file name)")
    ] = None,
    batch_rows: Annotated[int, typer.Option("--batch-rows", help="Rows per WAL entry")] = 50_000,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    single_writer: SingleWriterOpt = False,
):
    """Batch-load files into a namespace: one WAL entry per chunk, streamed, idempotent by id."""
    from .ingest import ingest as run

    db = open_db(store, s3_endpoint, single_writer)
    ns = db.namespace(namespace)
    sch = parse_json_arg(schema, "--schema")
    tty = sys.stderr.isatty()
    progress_cb, finish = _ingest_progress(tty)
    try:
        rep = run(
            ns,
            paths,
            id_col=id_col,
            vector_col=vector_col,
            schema=sch,
            distance_metric=distance_metric,
            fmt=fmt,
            batch_rows=batch_rows,
            progress=progress_cb,
        )
    finally:
        finish()
    if as_json:
        echo_json(rep.as_dict())
    else:
        mb = rep.bytes_in / 1e6
        typer.echo(
            f"ingested {rep.rows:,} rows into {namespace!r} as {rep.entries} WAL entries "
            f"(seq {rep.first_seq}..{rep.last_seq}) in {rep.seconds:.2f}s: "
            f"{rep.rows_per_s:,.0f} rows/s, {mb / rep.seconds if rep.seconds else 0:,.1f} MB/s"
        )


def _ingest_progress(tty: bool):
    if not tty:

        def plain(rep, total):
            of = f"/{total:,}" if total else ""
            print(
                f"ingest {rep.namespace}: {rep.rows:,}{of} rows, {rep.rows_per_s:,.0f} rows/s, "
                f"{rep.bytes_in / 1e6:,.1f} MB, seq {rep.last_seq}",
                file=sys.stderr,
                flush=True,
            )

        return plain, lambda: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TextColumn("{task.fields[rate]} rows/s"),
        TextColumn("{task.fields[mb]} MB"),
        TimeElapsedColumn(),
        console=console(),
    )
    prog.start()
    task = prog.add_task("ingest", total=None, rate="0", mb="0")

    def update(rep, total):
        prog.update(
            task,
            completed=rep.rows,
            total=total or None,
            rate=f"{rep.rows_per_s:,.0f}",
            mb=f"{rep.bytes_in / 1e6:,.1f}",
            description=f"ingest {rep.namespace}",
        )

    return update, prog.stop


# ---------------------------------------------------------------- export
@app.command(epilog="Example: puffer export docs --format parquet -o docs.parquet")
def export(
    namespace: Annotated[str, typer.Argument(help="Namespace to export")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Output file (default: stdout)")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="parquet|ndjson|csv (default: from -o, else ndjson)")
    ] = None,
    at_seq: Annotated[int | None, typer.Option("--at-seq", help="Export the state at this committed WAL seq")] = None,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    policy: PolicyOpt = "fail",
):
    """Export a consistent snapshot (one committed seq), ordered by id."""
    from .export import export as run

    db = open_db(store, s3_endpoint, policy=policy)
    info = run(db.namespace(namespace), output, fmt, at_seq)
    if output and output != "-":
        typer.echo(
            f"exported {info['rows']:,} rows of {namespace!r} at seq {info['seq']} to {output} ({info['format']})",
            err=True,
        )


# ---------------------------------------------------------------- wal-inspect
@app.command("wal-inspect", epilog="Example: puffer wal-inspect docs --verify")
def wal_inspect(
    namespace: Annotated[str, typer.Argument(help="Namespace whose WAL to inspect")],
    verify: Annotated[bool, typer.Option("--verify", help="Check every segment; exit 1 naming each bad one")] = False,
    show: Annotated[int | None, typer.Option("--show", help="Print the ops of entry SEQ")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Quarantine bad segments and salvage intact ops")] = False,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
):
    """List WAL entries (seq, bytes, ops, created, checksum), verify, show or repair them."""
    from . import walinspect as W

    db = open_db(store, s3_endpoint)
    ns = db.namespace(namespace)
    if show is not None:
        out = W.show(ns, show)
        if as_json:
            echo_json(out)
        else:
            typer.echo(to_json(out["header"]))
            for op in out["ops"]:
                typer.echo(f"-- {op['kind']} ({op['rows']} rows): {', '.join(op['columns'])}")
                for r in op["data"][:50]:
                    typer.echo("   " + to_json(r)[:300])
                if op["rows"] > 50:
                    typer.echo(f"   ... {op['rows'] - 50} more rows")
        return
    if repair:
        done = W.repair(ns)
        if as_json:
            echo_json({"repaired": done})
        elif not done:
            typer.echo("nothing to repair: every segment verifies")
        else:
            for d in done:
                typer.echo(
                    f"seq {d['seq']}: {d['problem']} -> {d['action']}; ops salvaged {d['ops_salvaged']}, "
                    f"lost {d['ops_lost']}; bytes kept at {d['quarantine']}"
                )
        return
    rows = W.verify(ns) if verify else W.inspect(ns)
    if as_json:
        echo_json({"namespace": namespace, "entries" if not verify else "bad": rows})
    elif verify:
        if not rows:
            typer.echo(f"ok: every WAL segment of {namespace!r} verifies")
        for r in rows:
            typer.echo(f"BAD seq {r['seq']} ({r['key'] or layout_key(namespace, r['seq'])}): {r['problem']}")
    else:
        _wal_table(rows)
    if verify and rows:
        from .errors import CorruptWal

        raise CorruptWal(
            f"{len(rows)} WAL segment{'s' if len(rows) != 1 else ''} of {namespace!r} fail verification "
            f"(seq {', '.join(str(r['seq']) for r in rows[:10])}{', ...' if len(rows) > 10 else ''})",
            hint=f"`puffer wal-inspect {namespace} --repair` quarantines them and salvages intact ops",
        )


def layout_key(ns: str, seq: int) -> str:
    from . import layout

    return layout.wal(ns, seq)


def _wal_table(rows) -> None:
    out = []
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in r["ops"].items())
        status = "ok" if r["ok"] else f"BAD: {r['problem']}"
        if r["repaired"]:
            status += " (repaired)"
        out.append([str(r["seq"]), f"{r['bytes']:,}", ops, f"{r['rows']:,}", r["created_at"] or "", status])
    _table(["seq", "bytes", "ops", "rows", "created", "checksum"], out)


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
    cache_max_gb: CacheMaxOpt = None,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    single_writer: SingleWriterOpt = False,
    policy: PolicyOpt = "fail",
):
    """Serve the turbopuffer-compatible HTTP API over the store (stateless: run as many as you like)."""
    from .server import ServeConfig, parse_listen
    from .server import serve as run_server

    parse_listen(listen)
    if cache_max_gb is not None:  # read by connect() in this process and in every uvicorn worker
        import os

        os.environ["PUFFER_CACHE_MAX_GB"] = repr(float(cache_max_gb))
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
@app.command(
    epilog='Example: puffer query docs --bm25 text \'quick fox\' --filter \'["lang","Eq","en"]\' '
    "--include title --top-k 5"
)
def query(
    namespace: Annotated[str, typer.Argument(help="Namespace to query")],
    vector: Annotated[
        str | None, typer.Option("--vector", help="Query vector: JSON list, base64, @file.npy or @file.json")
    ] = None,
    vector_attr: Annotated[str, typer.Option("--vector-attr", help="Vector attribute to rank by")] = "vector",
    exact: Annotated[bool, typer.Option("--exact", help="Exact kNN instead of ANN")] = False,
    bm25: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--bm25",
            help="Full-text search: FIELD TEXT. With --vector: hybrid, a multi-query of both "
            "fused client-side by reciprocal rank fusion (k=60)",
        ),
    ] = None,
    aggregate: Annotated[
        str | None, typer.Option("--aggregate", help='aggregate_by JSON, e.g. \'{"n": ["Count"]}\'')
    ] = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="Attributes to group the aggregation by, comma-separated")
    ] = None,
    rank_by: Annotated[str | None, typer.Option("--rank-by", help='rank_by JSON, e.g. \'["price","desc"]\'')] = None,
    filters: Annotated[str | None, typer.Option("--filter", help="filters JSON (or @file.json)")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Number of rows (default 10, max 10000)")] = None,
    include: Annotated[str | None, typer.Option("--include", help="Attributes to return, comma-separated")] = None,
    include_all: Annotated[bool, typer.Option("--include-all", help="Return every attribute")] = False,
    consistency: Annotated[str | None, typer.Option("--consistency", help="strong (default) or eventual")] = None,
    body: Annotated[
        str | None,
        typer.Option(
            "--body",
            help="A whole turbopuffer query body: JSON or @file.json "
            '(with "queries": a multi-query); flags override its keys',
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="table|json|ndjson (default: table on a TTY, else json)")
    ] = None,
    cache_max_gb: CacheMaxOpt = None,
    budget: Annotated[
        float | None,
        typer.Option("--budget", help="Stop the query after SECONDS with an error (default: no budget)"),
    ] = None,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    policy: PolicyOpt = "fail",
):
    """Query a namespace: vector (ANN/kNN), BM25 full-text, order by attribute, filters, aggregations.

    Without any ranking flag it lists documents by id. JSON output is exactly the
    turbopuffer response body, always valid JSON: a NaN or infinite number is written as null."""
    from . import engine

    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "json"
    if fmt not in ("table", "json", "ndjson"):
        raise InvalidRequest(f"unknown --format {fmt!r}", hint="use table, json or ndjson")
    from .cache import get_cache

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
    if aggregate is not None:
        q["aggregate_by"] = parse_json_arg(aggregate, "--aggregate")
        if q.get("rank_by") == ["id", "asc"] and rank_by is None:
            q.pop("rank_by")
    if group_by is not None:
        if aggregate is None and "aggregate_by" not in q:
            raise InvalidRequest("--group-by needs --aggregate", hint='e.g. --aggregate \'{"n": ["Count"]}\'')
        q["group_by"] = [a.strip() for a in group_by.split(",") if a.strip()]
    if hybrid:
        if rank_by is not None or "queries" in q:
            raise InvalidRequest("--vector with --bm25 is a hybrid query: give no --rank-by or multi-query --body")
        assert vector is not None and bm25 is not None
        q = _hybrid_body(q, [vector_attr, "kNN" if exact else "ANN", _cli_vector(vector)], [bm25[0], "BM25", bm25[1]])
    db = open_db(store, s3_endpoint, policy=policy, cache_max_gb=cache_max_gb)
    get_cache().background_fetch = False  # one query, then exit: `puffer warm` fetches whole files
    ns = db.namespace(namespace)
    import time

    t0 = time.perf_counter()
    with limits.deadline(budget):
        out = engine.run(ns, q)
    if hybrid:
        out = rrf_fuse(out, int(top_k or 10))
    ms = (time.perf_counter() - t0) * 1000
    _print_query_result(out, fmt, ns.head(refresh=False).schema, ms)


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


RRF_K = 60


def _hybrid_body(q: dict, vector_rank: list, bm25_rank: list) -> dict:
    """A multi-query of the vector and the BM25 ranking, each over the same filters/top_k."""
    base = {k: v for k, v in q.items() if k != "rank_by" and k != "consistency"}
    out: dict = {"queries": [{**base, "rank_by": vector_rank}, {**base, "rank_by": bm25_rank}]}
    if "consistency" in q:
        out["consistency"] = q["consistency"]
    return out


def rrf_fuse(out: dict, top_k: int, k: int = RRF_K) -> dict:
    """Reciprocal rank fusion of a multi-query's results: score(d) = sum 1 / (k + rank),
    rank counted from 1 in each result; ties by id. One result, rows carrying ``$rrf``."""
    score: dict = {}
    row_of: dict = {}
    for r in out.get("results", []):
        for rank, row in enumerate(r.get("rows", []), start=1):
            key = json.dumps(row["id"], default=str)
            score[key] = score.get(key, 0.0) + 1.0 / (k + rank)
            kept = row_of.setdefault(key, {})
            kept.update({c: v for c, v in row.items() if c != "$dist"})
    order = sorted(score, key=lambda x: (-score[x], x))[:top_k]
    rows = [
        {"id": row_of[x]["id"], "$rrf": score[x], **{c: v for c, v in row_of[x].items() if c != "id"}} for x in order
    ]
    return {"rows": rows, "performance": out.get("performance", {})}


def _cli_vector(value: str):
    if value.startswith("@") and value.lower().endswith(".npy"):
        import numpy as np

        p = Path(value[1:])
        if not p.exists():
            raise InvalidRequest(f"--vector: file {p} does not exist")
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InvalidRequest(f"--vector: cannot read {p} as .npy: {e}") from e
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1:
            raise InvalidRequest(f"--vector: {p} holds an array of shape {arr.shape}; expected one vector")
        if arr.dtype.kind not in "iuf":
            raise InvalidRequest(f"--vector: {p} holds {arr.dtype} values; expected numbers (float32)")
        return [float(x) for x in arr]
    if not value.startswith(("[", "@")):
        return value  # base64
    return parse_json_arg(value, "--vector")


def _print_query_result(out: dict, fmt: str, schema: dict, ms: float = 0.0) -> None:
    """json: the HTTP response body (one :func:`response.render`); ndjson: its rows, aggregations
    and groups, one JSON value a line, in the same wire form; table: for people."""
    from . import response

    if fmt == "json":
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


# ---------------------------------------------------------------- index / warm / recall
CacheDirOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        envvar="PUFFER_CACHE_DIR",
        help='Local cache of index files (default: the user cache dir; "" disables)',
    ),
]


def _index_progress(tty: bool):
    if not tty:
        return None, lambda: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}"),
        TimeElapsedColumn(),
        console=console(),
    )
    prog.start()
    task = prog.add_task("index", total=None)
    state = {"ns": ""}

    def update(stage, done, total):
        prog.update(task, description=f"{state['ns']} {stage}", completed=done, total=total)

    return (update, state), prog.stop


@app.command("index", epilog="Example: puffer index docs   (safe from cron: puffer index --all --max-seconds 50)")
def index_cmd(
    namespaces: Annotated[list[str] | None, typer.Argument(help="Namespaces to index")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Index every namespace in the store")] = False,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            "--max-seconds", help="Stop starting work after N seconds (a partial run publishes what it folded)"
        ),
    ] = None,
    gc_grace: Annotated[
        float | None,
        typer.Option(
            "--gc-grace",
            envvar="PUFFER_INDEX_GC_GRACE",
            help="Seconds an old generation's files stay for running readers (default 600)",
        ),
    ] = None,
    lease_ttl: Annotated[
        float | None,
        typer.Option(
            "--lease-ttl",
            envvar="PUFFER_INDEX_LEASE_TTL",
            help="Seconds the indexer lease lasts without renewal (default 60)",
        ),
    ] = None,
    cache_dir: CacheDirOpt = None,
    cache_max_gb: CacheMaxOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    policy: PolicyOpt = "fail",
):
    """Build the next index generation of namespaces from their WAL, publish it, collect old files.

    Safe to run from cron on several machines at once: a namespace whose lease another run holds
    is skipped (exit 0, saying who holds it until when). Exit 0: done or nothing to do; 1: a failure."""
    import time as _time

    from . import cache as _cache
    from .index.builder import IndexReport, index_namespace

    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise InvalidRequest(f"--max-seconds must be a positive number of seconds, got {max_seconds}")
    if cache_dir is not None:
        _cache.configure(cache_dir)
    db = open_db(store, s3_endpoint, policy=policy, cache_max_gb=cache_max_gb)
    names = list(namespaces or [])
    if all_:
        cursor = None
        while True:
            page, cursor = db.namespaces(cursor=cursor)
            names.extend(n for n in page if n not in names)
            if not cursor:
                break
    if not names and all_:
        raise InvalidRequest(f"--all: no namespaces in store {db.store.url}", hint="check --store (env PUFFER_STORE)")
    if not names:
        raise InvalidRequest("name at least one namespace, or pass --all")
    t0 = _time.perf_counter()
    tty = sys.stderr.isatty() and not as_json
    prog, finish = _index_progress(tty)
    reports, failed = [], False
    try:
        for name in names:
            left = None if max_seconds is None else max_seconds - (_time.perf_counter() - t0)
            if left is not None and left <= 0:
                break
            if prog:
                prog[1]["ns"] = name
            try:
                rep = index_namespace(
                    db.namespace(name),
                    max_seconds=left,
                    gc_grace_s=gc_grace,
                    lease_ttl=lease_ttl,
                    progress=prog[0] if prog else None,
                )
            except PufferError as e:
                rep = IndexReport(
                    name, status="failed", message=_one_line(e.message + (f" (hint: {e.hint})" if e.hint else ""))
                )
            except Exception as e:  # noqa: BLE001 - a cron user needs the line, not a traceback
                if _DEBUG:
                    raise
                rep = IndexReport(name, status="failed", message=f"internal error: {type(e).__name__}: {e}")
            failed |= rep.status == "failed"
            reports.append(rep)
            if not as_json:
                if tty:
                    console().print(rep.summary(), highlight=False)
                else:
                    typer.echo(rep.summary())
    finally:
        finish()
    if as_json:
        echo_json({"namespaces": [r.as_dict() for r in reports], "seconds": _time.perf_counter() - t0})
    if failed:
        bad = [r for r in reports if r.status == "failed"]
        raise PufferError(
            f"{len(bad)} of {len(reports)} namespaces failed to index"
            + (f": {bad[0].namespace}: {bad[0].message}" if len(bad) == 1 else " (see above)"),
            hint="fix the cause and run `puffer index` again (namespaces that did not fail were indexed)",
        )


@app.command(epilog="Example: puffer warm docs --store s3://bucket/puffer")
def warm(
    namespace: Annotated[str, typer.Argument(help="Namespace whose current index generation to prefetch")],
    cache_dir: CacheDirOpt = None,
    cache_max_gb: CacheMaxOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
):
    """Prefetch a namespace's current index generation into the local cache."""
    from . import cache as _cache
    from .index.reader import warm as run

    c = _cache.configure(cache_dir) if cache_dir is not None else _cache.get_cache()
    db = open_db(store, s3_endpoint, cache_max_gb=cache_max_gb)
    ns = db.namespace(namespace)
    ns.require()
    rep = run(ns, c)
    rep["cache_dir"] = str(c.root) if c.persistent else ""
    if as_json:
        echo_json(rep)
    elif rep["generation"] is None:
        typer.echo(f"{namespace}: no index yet (run `puffer index {namespace}`); nothing to warm")
    else:
        typer.echo(
            f"{namespace}: generation {rep['generation']}: {rep['files']} files, {rep['bytes'] / 1e6:,.1f} MB "
            f"in cache ({rep['fetched_files']} fetched, {rep['fetched_bytes'] / 1e6:,.1f} MB) "
            f"in {rep['seconds']:.2f}s"
        )


@app.command(epilog='Example: puffer recall docs --num 25 --top-k 10 --filter \'["lang","Eq","en"]\'')
def recall(
    namespace: Annotated[str, typer.Argument(help="Namespace to measure")],
    num: Annotated[int, typer.Option("--num", help="Query vectors sampled from the namespace")] = 25,
    top_k: Annotated[int, typer.Option("--top-k", help="k of recall@k")] = 10,
    filters: Annotated[str | None, typer.Option("--filter", help="Filter JSON (or @file.json)")] = None,
    field: Annotated[str | None, typer.Option("--field", help="Vector attribute (default: vector)")] = None,
    cache_dir: CacheDirOpt = None,
    cache_max_gb: CacheMaxOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
):
    """ANN vs exhaustive recall@k on vectors sampled from the namespace (avg_recall, avg_ann_count,
    avg_exhaustive_count)."""
    from . import cache as _cache
    from .index.recall import recall as run

    if cache_dir is not None:
        _cache.configure(cache_dir)
    db = open_db(store, s3_endpoint, cache_max_gb=cache_max_gb)
    rep = run(db.namespace(namespace), num=num, top_k=top_k, filters=parse_json_arg(filters, "--filter"), field=field)
    if as_json:
        echo_json(rep)
    else:
        typer.echo(
            f"{namespace}: recall@{top_k} {rep['avg_recall']:.4f} over {rep['num']} queries "
            f"(avg ANN results {rep['avg_ann_count']:.1f}, exhaustive {rep['avg_exhaustive_count']:.1f}; "
            f"p50 ANN {rep['p50_ann_ms']:.2f} ms, exhaustive {rep['p50_exhaustive_ms']:.2f} ms)"
        )


# ---------------------------------------------------------------- namespaces / show / delete
@app.command("namespaces", epilog="Example: puffer namespaces --prefix docs --store s3://bucket/puffer")
def namespaces_cmd(
    prefix: Annotated[str | None, typer.Option("--prefix", help="Only names starting with PREFIX")] = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    policy: PolicyOpt = "fail",
):
    """List the namespaces of the store, with their row counts and head seq."""
    db = open_db(store, s3_endpoint, policy=policy)
    rows = []
    for name in db.namespaces(prefix=prefix):
        ns = db.namespace(name)
        docs, head = ns.docs()
        rows.append({"namespace": name, "rows": docs.height, "seq": head.seq})
    if as_json:
        echo_json({"namespaces": rows})
        return
    if not rows:
        typer.echo(f"no namespaces{f' starting with {prefix!r}' if prefix else ''} in {db.store.url}", err=True)
        return
    _table(["namespace", "rows", "seq"], [[r["namespace"], f"{r['rows']:,}", str(r["seq"])] for r in rows])


@app.command("show", epilog="Example: puffer show docs")
def show_cmd(
    namespace: Annotated[str, typer.Argument(help="Namespace to describe")],
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    policy: PolicyOpt = "fail",
):
    """Metadata, schema, index status and unindexed rows of a namespace."""
    db = open_db(store, s3_endpoint, policy=policy)
    ns = db.namespace(namespace)
    meta = ns.metadata()
    docs, _ = ns.docs()
    idx = meta.get("index") or {}
    covered = idx.get("covers_through_seq", idx.get("seq")) if isinstance(idx, dict) else None
    info = {
        "namespace": namespace,
        "rows": docs.height,
        "seq": meta["seq"],
        "distance_metric": meta["distance_metric"],
        "created_at": meta["created_at"],
        "updated_at": meta["updated_at"],
        "schema": meta["schema"],
        "index": {
            "generation": idx.get("generation") if isinstance(idx, dict) else None,
            "covers_through_seq": covered,
            "unindexed_wal_entries": meta["seq"] - int(covered or 0),
        },
    }
    if as_json:
        echo_json(info)
        return
    typer.echo(f"namespace       {namespace}")
    typer.echo(f"rows            {docs.height:,}")
    typer.echo(f"head seq        {meta['seq']}")
    typer.echo(f"distance metric {meta['distance_metric'] or '-'}")
    gen = info["index"]["generation"]
    if gen is None:
        typer.echo(f"index           none (all {meta['seq']} WAL entries unindexed; run `puffer index {namespace}`)")
    else:
        typer.echo(
            f"index           generation {gen}, covers seq {covered}; "
            f"{info['index']['unindexed_wal_entries']} WAL entries unindexed"
        )
    typer.echo("schema")
    for k, v in meta["schema"].items():
        typer.echo(f"  {k}: {to_json(v)}")


@app.command("delete", epilog="Example: puffer delete docs --yes")
def delete_cmd(
    namespace: Annotated[str, typer.Argument(help="Namespace to delete (every key of it)")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask (required when stdin is not a terminal)")
    ] = False,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    single_writer: SingleWriterOpt = False,
):
    """Delete a namespace: every WAL entry, index file and meta.json of it."""
    db = open_db(store, s3_endpoint, single_writer)
    ns = db.namespace(namespace)
    ns.require()
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidRequest(
                f"refusing to delete {namespace!r} without --yes", hint=f"run `puffer delete {namespace} --yes`"
            )
        if not typer.confirm(f"delete namespace {namespace!r} in {db.store.url}?"):
            raise typer.Abort()
    n = ns.delete()
    if as_json:
        echo_json({"namespace": namespace, "deleted_keys": n})
    else:
        typer.echo(f"deleted {namespace!r}: {n:,} keys removed")


def _table(cols: list[str], rows: list[list[str]]) -> None:
    """A box table on a terminal (fit to its width), tab-separated plain text when piped."""
    if not sys.stdout.isatty():
        typer.echo("\t".join(cols))
        for r in rows:
            typer.echo("\t".join(r))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    Console().print(t)


# ---------------------------------------------------------------- entry point
_DEBUG = False


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"puffer {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="PUFFER_DEBUG",
            help="On an unexpected error show the Python traceback (anywhere on the line; or PUFFER_DEBUG=1)",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit")
    ] = False,
):
    """Vector, full-text and hybrid search on object storage (turbopuffer-compatible)."""
    global _DEBUG

    _DEBUG = _DEBUG or debug


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _say(msg: str, hint: str | None = None) -> None:
    line = "Error: " + _one_line(msg)
    if hint:
        line += f" (hint: {_one_line(hint)})"
    typer.echo(line, err=True)


def _debug_from(argv: list[str]) -> tuple[list[str], bool]:
    """Strip ``--debug`` wherever it stands (before a ``--``); PUFFER_DEBUG=1 also turns it on."""
    env = os.environ.get("PUFFER_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return rest, env or len(rest) != len(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Every failure is one ``Error: ... (hint: ...)`` line on stderr and exit
    code 1 (2 for usage errors); never a traceback unless --debug / PUFFER_DEBUG=1."""
    ClickException, NoArgsIsHelpError, UsageError = _click_exceptions()

    global _DEBUG
    argv, _DEBUG = _debug_from(list(sys.argv[1:] if argv is None else argv))
    cmd = _command()
    try:
        rv = cmd.main(args=argv, prog_name="puffer", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        _say("aborted")
        return 1
    except NoArgsIsHelpError as e:
        e.show()
        return 0
    except UsageError as e:
        sub = e.ctx.command_path if e.ctx else "puffer"
        _say(e.format_message(), f"run `{sub} --help`")
        return 2
    except ClickException as e:
        _say(e.format_message())
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except PufferError as e:
        if _DEBUG:
            raise
        _say(e.message, e.hint)
        return 1
    except SystemExit as e:  # something below called sys.exit (it has said why on stderr)
        if isinstance(e.__context__, OSError) and e.__context__.errno == errno.EPIPE:
            _silence_stdout()  # typer's answer to a closed stdout pipe (`puffer query ... | head`)
            return 0
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code and not _DEBUG:
            _say(f"stopped with exit status {code}", "run with --debug for the traceback")
            return 1
        return code
    except Exception as e:  # noqa: BLE001 - the last resort: one line, never a traceback
        if _DEBUG:
            raise
        _internal(e)
        return 1
    except BaseException as e:  # a polars PanicException is a BaseException
        if _DEBUG or isinstance(e, GeneratorExit):
            raise
        _internal(e)
        return 1


class _NoSuchError(Exception):
    """Stands in for an exception class this click has not (caught nowhere: never raised)."""


def _click_exceptions() -> tuple[Any, Any, Any]:
    """(ClickException, NoArgsIsHelpError, UsageError) as the running typer raises them.

    typer >= 0.26 vendors click as ``typer._click`` (its exceptions have no public name there);
    older typers raise those of the ``click`` package they depend on (also installed beside a
    new typer, by uvicorn: so look for typer's own copy first). NoArgsIsHelpError is new in
    click 8.2; an older click prints the help and exits 0 itself."""
    try:
        from typer._click import exceptions as ex
    except ImportError:
        from click import exceptions as ex
    return ex.ClickException, getattr(ex, "NoArgsIsHelpError", _NoSuchError), ex.UsageError


def _internal(e: BaseException) -> None:
    msg = _one_line(str(e)) or "(no message)"
    if len(msg) > 500:
        msg = msg[:497] + "..."
    typer.echo(
        f"Error: internal error: {type(e).__name__}: {msg} (run with --debug for the traceback; please report)",
        err=True,
    )


_COMMAND = None


def _command():
    """The click command behind ``app`` (built once: building it costs ~0.1 s)."""
    global _COMMAND
    if _COMMAND is None:
        _COMMAND = typer.main.get_command(app)
    return _COMMAND


def _silence_stdout() -> None:
    """After a closed pipe (``puffer export ns | head``) keep Python from complaining at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
