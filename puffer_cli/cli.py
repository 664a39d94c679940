"""The `puffer` command line: glue over the library. Errors are translated once,
in :func:`main`, into one ``Error: ...`` line (plus a hint) and exit code 1."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

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

StoreOpt = Annotated[Optional[str], typer.Option("--store", envvar="PUFFER_STORE",
                     help="Store URL: a path (default ./puffer-data), s3://bucket/prefix or memory://")]
EndpointOpt = Annotated[Optional[str], typer.Option("--s3-endpoint", envvar="PUFFER_S3_ENDPOINT",
                        help="S3-compatible endpoint URL (MinIO, moto, ...)")]
SingleWriterOpt = Annotated[bool, typer.Option("--single-writer", envvar="PUFFER_SINGLE_WRITER",
                            help="Allow writes to a store that ignores conditional writes (you promise one writer)")]
PolicyOpt = Annotated[str, typer.Option("--wal-corrupt-policy", envvar="PUFFER_WAL_CORRUPT_POLICY",
                      help="On a corrupt WAL segment: fail (default) or skip it")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def open_db(store: str | None, s3_endpoint: str | None, single_writer: bool = False,
            policy: str = "fail") -> DB:
    return connect(store, s3_endpoint=s3_endpoint, single_writer=single_writer, wal_policy=policy)


def echo_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


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
        text = p.read_text()
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"{what} is not valid JSON: {e}", hint=f"pass {what} as JSON or @file.json")


# ---------------------------------------------------------------- ingest
@app.command(epilog="Example: puffer ingest docs data.parquet --id id --vector emb")
def ingest(
    namespace: Annotated[str, typer.Argument(help="Namespace to write into (created on first write)")],
    paths: Annotated[list[str], typer.Argument(help="Input files (parquet, ndjson, csv)")],
    id_col: Annotated[str, typer.Option("--id", help="Column holding document ids")] = "id",
    vector_col: Annotated[Optional[str], typer.Option("--vector", help="Column holding vectors")] = None,
    schema: Annotated[Optional[str], typer.Option("--schema", help="Schema JSON or @file.json")] = None,
    distance_metric: Annotated[Optional[str], typer.Option("--distance-metric",
                               help="cosine_distance (default) or euclidean_squared")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="parquet|ndjson|csv (default: from the file name)")] = None,
    batch_rows: Annotated[int, typer.Option("--batch-rows", help="Rows per WAL entry")] = 50_000,
    as_json: JsonOpt = False,
    store: StoreOpt = None, s3_endpoint: EndpointOpt = None, single_writer: SingleWriterOpt = False,
):
    """Batch-load files into a namespace: one WAL entry per chunk, streamed, idempotent by id."""
    from .ingest import ingest as run

    db = open_db(store, s3_endpoint, single_writer)
    ns = db.namespace(namespace)
    sch = parse_json_arg(schema, "--schema")
    tty = sys.stderr.isatty()
    progress_cb, finish = _ingest_progress(tty)
    try:
        rep = run(ns, paths, id_col=id_col, vector_col=vector_col, schema=sch, distance_metric=distance_metric,
                  fmt=fmt, batch_rows=batch_rows, progress=progress_cb)
    finally:
        finish()
    if as_json:
        echo_json(rep.as_dict())
    else:
        mb = rep.bytes_in / 1e6
        typer.echo(f"ingested {rep.rows:,} rows into {namespace!r} as {rep.entries} WAL entries "
                   f"(seq {rep.first_seq}..{rep.last_seq}) in {rep.seconds:.2f}s: "
                   f"{rep.rows_per_s:,.0f} rows/s, {mb / rep.seconds if rep.seconds else 0:,.1f} MB/s")


def _ingest_progress(tty: bool):
    if not tty:
        def plain(rep, total):
            of = f"/{total:,}" if total else ""
            print(f"ingest {rep.namespace}: {rep.rows:,}{of} rows, {rep.rows_per_s:,.0f} rows/s, "
                  f"{rep.bytes_in / 1e6:,.1f} MB, seq {rep.last_seq}", file=sys.stderr, flush=True)
        return plain, lambda: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,} rows"),
                    TextColumn("{task.fields[rate]} rows/s"), TextColumn("{task.fields[mb]} MB"),
                    TimeElapsedColumn(), console=console())
    prog.start()
    task = prog.add_task("ingest", total=None, rate="0", mb="0")

    def update(rep, total):
        prog.update(task, completed=rep.rows, total=total or None, rate=f"{rep.rows_per_s:,.0f}",
                    mb=f"{rep.bytes_in / 1e6:,.1f}", description=f"ingest {rep.namespace}")
    return update, prog.stop


# ---------------------------------------------------------------- export
@app.command(epilog="Example: puffer export docs --format parquet -o docs.parquet")
def export(
    namespace: Annotated[str, typer.Argument(help="Namespace to export")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Output file (default: stdout)")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="parquet|ndjson|csv (default: from -o, else ndjson)")] = None,
    at_seq: Annotated[Optional[int], typer.Option("--at-seq", help="Export the state at this committed WAL seq")] = None,
    store: StoreOpt = None, s3_endpoint: EndpointOpt = None, policy: PolicyOpt = "fail",
):
    """Export a consistent snapshot (one committed seq), ordered by id."""
    from .export import export as run

    db = open_db(store, s3_endpoint, policy=policy)
    info = run(db.namespace(namespace), output, fmt, at_seq)
    if output and output != "-":
        typer.echo(f"exported {info['rows']:,} rows of {namespace!r} at seq {info['seq']} to {output} ({info['format']})",
                   err=True)


# ---------------------------------------------------------------- wal-inspect
@app.command("wal-inspect", epilog="Example: puffer wal-inspect docs --verify")
def wal_inspect(
    namespace: Annotated[str, typer.Argument(help="Namespace whose WAL to inspect")],
    verify: Annotated[bool, typer.Option("--verify", help="Check every segment; exit 1 naming each bad one")] = False,
    show: Annotated[Optional[int], typer.Option("--show", help="Print the ops of entry SEQ")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Quarantine bad segments and salvage intact ops")] = False,
    as_json: JsonOpt = False,
    store: StoreOpt = None, s3_endpoint: EndpointOpt = None,
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
            typer.echo(json.dumps(out["header"], default=str))
            for op in out["ops"]:
                typer.echo(f"-- {op['kind']} ({op['rows']} rows): {', '.join(op['columns'])}")
                for r in op["data"][:50]:
                    typer.echo("   " + json.dumps(r, default=str)[:300])
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
                typer.echo(f"seq {d['seq']}: {d['problem']} -> {d['action']}; ops salvaged {d['ops_salvaged']}, "
                           f"lost {d['ops_lost']}; bytes kept at {d['quarantine']}")
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
        raise typer.Exit(1)


def layout_key(ns: str, seq: int) -> str:
    from . import layout

    return layout.wal(ns, seq)


def _wal_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for c in ("seq", "bytes", "ops", "rows", "created", "checksum"):
        t.add_column(c, justify="right" if c in ("seq", "bytes", "rows") else "left")
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in r["ops"].items())
        status = "ok" if r["ok"] else f"BAD: {r['problem']}"
        if r["repaired"]:
            status += " (repaired)"
        t.add_row(str(r["seq"]), f"{r['bytes']:,}", ops, f"{r['rows']:,}", r["created_at"] or "", status)
    Console(width=max(100, Console().width)).print(t)


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; translate every library error to one `Error:` line, exit 1."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="puffer", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except PufferError as e:
        msg = f"Error: {e.message}"
        if e.hint:
            msg += f" (hint: {e.hint})"
        typer.echo(msg, err=True)
        return 1
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("Error: aborted", err=True)
        return 1
    except NoArgsIsHelpError as e:
        e.show()
        return 0
    except UsageError as e:
        sub = e.ctx.command_path if e.ctx else "puffer"
        typer.echo(f"Error: {e.format_message()} (hint: run `{sub} --help`)", err=True)
        return 1
    except ClickException as e:
        typer.echo(f"Error: {e.format_message()}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("Error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
