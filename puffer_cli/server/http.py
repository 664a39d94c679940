"""The HTTP server's building blocks that are not views: ServeConfig, the error shape on the
wire, and small response helpers (schema, timestamps).  The metrics are in server/metrics.py."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from puffer_cli import config, limits
from puffer_cli.errors import PufferError, with_hint
from puffer_cli.schema import spec as S
from puffer_cli.schema import types
from puffer_cli.search import response
from puffer_cli.server import wire
from puffer_cli.wal.groupcommit import DEFAULT_WINDOW_S

log = logging.getLogger("puffer.serve")

JSON = "application/json"


@dataclass
class ServeConfig:
    """Everything a server process needs; JSON-serialisable (passed to workers via env)."""

    store: str | None = None
    s3_endpoint: str | None = None
    single_writer: bool = False
    wal_policy: str = "fail"
    api_key: str | None = None
    commit_window_ms: float = DEFAULT_WINDOW_S * 1000
    max_body_bytes: int = wire.DEFAULT_MAX_BODY
    hot_namespaces: int = 64
    index_interval: float | None = None
    threads: int = 64
    query_threads: int | None = None  # queries executing at once (default: number of cores, at least 2)
    # limits (docs/http.md "Limits: server"); 0 / None turns one off
    query_budget_s: float | None = limits.QUERY_BUDGET_S  # a query (and a filter write) is stopped after this
    header_timeout_s: float | None = limits.HEADER_TIMEOUT_S  # request line + headers must arrive within this
    body_chunk_timeout_s: float | None = limits.BODY_CHUNK_TIMEOUT_S  # longest wait for the next body chunk
    body_timeout_s: float | None = limits.BODY_TIMEOUT_S  # a whole request body
    max_body_bytes_in_flight: int = limits.MAX_BODY_BYTES_IN_FLIGHT  # all request bodies being read at once
    # writes are 429 over this many unindexed WAL bytes in a namespace (0: off; server/admission.py)
    backpressure_bytes: int = field(default_factory=lambda: _env_backpressure())
    # set by ``serve --workers N`` for its workers: prometheus_client's multiprocess directory
    metrics_dir: str | None = None


def _env_backpressure() -> int:
    v = config.from_env().backpressure_bytes
    return limits.BACKPRESSURE_BYTES if v is None else v


def indexed_seq(meta: dict | None) -> int:
    idx = (meta or {}).get("index")
    if isinstance(idx, dict):
        for k in ("covers_through_seq", "seq"):
            if isinstance(idx.get(k), int):
                return idx[k]
    return 0


def row_bytes(schema: dict) -> int:
    """Approximate logical bytes of one document (for metadata on indexed namespaces)."""
    n = 0
    for spec in schema.values():
        d = types.vector_dims(spec["type"]) or types.multi_vector_dims(spec["type"])
        n += 4 * d if d else (24 if spec["type"] in ("string", "uuid") or spec["type"].startswith("[]") else 8)
    return n


def iso_ms(ms: int | None) -> str:
    t = dt.datetime.fromtimestamp((ms or 0) / 1000, dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schema_out(schema: dict) -> dict:
    """Internal schema -> turbopuffer's ``AttributeSchemaConfig`` objects."""
    out = {}
    for k, spec in schema.items():
        d: dict[str, Any] = {"type": spec["type"]}
        if "full_text_search" in spec:
            d["full_text_search"] = spec["full_text_search"]
        if S.is_vector(spec["type"]):
            d["ann"] = spec.get("ann") or True
        elif spec.get("ann"):  # a multi-vector attribute with its late-interaction index
            d["ann"] = spec["ann"]
        if spec.get("sparse_knn"):
            d["sparse_knn"] = spec["sparse_knn"]
        d["filterable"] = bool(spec.get("filterable", False))
        if spec.get("regex"):
            d["regex"] = True
        out[k] = d
    return out


# ------------------------------------------------------------------ errors on the wire
CLIENT_CLOSED = 499  # metrics status of a request whose client disconnected (nginx's convention)
NO_RETRY = frozenset(range(400, 500)) - {408, 409, 429}  # the turbopuffer client need not retry these


def error_response(e: PufferError, redact: Sequence[str] = ()) -> Response:
    """``{"status":"error","error":...}`` with the error's status; ``x-should-retry: false`` when a
    retry cannot help (the class says ``retryable = False``, or a 4xx other than 408/409/429), so the
    official client does not send the request 4 more times; 429 carries ``retry-after``.

    The message names no server path (each of ``redact``, the store's location, becomes
    ``<store>``) and carries no CLI-only hint (:func:`http_hint`)."""
    msg = hide_paths(with_hint(e.message, http_hint(e.hint)), redact)
    return error_json(msg, e.status, retryable=e.retryable)


_CLI_HINT = re.compile(r"`puffer |(^|[\s(])--[a-z]|PUFFER_[A-Z]")


def http_hint(hint: str | None) -> str | None:
    """The hint, unless it tells a CLI user what to type (a `puffer ...` command, a --flag, an
    environment variable): an HTTP client cannot act on that (the server's log says it)."""
    return None if hint is None or _CLI_HINT.search(hint) else hint


def hide_paths(msg: str, redact: Sequence[str]) -> str:
    for r in sorted((r for r in redact if r and len(r) > 1), key=len, reverse=True):
        msg = msg.replace(r, "<store>")
    return msg


def error_json(msg: str, status: int, *, retryable: bool | None = None, close: bool = False) -> Response:
    headers = {}
    if retryable is False or (retryable is None and status in NO_RETRY):
        headers["x-should-retry"] = "false"
    elif retryable is True:
        headers["x-should-retry"] = "true"
    if status == 429:
        headers["retry-after"] = "1"
    if close or status == 408:  # a client too slow to send its request: do not keep its connection
        headers["connection"] = "close"
    return Response(response.error_body(msg), status, headers=headers, media_type=JSON)


#: exception types (by module) that mean the object store / network failed, not puffer
_STORE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "urllib3", "fsspec")


def is_store_failure(e: BaseException) -> bool:
    """A store/network failure that slipped past store.py's mapping to StoreError: an exception
    raised by the S3 stack, or a connection/timeout OSError.  Anything else is a bug (500)."""
    for t in type(e).__mro__:
        if (t.__module__ or "").split(".")[0] in _STORE_MODULES:
            return True
    if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return isinstance(e, OSError) and e.errno in (
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    )


def unexpected_error(request: Request, e: BaseException, redact: Sequence[str] = ()) -> Response:
    """The last resort: a store/network failure is a 503 (logged, with its traceback: store.py
    should have mapped it), anything else a 500 (a bug, logged with its traceback)."""
    if is_store_failure(e):
        log.error("object store failure on %s %s: %s: %s", request.method, request.url.path, type(e).__name__, e)
        log.debug("traceback of the store failure", exc_info=e)
        return error_json(hide_paths(f"object store unavailable: {type(e).__name__}: {e}", redact), 503)
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
    return error_json(hide_paths(f"internal error: {type(e).__name__}: {e}", redact), 500)
