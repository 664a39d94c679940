"""`puffer index`, `warm`, `recall`: the index commands."""

from __future__ import annotations

import math
import sys
import time
from typing import Annotated

import typer

from puffer_cli.cli.options import (
    CacheMaxOpt,
    EndpointOpt,
    JsonOpt,
    PolicyOpt,
    State,
    StoreOpt,
    app,
    echo_json,
    one_line,
    open_db,
    parse_json_arg,
)
from puffer_cli.cli.progress import Reporter
from puffer_cli.errors import InvalidRequest, PufferError

# ---------------------------------------------------------------- index / warm / recall
CacheDirOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        envvar="PUFFER_CACHE_DIR",
        help='Local cache of index files (default: the user cache dir; "" disables)',
    ),
]


MaxSecondsOpt = Annotated[
    float | None,
    typer.Option("--max-seconds", help="Stop starting work after N seconds (a partial run publishes what it folded)"),
]
GcGraceOpt = Annotated[
    float | None,
    typer.Option(
        "--gc-grace",
        envvar="PUFFER_INDEX_GC_GRACE",
        help="Seconds an old generation's files stay for running readers (default 600)",
    ),
]
LeaseTtlOpt = Annotated[
    float | None,
    typer.Option(
        "--lease-ttl",
        envvar="PUFFER_INDEX_LEASE_TTL",
        help="Seconds the indexer lease lasts without renewal (default 60)",
    ),
]


QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Print only changes and failures (no progress, no 'up to date' / 'skipped' lines)"
    ),
]
RepairOpt = Annotated[
    bool,
    typer.Option(
        "--repair",
        help="Check every file of the current generation and rebuild damaged segments (from the WAL and the "
        "rest of the generation)",
    ),
]
WalRetentionOpt = Annotated[
    float | None,
    typer.Option(
        "--wal-retention",
        envvar="PUFFER_WAL_RETENTION",
        help="Seconds WAL entries covered by a published generation are kept (default 604800: 7 days)",
    ),
]


@app.command(
    "index",
    epilog="Example: puffer index docs   (cron: * * * * * /abs/venv/bin/puffer index --all --max-seconds 50 --quiet "
    "--store s3://bucket/puffer >> /var/log/puffer-index.log 2>&1; see docs/indexer.md)",
)
def index_cmd(
    namespaces: Annotated[list[str] | None, typer.Argument(help="Namespaces to index")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Index every namespace in the store")] = False,
    max_seconds: MaxSecondsOpt = None,
    quiet: QuietOpt = False,
    repair: RepairOpt = False,
    wal_retention: WalRetentionOpt = None,
    gc_grace: GcGraceOpt = None,
    lease_ttl: LeaseTtlOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_max_gb: CacheMaxOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    policy: PolicyOpt = "fail",
):
    """Build the next index generation of namespaces from their WAL, publish it, collect old files.

    Safe to run from cron on several machines at once: a namespace whose lease another run holds
    is skipped (exit 0, saying who holds it until when). Exit 0: done or nothing to do; 1: a failure.
    Progress goes to stderr: a bar on a terminal, a plain line per stage (and every 5 s) otherwise;
    off a terminal every line starts with an ISO-8601 timestamp. A namespace named on the command
    line that does not exist is an error (exit 1: a typo in a crontab)."""
    from puffer_cli.store import filecache as _cache

    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise InvalidRequest(f"--max-seconds must be a positive number of seconds, got {max_seconds}")
    if wal_retention is not None and not (wal_retention >= 0 and math.isfinite(wal_retention)):
        raise InvalidRequest(f"--wal-retention must be a number of seconds >= 0, got {wal_retention}")
    if cache_dir is not None:
        _cache.configure(cache_dir)
    db = open_db(store, s3_endpoint, policy=policy, cache_max_gb=cache_max_gb)
    names = _names_to_index(db, namespaces, all_)
    t0 = time.perf_counter()
    reports = []
    failures: list[PufferError] = []
    with Reporter("index", sys.stderr.isatty() and not as_json, quiet=quiet) as progress:
        for name in names:
            left = None if max_seconds is None else max_seconds - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                break
            progress.subject = name
            rep, err = _index_one(db, name, left, gc_grace, lease_ttl, progress, repair, wal_retention)
            reports.append(rep)
            if err is not None:
                failures.append(err)
                if len(names) > 1 and not as_json:  # the others go on; this one is named on stderr now
                    from puffer_cli.cli.progress import stamp

                    typer.echo(f"{stamp()} {rep.summary()}", err=True)
            elif not as_json and not (quiet and rep.status in ("up-to-date", "busy", "empty") and not rep.changed()):
                progress.line(rep.summary())
    if as_json:
        echo_json({"namespaces": [r.as_dict() for r in reports], "seconds": time.perf_counter() - t0})
    if len(names) == 1 and failures:
        raise failures[0]  # one namespace: its own error (an S3 failure stays `Error: S3 ...`)
    bad = [r for r in reports if r.status == "failed"]
    if bad:  # exit 1 at the end, so cron sees the failure; the others were indexed
        raise PufferError(
            f"{len(bad)} of {len(reports)} namespaces failed to index: {', '.join(r.namespace for r in bad)}"
            + (f": {bad[0].message}" if len(bad) == 1 else " (see above)"),
            hint="fix the cause and run `puffer index` again (namespaces that did not fail were indexed)",
        )


def _names_to_index(db, namespaces: list[str] | None, all_: bool) -> list[str]:
    names = list(dict.fromkeys(namespaces or []))
    for n in names:  # a typo in a crontab must not pass for "nothing to index" every minute
        db.open_namespace(n).require()
    if all_:
        names.extend(n for n in db.namespaces() if n not in names)
        if not names:
            raise InvalidRequest(
                f"--all: no namespaces in store {db.store.url}", hint="check --store (env PUFFER_STORE)"
            )
    if not names:
        raise InvalidRequest("name at least one namespace, or pass --all")
    return names


def _index_one(
    db, name: str, left: float | None, gc_grace, lease_ttl, progress, repair=False, wal_retention=None
) -> tuple:
    """One namespace's run: (IndexReport, None), or a failure as a report and its error (a cron user needs the
    line, not a traceback; the other namespaces still get indexed)."""
    from puffer_cli.errors import with_hint
    from puffer_cli.index.builder import IndexReport, index_namespace

    try:
        rep = index_namespace(
            db.open_namespace(name),
            max_seconds=left,
            gc_grace_s=gc_grace,
            lease_ttl=lease_ttl,
            progress=progress,
            repair=repair,
            wal_retention_s=wal_retention,
        )
        return rep, None
    except PufferError as e:
        return IndexReport(name, status="failed", message=one_line(with_hint(e.message, e.hint))), e
    except Exception as e:  # noqa: BLE001
        if State.debug:
            raise
        msg = f"internal error: {type(e).__name__}: {e}"
        return IndexReport(name, status="failed", message=one_line(msg)), PufferError(msg)


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
    from puffer_cli.index.warm import warm as run
    from puffer_cli.store import filecache as _cache

    c = _cache.configure(cache_dir) if cache_dir is not None else _cache.get_cache()
    db = open_db(store, s3_endpoint, cache_max_gb=cache_max_gb)
    ns = db.open_namespace(namespace)
    ns.require()
    with Reporter("warm", sys.stderr.isatty() and not as_json) as progress:
        progress.subject = namespace
        rep = run(ns, c, progress=progress)
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


@app.command(
    epilog='Example: puffer recall docs --num 25 --top-k 10 --filter \'["lang","Eq","en"]\''
    "  (or --probe 0.05 --fill 0 --prune 0)"
)
def recall(
    namespace: Annotated[str, typer.Argument(help="Namespace to measure")],
    num: Annotated[int, typer.Option("--num", help="Query vectors sampled from the namespace")] = 25,
    top_k: Annotated[int, typer.Option("--top-k", help="k of recall@k")] = 10,
    filters: Annotated[str | None, typer.Option("--filter", help="Filter JSON (or @file.json)")] = None,
    field: Annotated[str | None, typer.Option("--field", help="Vector attribute (default: vector)")] = None,
    probe: Annotated[
        float | None, typer.Option("--probe", help="IVF probe to measure (fraction of rows scanned; default: schema's)")
    ] = None,
    fill: Annotated[
        float | None,
        typer.Option("--fill", help="IVF fill to measure (lists between probed ones scanned, 0-8; default: schema's)"),
    ] = None,
    prune: Annotated[
        float | None,
        typer.Option("--prune", help="IVF query-aware probe to measure (0-10, 0 = a fixed probe; default: schema's)"),
    ] = None,
    cache_dir: CacheDirOpt = None,
    cache_max_gb: CacheMaxOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
):
    """ANN vs exhaustive recall@k on vectors sampled from the namespace (avg_recall, avg_ann_count,
    avg_exhaustive_count)."""
    from puffer_cli.jobs.recall import recall as run
    from puffer_cli.store import filecache as _cache

    if cache_dir is not None:
        _cache.configure(cache_dir)
    db = open_db(store, s3_endpoint, cache_max_gb=cache_max_gb)
    rep = run(
        db.open_namespace(namespace),
        num=num,
        top_k=top_k,
        filters=parse_json_arg(filters, "--filter"),
        field=field,
        probe=probe,
        fill=fill,
        prune=prune,
    )
    if as_json:
        echo_json(rep)
    else:
        typer.echo(
            f"{namespace}: recall@{top_k} {rep['avg_recall']:.4f} over {rep['num']} queries "
            f"(avg ANN results {rep['avg_ann_count']:.1f}, exhaustive {rep['avg_exhaustive_count']:.1f}; "
            f"p50 ANN {rep['p50_ann_ms']:.2f} ms, exhaustive {rep['p50_exhaustive_ms']:.2f} ms)"
        )
