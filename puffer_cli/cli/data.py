"""`puffer ingest`, `export`, `wal-inspect`, `namespaces`, `show`, `delete`: the data and namespace commands."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from puffer_cli.cli.options import (
    EndpointOpt,
    JsonOpt,
    PolicyOpt,
    SingleWriterOpt,
    StoreOpt,
    app,
    echo_json,
    open_db,
    parse_json_arg,
    to_json,
)
from puffer_cli.cli.progress import Reporter
from puffer_cli.errors import CorruptNamespace, CorruptWal, InvalidRequest, plural


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
    check_first: Annotated[
        bool,
        typer.Option(
            "--check-first/--no-check-first",
            help="Read every input once and check every row before the first commit, so a bad row "
            "commits nothing (one extra read pass)",
        ),
    ] = True,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    single_writer: SingleWriterOpt = False,
):
    """Batch-load files into a namespace: one WAL entry per chunk, streamed, idempotent by id."""
    from puffer_cli.jobs.ingest import ingest as run

    db = open_db(store, s3_endpoint, single_writer)
    ns = db.open_namespace(namespace)
    sch = parse_json_arg(schema, "--schema")
    with Reporter("ingest", sys.stderr.isatty()) as progress:
        progress.subject = namespace
        rep = run(
            ns,
            paths,
            id_col=id_col,
            vector_col=vector_col,
            schema=sch,
            distance_metric=distance_metric,
            fmt=fmt,
            batch_rows=batch_rows,
            validate_first=check_first,
            progress=lambda r, total: progress(
                "rows", r.rows, total, f"{r.rows_per_s:,.0f} rows/s, {r.bytes_in / 1e6:,.1f} MB, seq {r.last_seq}"
            ),
        )
    if as_json:
        echo_json(rep.as_dict())
    else:
        mb = rep.bytes_in / 1e6
        typer.echo(
            f"ingested {plural(rep.rows, 'row')} into {namespace!r} as {plural(rep.entries, 'WAL entry')} "
            f"(seq {rep.first_seq}..{rep.last_seq}) in {rep.seconds:.2f}s: "
            f"{rep.rows_per_s:,.0f} rows/s, {mb / rep.seconds if rep.seconds else 0:,.1f} MB/s"
        )


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
    from puffer_cli.jobs.export import export as run

    db = open_db(store, s3_endpoint, policy=policy)
    with Reporter("export", sys.stderr.isatty()) as progress:
        progress.subject = namespace
        info = run(db.open_namespace(namespace), output, fmt, at_seq, progress=progress)
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
    repair: Annotated[
        bool, typer.Option("--repair", help="Quarantine bad segments; recover rows from intact blocks and the index")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --repair: show the plan, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="With --repair: do not ask on a terminal")] = False,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
):
    """List WAL entries (seq, bytes, ops, created, checksum), verify, show or repair them."""
    from puffer_cli.jobs import walinspect as W

    db = open_db(store, s3_endpoint)
    ns = db.open_namespace(namespace)
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
    if repair or dry_run:
        done = W.repair(ns, dry_run=True)
        if done and not dry_run and not yes and sys.stdin.isatty() and not as_json:
            _repair_report(done, planned=True)
            if not typer.confirm(f"repair {len(done)} WAL segment(s) of {namespace!r} as planned?", default=False):
                raise typer.Exit(1)
        if not dry_run and done:
            done = W.repair(ns)
        if as_json:
            echo_json({"dry_run" if dry_run else "repaired": done})
        elif not done:
            typer.echo("nothing to repair: every segment verifies")
        else:
            _repair_report(done, planned=dry_run)
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
        raise CorruptWal(
            f"{plural(len(rows), 'WAL segment')} of {namespace!r} {'fails' if len(rows) == 1 else 'fail'} verification "
            f"(seq {', '.join(str(r['seq']) for r in rows[:10])}{', ...' if len(rows) > 10 else ''})",
            hint=f"`puffer wal-inspect {namespace} --repair` quarantines them and salvages intact ops",
        )


def _repair_report(done: list[dict[str, Any]], planned: bool) -> None:
    from puffer_cli.jobs.walinspect import MAX_IDS_SHOWN

    for d in done:
        lost = d["rows_lost"]
        if d["ids_lost"]:
            ids = ", ".join(str(i) for i in d["ids_lost"][:MAX_IDS_SHOWN])
            lost = f"{lost} (ids {ids}{', ...' if len(d['ids_lost']) > MAX_IDS_SHOWN else ''})"
        elif lost is None:
            lost = "unknown (the header is lost too)"
        elif lost and d["lost_id_ranges"]:
            lost = f"{lost} (ids within {', '.join(f'{a}..{b}' for a, b in d['lost_id_ranges'])})"
        src = f" from index generation {d['index_generation']}" if d["index_generation"] is not None else ""
        dels = f" (+{d['deletes_from_index']:,} deletes)" if d["deletes_from_index"] else ""
        kept = f"; bytes kept at {d['quarantine']}" if d["quarantine"] else ""
        typer.echo(
            f"seq {d['seq']}: {d['problem']}\n  {'plan: ' if planned else ''}{d['action']}; "
            f"rows salvaged {d['rows_salvaged']:,}, rows recovered{src} {d['rows_from_index']:,}{dels}, "
            f"rows lost {lost}{kept}"
        )
        if d["index_problem"]:
            typer.echo(f"  note: {d['index_problem']}")
    if planned:
        typer.echo("nothing was changed yet (a plan)")


def layout_key(ns: str, seq: int) -> str:
    from puffer_cli.store import layout

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
    rows: list[dict[str, Any]] = []
    for name in db.namespaces(prefix=prefix):
        ns = db.open_namespace(name)
        try:
            docs, head = ns.docs(missing_ok=True)  # one deleted since it was listed: 0 rows
            rows.append({"namespace": name, "rows": docs.height, "seq": head.seq})
        except DAMAGE as e:  # one namespace's damage is shown on its row, never fails the listing
            rows.append({"namespace": name, "rows": None, "seq": _seq_or_none(ns), "error": e.message, "hint": e.hint})
    if as_json:
        echo_json({"namespaces": rows})
        return
    if not rows:
        typer.echo(f"no namespaces{f' starting with {prefix!r}' if prefix else ''} in {db.store.url}", err=True)
        return
    bad = [r for r in rows if r.get("error")]
    cols = ["namespace", "rows", "seq"] + (["damage"] if bad else [])
    _table(
        cols,
        [
            [r["namespace"], "?" if r["rows"] is None else f"{r['rows']:,}", str(r["seq"] or "?")]
            + ([r.get("error", "")] if bad else [])
            for r in rows
        ],
    )
    if bad:
        typer.echo(
            f"{plural(len(bad), 'namespace')} damaged: "
            + "; ".join(f"run `puffer wal-inspect {r['namespace']} --verify`" for r in bad[:5])
            + ("; ..." if len(bad) > 5 else ""),
            err=True,
        )


#: damage in a namespace's stored state: shown by ``namespaces`` and ``show``, not raised
DAMAGE = (CorruptWal, CorruptNamespace)


def _seq_or_none(ns) -> int | None:
    try:
        return ns.head().seq
    except DAMAGE:
        return None


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
    ns = db.open_namespace(namespace)
    try:
        meta = db.namespace(namespace).metadata()
        docs, _ = ns.docs()
    except DAMAGE as e:  # show the damage (and what is still known) instead of failing
        _show_damaged(ns, e, as_json)
        return
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
        typer.echo(
            f"index           none ({plural(meta['seq'], 'WAL entry')} unindexed; run `puffer index {namespace}`)"
        )
    else:
        typer.echo(
            f"index           generation {gen}, covers seq {covered}; "
            f"{plural(info['index']['unindexed_wal_entries'], 'WAL entry')} unindexed"
        )
    typer.echo("schema")
    for k, v in meta["schema"].items():
        typer.echo(f"  {k}: {to_json(v)}")


def _show_damaged(ns, e: CorruptWal | CorruptNamespace, as_json: bool) -> None:
    info = {"namespace": ns.name, "rows": None, "seq": _seq_or_none(ns), "error": e.message, "hint": e.hint}
    if as_json:
        echo_json(info)
        return
    typer.echo(f"namespace       {ns.name}")
    typer.echo("rows            ? (cannot replay the WAL)")
    typer.echo(f"head seq        {info['seq'] if info['seq'] is not None else '?'}")
    typer.echo(f"DAMAGED         {e.message}")
    if e.hint:
        typer.echo(f"what to do      {e.hint}")


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
    ns = db.open_namespace(namespace)
    ns.require()
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidRequest(
                f"refusing to delete {namespace!r} without --yes", hint=f"run `puffer delete {namespace} --yes`"
            )
        if not typer.confirm(f"delete namespace {namespace!r} in {db.store.url}?"):
            raise typer.Abort()
    n = ns.delete_all()
    if as_json:
        echo_json({"namespace": namespace, "deleted_keys": n})
    else:
        typer.echo(f"deleted {namespace!r}: {n:,} keys removed")


@app.command("branch", epilog="Example: puffer branch docs docs-test")
def branch_cmd(
    source: Annotated[str, typer.Argument(help="Namespace to branch from")],
    dest: Annotated[str, typer.Argument(help="New namespace (must not exist)")],
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    single_writer: SingleWriterOpt = False,
):
    """Make DEST a copy-on-write branch of SOURCE: instant, no data copied; later writes to
    either side stay independent (docs/http.md "Branches")."""
    from puffer_cli.jobs.branch import branch_namespace

    db = open_db(store, s3_endpoint, single_writer)
    out = branch_namespace(db.store, dest, source, single_writer=single_writer)
    if as_json:
        echo_json({"namespace": dest, **out})
    else:
        typer.echo(f"branched {dest!r} from {source!r} at seq {out['base_seq']}")


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
