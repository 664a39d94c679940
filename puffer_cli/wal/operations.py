"""Asynchronous operations: turbopuffer's ``start_copy_from`` / ``poll_copy_from``.

An operation is a JSON record in the bucket (``layout.operation``), so any process that
shares the bucket answers a poll.  puffer runs the copy before it answers the start
request: a copy is one WAL entry, as ``copy_from_namespace`` (the same write), so there
is no half-done state to report, and a poll always sees ``finished`` with the write's
result or its error.  The record is written after the copy is durable; a crash in
between leaves a copied namespace and a token that polls as not found (404).
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime

from puffer_cli.errors import NotFound, PufferError
from puffer_cli.store import Store, layout

_TOKEN = re.compile(r"^[0-9a-f]{32}$")


def new_token() -> str:
    return secrets.token_hex(16)


def now() -> str:
    """An RFC 3339 UTC timestamp (what the client parses as a datetime)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finished(start_time: str, result: dict | None = None, error: PufferError | None = None) -> dict:
    """The record of a finished copy: ``result`` (the write's response) or ``error``."""
    out = (
        {"success": result}
        if error is None
        else {"error": {"detail": {"status": "error", "error": error.message}, "status_code": error.status}}
    )
    return {"status": "finished", "start_time": start_time, "finish_time": now(), "result": out}


def record(store: Store, ns: str, token: str, op: dict) -> None:
    store.write(layout.operation(ns, token), json.dumps(op).encode())


def load(store: Store, ns: str, token: str) -> dict:
    """The operation ``token`` of ``ns``; NotFound (404) when there is none."""
    missing = NotFound(f"no operation {token!r} on namespace {ns!r}", hint="use the token start_copy_from returned")
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise missing
    try:
        return json.loads(store.read(layout.operation(ns, token)))
    except FileNotFoundError:
        raise missing from None
