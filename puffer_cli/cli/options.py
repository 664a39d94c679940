"""What every `puffer` command module shares: the typer app, the common options,
opening the store, JSON output, reading JSON arguments (cli/main.py is the entry point)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from puffer_cli.errors import InvalidRequest

if TYPE_CHECKING:
    from puffer_cli.db import DB

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
    from puffer_cli.db import connect  # lazily: commands that never open a store start faster

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
    kw: dict[str, Any] = dict(indent=indent, ensure_ascii=False, default=_json_default, allow_nan=False)
    try:
        return json.dumps(obj, **kw)
    except ValueError:  # a non-finite float somewhere (rare): clean a copy
        return json.dumps(_finite(json.loads(json.dumps(obj, indent=None, default=_json_default))), **kw)


def echo_json(obj) -> None:
    """Print ``obj`` as JSON; an object gains ``skipped`` when replay under
    ``--wal-corrupt-policy skip`` left WAL entries out (never a silent drop)."""
    from puffer_cli.wal.namespace import skipped

    if isinstance(obj, dict) and skipped():
        obj = {**obj, "skipped": skipped()}
    sys.stdout.write(to_json(obj, indent=2) + "\n")


def warn_skipped() -> None:
    """One stderr line per WAL entry skipped under ``--wal-corrupt-policy skip`` in this run."""
    if "puffer_cli.wal.namespace" not in sys.modules:
        return  # this command read no WAL (and `puffer --version` must not import the engine)
    from puffer_cli.wal.namespace import skipped

    for s in skipped():
        rows = "an unknown number of" if s["rows"] is None else f"{s['rows']:,}"
        typer.echo(
            f"Warning: skipped WAL entry {s['seq']} of {s['namespace']!r} ({s['key']}): {s['problem']}; "
            f"{rows} rows left out (--wal-corrupt-policy skip; `puffer wal-inspect {s['namespace']} --repair` "
            f"recovers what still exists)",
            err=True,
        )


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


class State:
    """Process-wide CLI state: ``debug`` is set by ``--debug`` / PUFFER_DEBUG=1."""

    debug = False


def one_line(text: str) -> str:
    return " ".join(str(text).split())
