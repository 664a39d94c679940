"""`puffer serve`: the turbopuffer-compatible HTTP API (starlette).

Every view is a thin wrapper over a library function: parse the request
(:mod:`puffer_cli.wire`), call the library in a worker thread, serialise the
answer.  Errors are translated once, here, from ``PufferError.status`` into
``{"status": "error", "error": "..."}``.  The server keeps no durable state:
any number of ``serve`` processes can share one store.

Endpoints (what the official ``turbopuffer`` client 3.x calls)::

    POST   /v2/namespaces/{ns}                 write (+ ?stainless_overload=copyFrom)
    DELETE /v2/namespaces/{ns}                 delete the namespace
    POST   /v2/namespaces/{ns}/query           query, or multi-query with "queries"
    POST   /v2/namespaces/{ns}/multi-query     multi-query (alias)
    GET    /v2/namespaces/{ns}/metadata        (also /v1/.../metadata)
    GET    /v1/namespaces/{ns}/schema          schema
    POST   /v1/namespaces/{ns}/schema          update schema
    GET    /v1/namespaces                      list (prefix, cursor, page_size)
    GET    /v1/namespaces/{ns}/hint_cache_warm start loading a namespace
    POST   /v1/namespaces/{ns}/_debug/recall   ANN recall against exhaustive search
    GET    /health, GET /metrics               liveness, Prometheus text
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hmac
import itertools
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from . import limits, response, wire
from . import namespace as nsmod
from . import schema as S
from .db import DB, connect
from .errors import (
    BudgetExceeded,
    InvalidRequest,
    PufferError,
    RateLimited,
    RequestTimeout,
    TooLarge,
    Unauthorized,
    UnprocessableBody,
)
from .groupcommit import DEFAULT_WINDOW_S, GroupCommitter

log = logging.getLogger("puffer.serve")

JSON = "application/json"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


# ------------------------------------------------------------------ metrics
class Metrics:
    """Tiny Prometheus registry: request counts/latencies per route, commits, index lag."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list] = {}  # route -> [bucket counts..., sum, count]
        self.commit_batches = 0
        self.commit_requests = 0
        self.commit_seconds = 0.0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            k = (method, route, status)
            self.requests[k] = self.requests.get(k, 0) + 1
            h = self.latency.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 2))
            for i, b in enumerate(LATENCY_BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def on_commit(self, ns: str, n: int, seconds: float) -> None:
        with self.lock:
            self.commit_batches += 1
            self.commit_requests += n
            self.commit_seconds += seconds

    def render(self, lag: dict[str, int], hot: int, inflight_bytes: int = 0, abandoned: int = 0) -> str:
        out = [
            "# HELP puffer_http_requests_total HTTP requests by method, route and status.",
            "# TYPE puffer_http_requests_total counter",
        ]
        with self.lock:
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f'puffer_http_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}')
            out += [
                "# HELP puffer_http_request_duration_seconds Request latency by route.",
                "# TYPE puffer_http_request_duration_seconds histogram",
            ]
            for r, h in sorted(self.latency.items()):
                for i, b in enumerate(LATENCY_BUCKETS):
                    out.append(f'puffer_http_request_duration_seconds_bucket{{route="{r}",le="{b}"}} {h[i]}')
                out.append(f'puffer_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {h[-1]}')
                out.append(f'puffer_http_request_duration_seconds_sum{{route="{r}"}} {h[-2]:.6f}')
                out.append(f'puffer_http_request_duration_seconds_count{{route="{r}"}} {h[-1]}')
            out += [
                "# HELP puffer_wal_commits_total WAL entries committed by group commit.",
                "# TYPE puffer_wal_commits_total counter",
                f"puffer_wal_commits_total {self.commit_batches}",
                "# HELP puffer_wal_committed_requests_total Write requests carried by those commits.",
                "# TYPE puffer_wal_committed_requests_total counter",
                f"puffer_wal_committed_requests_total {self.commit_requests}",
                "# HELP puffer_wal_commit_seconds_total Time spent committing.",
                "# TYPE puffer_wal_commit_seconds_total counter",
                f"puffer_wal_commit_seconds_total {self.commit_seconds:.6f}",
            ]
        out += [
            "# HELP puffer_index_lag_entries WAL entries not yet indexed (hot namespaces).",
            "# TYPE puffer_index_lag_entries gauge",
        ]
        for ns, n in sorted(lag.items()):
            out.append(f'puffer_index_lag_entries{{namespace="{ns}"}} {n}')
        out += [
            "# HELP puffer_hot_namespaces Namespaces kept loaded in this process.",
            "# TYPE puffer_hot_namespaces gauge",
            f"puffer_hot_namespaces {hot}",
            "# HELP puffer_request_body_bytes_in_flight Bytes of request bodies being read or parsed.",
            "# TYPE puffer_request_body_bytes_in_flight gauge",
            f"puffer_request_body_bytes_in_flight {inflight_bytes}",
            "# HELP puffer_abandoned_query_threads Queries answered 408 whose worker thread still runs.",
            "# TYPE puffer_abandoned_query_threads gauge",
            f"puffer_abandoned_query_threads {abandoned}",
        ]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------ hooks into other modules
def _engine():
    try:
        from . import engine  # noqa: PLC0415
    except ImportError as e:
        raise PufferError(f"queries are not available in this build: {e}") from e
    return engine


def _index_hook(name: str) -> Callable | None:
    """A public function of the indexer (``module:function``), or None if this build has none."""
    import importlib

    mod, _, fn = name.partition(":")
    try:
        return getattr(importlib.import_module(f"puffer_cli.index.{mod}"), fn, None)
    except ImportError:
        return None


def _indexed_seq(meta: dict | None) -> int:
    idx = (meta or {}).get("index")
    if isinstance(idx, dict):
        for k in ("covers_through_seq", "seq"):
            if isinstance(idx.get(k), int):
                return idx[k]
    return 0


def _row_bytes(schema: dict) -> int:
    """Approximate logical bytes of one document (for metadata on indexed namespaces)."""
    n = 0
    for spec in schema.values():
        d = S.vector_dims(spec["type"])
        n += 4 * d if d else (24 if spec["type"] in ("string", "uuid") or spec["type"].startswith("[]") else 8)
    return n


def _iso(ms: int | None) -> str:
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
        d["filterable"] = bool(spec.get("filterable", False))
        if spec.get("regex"):
            d["regex"] = True
        out[k] = d
    return out


# ------------------------------------------------------------------ errors on the wire
CLIENT_CLOSED = 499  # metrics status of a request whose client disconnected (nginx's convention)
NO_RETRY = frozenset(range(400, 500)) - {408, 409, 429}  # the turbopuffer client need not retry these


def error_response(e: PufferError) -> Response:
    """``{"status":"error","error":...}`` with the error's status; ``x-should-retry: false`` when a
    retry cannot help (the class says ``retryable = False``, or a 4xx other than 408/409/429), so the
    official client does not send the request 4 more times; 429 carries ``retry-after``."""
    msg = e.message + (f" (hint: {e.hint})" if e.hint else "")
    return error_json(msg, e.status, retryable=e.retryable)


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


def unexpected_error(request: Request, e: BaseException) -> Response:
    """The last resort: a store/network failure is a 503 (logged, with its traceback: store.py
    should have mapped it), anything else a 500 (a bug, logged with its traceback)."""
    if is_store_failure(e):
        log.error("object store failure on %s %s: %s: %s", request.method, request.url.path, type(e).__name__, e)
        log.debug("traceback of the store failure", exc_info=e)
        return error_json(f"object store unavailable: {type(e).__name__}: {e}", 503)
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
    return error_json(f"internal error: {type(e).__name__}: {e}", 500)


# ------------------------------------------------------------------ the app
class Server:
    def __init__(self, cfg: ServeConfig, db: DB | None = None):
        self.cfg = cfg
        self.db = db or connect(
            cfg.store, s3_endpoint=cfg.s3_endpoint, single_writer=cfg.single_writer, wal_policy=cfg.wal_policy
        )
        self.metrics = Metrics()
        self.gc = GroupCommitter(
            self.db.namespace,
            window_s=cfg.commit_window_ms / 1000,
            copy_source=self.copy_source,
            on_commit=self.metrics.on_commit,
            filter_budget_s=cfg.query_budget_s,
        )
        self.hot: OrderedDict[str, None] = OrderedDict()
        self.hot_lock = threading.Lock()
        self._stop = threading.Event()
        self._indexer: threading.Thread | None = None
        self.started = time.time()
        # queries are CPU-bound: running more at once than there are cores only adds GIL churn
        self.query_limiter = anyio.CapacityLimiter(cfg.query_threads or max(2, os.cpu_count() or 2))
        self.inflight_bytes = 0  # request body bytes reserved (only touched on the event loop)
        self.abandoned = 0  # query threads still running after their request was answered 408
        self.abandoned_lock = threading.Lock()

    # -- helpers
    def ns(self, name: str):
        n = self.db.namespace(name)  # validates the name (400)
        self.touch(name)
        return n

    def touch(self, name: str) -> None:
        """LRU of namespaces kept loaded in memory; evicted ones drop their in-process caches."""
        evict = []
        with self.hot_lock:
            self.hot[name] = None
            self.hot.move_to_end(name)
            while len(self.hot) > max(1, self.cfg.hot_namespaces):
                evict.append(self.hot.popitem(last=False)[0])
        for e in evict:
            self.forget(e)

    def forget(self, name: str) -> None:
        """Drop a namespace's in-process state: the replay cache, and whatever the engine / index
        reader keep for it if they expose ``forget(store, name)``."""
        import importlib

        nsmod.forget(self.db.store, name)
        for mod in ("puffer_cli.engine", "puffer_cli.index.reader"):
            try:
                fn = getattr(importlib.import_module(mod), "forget", None)
            except ImportError:
                continue
            if callable(fn):
                try:
                    fn(self.db.store, name)
                except Exception:  # noqa: BLE001 - eviction is best effort
                    log.exception("forget(%s) in %s failed", name, mod)

    def copy_source(self, src) -> tuple[dict, Any]:
        name = src.get("source_namespace") if isinstance(src, dict) else src
        if not isinstance(name, str):
            raise InvalidRequest('copy_from_namespace must be a namespace name or {"source_namespace": name}')
        if isinstance(src, dict) and set(src) - {"source_namespace", "source_api_key", "source_region"}:
            unknown = sorted(set(src) - {"source_namespace", "source_api_key", "source_region"})
            raise InvalidRequest(
                f"copy_from_namespace: unknown key(s) {', '.join(map(repr, unknown))}",
                hint="it takes source_namespace (and source_api_key / source_region)",
            )
        if isinstance(src, dict) and (src.get("source_api_key") or src.get("source_region")):
            raise InvalidRequest("copy_from_namespace: copying from another organisation or region is not supported")
        ns = self.db.namespace(name)
        ns.require()
        docs, head = ns.docs()
        return head.schema, docs

    async def run(self, fn: Callable, *args, limiter=None, **kw):
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kw), limiter=limiter)

    async def run_query(self, fn: Callable, *args, what: str = "query", **kw):
        """``fn`` in a worker thread (one of ``query_limiter``'s slots) under the query budget.

        A query first waits for a slot, at most twice ``budget`` (a slot is held for at most
        budget + grace, so a query at the head of the queue always gets one; then 429: the server is
        busy; retryable), and the budget counts from when it has one, so queries queued behind
        hostile ones are delayed by at most the budget, not failed.  The budget is a contextvar
        (:func:`limits.deadline`), which ``anyio.to_thread.run_sync`` copies into the thread, where
        the library calls :func:`limits.check_deadline` between stages and raises BudgetExceeded.
        If the thread is stuck inside one long call, the request is still answered 408 at
        budget + ``limits.QUERY_GRACE_S``: the thread is abandoned (it runs on until its call
        returns, its result is dropped) and its query slot is released, so stuck queries cannot
        starve the others; ``puffer_abandoned_query_threads`` counts the threads still running."""
        budget = self.cfg.query_budget_s
        if not budget:
            return await self.run(fn, *args, limiter=self.query_limiter, **kw)
        state = {"started": False, "done": False, "abandoned": False}
        lock = threading.Lock()

        def call():
            with lock:
                state["started"] = True
            try:
                return fn(*args, **kw)
            finally:
                with lock:
                    state["done"] = True
                    abandoned = state["abandoned"]
                if abandoned:
                    with self.abandoned_lock:
                        self.abandoned -= 1
                    log.warning("an abandoned %s finished %.1f s after its budget", what, time.monotonic() - t_end)

        try:
            with anyio.fail_after(2 * budget):
                await self.query_limiter.acquire()
        except TimeoutError:
            raise RateLimited(
                f"all {self.query_limiter.total_tokens:g} query slots stayed busy for {2 * budget:g} s",
                hint="retry later, or run puffer serve with more --query-threads",
            ) from None
        try:
            t_end = time.monotonic() + budget
            with limits.deadline(budget):
                with anyio.move_on_after(budget + limits.QUERY_GRACE_S) as scope:
                    return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
            if scope.cancelled_caught:
                with lock:
                    running = state["started"] and not state["done"]
                    state["abandoned"] = running
                if running:
                    with self.abandoned_lock:
                        self.abandoned += 1
                    log.warning("%s exceeded its %g s budget inside one call; its thread is abandoned", what, budget)
            raise BudgetExceeded(f"{what} exceeded its {budget:g} s time budget")
        finally:
            self.query_limiter.release()  # also for an abandoned thread: stuck queries cannot starve the rest

    # -- request plumbing
    def reserve(self, request: Request, n: int) -> None:
        """Count ``n`` more bytes of this request's body against the server-wide in-flight budget
        (released when the request is answered).  A request is always admitted when nothing else
        is in flight, so one body up to the body limit can always be sent."""
        if n <= 0:
            return
        cap = self.cfg.max_body_bytes_in_flight
        if cap and self.inflight_bytes and self.inflight_bytes + n > cap:
            raise RateLimited(
                f"server busy: {self.inflight_bytes:,} bytes of request bodies in flight, the limit is {cap:,}",
                hint="retry shortly, or send smaller requests",
            )
        self.inflight_bytes += n
        request.state.puffer_reserved = getattr(request.state, "puffer_reserved", 0) + n

    def release(self, request: Request) -> None:
        n = getattr(request.state, "puffer_reserved", 0)
        if n:
            self.inflight_bytes -= n
            request.state.puffer_reserved = 0

    async def body(self, request: Request) -> bytes | bytearray:
        """The request body, bounded in size, time (per chunk and in total) and in-flight bytes."""
        limit = self.cfg.max_body_bytes
        cl = request.headers.get("content-length")
        declared = 0
        if cl is not None:
            try:
                declared = int(cl)
            except ValueError:
                raise UnprocessableBody("invalid Content-Length header") from None
            if declared > limit:
                raise TooLarge(f"request body is {declared:,} bytes; the limit is {limit:,}")
        self.reserve(request, declared)
        buf = bytearray()
        stream = request.stream()
        try:
            await self._read(request, stream, buf, declared, limit)
        finally:
            await stream.aclose()
        return wire.decode_body(
            buf, request.headers.get("content-encoding"), limit=limit, on_grow=lambda k: self.reserve(request, k)
        )

    async def _read(self, request: Request, stream, buf: bytearray, declared: int, limit: int) -> None:
        n = 0
        chunk_to, total_to = self.cfg.body_chunk_timeout_s, self.cfg.body_timeout_s
        end = time.monotonic() + total_to if total_to else None
        while True:
            wait = chunk_to or None
            if end is not None:
                wait = min(wait or total_to, max(0.0, end - time.monotonic()))
            with anyio.move_on_after(wait if wait is not None else float("inf")) as scope:
                try:
                    c = await stream.__anext__()
                except StopAsyncIteration:
                    break
            if scope.cancelled_caught:
                total = end is not None and time.monotonic() >= end
                why = f"it must arrive within {total_to:g} s" if total else f"no data for {chunk_to:g} s"
                raise RequestTimeout(
                    f"request body not received in time ({n:,} bytes in; {why})",
                    hint="the connection is closed; send the body without pausing",
                )
            n += len(c)
            if n > limit:
                raise TooLarge(f"request body exceeds the {limit:,} byte limit")
            if n > declared:
                self.reserve(request, len(c) if n - len(c) >= declared else n - declared)
            buf += c

    async def json_body(self, request: Request, *, allow_empty: bool = False) -> tuple[dict, int]:
        raw = await self.body(request)
        return wire.parse_object(raw, allow_empty=allow_empty), len(raw)

    def check_auth(self, request: Request) -> None:
        key = self.cfg.api_key
        if not key:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("missing or invalid API key" if got else "missing Authorization: Bearer header")

    def view(self, route: str, fn: Callable[[Request], Awaitable[Any]], *, auth: bool = True):
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if auth:
                    self.check_auth(request)
                out = await fn(request)
                resp = out if isinstance(out, Response) else Response(response.dumps(out), 200, media_type=JSON)
            except PufferError as e:
                resp = error_response(e)
                if e.status >= 500:
                    log.error("%s %s: %s", request.method, request.url.path, e.message)
            except ClientDisconnect:
                # the client went away mid-body: nothing was done (a write is only submitted once its
                # whole body is in), nothing can be answered; 499 in the metrics, as nginx counts it
                log.info(
                    "%s %s: client disconnected before the request body was complete", request.method, request.url.path
                )
                resp = Response(b"", CLIENT_CLOSED)
            except Exception as e:  # noqa: BLE001 - a bug: answer 500 in the error shape, log the trace
                resp = unexpected_error(request, e)
            finally:
                self.release(request)
            self.finish(request, route, resp.status_code, t0)
            return resp

        return endpoint

    def finish(self, request: Request, route: str, status: int, t0: float) -> None:
        secs = time.perf_counter() - t0
        self.metrics.observe(request.method, route, status, secs)
        if log.isEnabledFor(logging.INFO):
            client = request.client.host if request.client else "-"
            log.info("%s %s %s %d %.1fms", client, request.method, request.url.path, status, secs * 1000)

    # ------------------------------------------------------------ views
    async def write(self, request: Request):
        t0 = time.perf_counter()
        name = request.path_params["ns"]
        ns = self.ns(name)
        body, size = await self.json_body(request)
        overload = request.query_params.get("stainless_overload")
        if overload == "branchFrom" or "branch_from_namespace" in body:
            raise InvalidRequest("branch_from_namespace is not supported; use copy_from_namespace")
        if "source_namespace" in body and "copy_from_namespace" not in body:  # client.copy_from()
            body = {"copy_from_namespace": body}
        res = await self.gc.submit(ns.name, body, size)
        out = dict(res)
        out.setdefault("status", "OK")
        out["message"] = f"{out.get('rows_affected', 0)} rows affected"
        out["billing"] = {"billable_logical_bytes_written": size}
        out["performance"] = {"server_total_ms": int((time.perf_counter() - t0) * 1000)}
        return out

    async def query(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        body, _ = await self.json_body(request)
        multi = (
            "queries" in body
            or request.query_params.get("stainless_overload") == "multiQuery"
            or request.url.path.endswith("/multi-query")
        )
        eng = _engine()
        res = await self.run_query(
            eng.run_multi if multi else eng.run_query, ns, body, what="multi-query" if multi else "query"
        )
        return self.shape(ns, res, body)

    def shape(self, ns, res: dict, body: dict) -> dict:
        """The engine's response body in its wire form (f32 vectors and ``$dist``), as the CLI prints it."""
        return response.to_wire(res, response.vector_attrs(ns.head(refresh=False).schema))

    async def delete(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        await self.gc.wait_idle(timeout=30, ns=ns.name)
        await self.run(ns.delete_all)
        self.forget(ns.name)
        return {"status": "OK"}

    def _metadata(self, ns) -> dict:
        head = ns.require()
        meta, _ = ns.read_meta()
        idx = (meta or {}).get("index") or {}
        indexed = _indexed_seq(meta)
        keys = ns.wal_keys(indexed) if indexed < head.seq else []
        up, deleted = 0, 0
        for e in itertools.islice(ns.entries(indexed), 64):  # approximate beyond 64 unindexed entries
            for op in e.ops:
                if op.kind == "upsert":
                    up += op.table.height
                elif op.kind == "delete":
                    deleted += op.table.height
        seen = min(64, len(keys))
        if seen < len(keys):
            up, deleted = up * len(keys) // seen, deleted * len(keys) // seen
        if isinstance(idx.get("rows"), int):  # indexed: no replay needed
            rows = max(0, idx["rows"] + up - deleted)
            nbytes = rows * _row_bytes(head.schema)
        else:
            docs, _ = ns.docs()
            rows, nbytes = docs.height, int(docs.estimated_size())
        if not keys:
            index = {"status": "up-to-date"}
        else:
            index = {
                "status": "updating",
                "unindexed_bytes": sum(self.db.store.size(k) for _s, k in keys),
                "unindexed_rows": up + deleted,
            }
        return {
            "approx_logical_bytes": nbytes,
            "approx_row_count": rows,
            "created_at": _iso(head.created_at),
            "updated_at": _iso(head.updated_at),
            "encryption": {"mode": "default"},
            "index": index,
            "schema": schema_out(head.schema),
            "distance_metric": head.metric,
            "last_seq": head.seq,
        }

    async def metadata(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        return await self.run(self._metadata, ns)

    async def schema_get(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        head = await self.run(ns.require)
        return schema_out(head.schema)

    async def schema_post(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        body, size = await self.json_body(request)
        # the client sends the schema itself; {"schema": {...}} is accepted too (unless "schema" is
        # an attribute whose spec is that object)
        sch = body
        if set(body) == {"schema"} and isinstance(body["schema"], dict) and "type" not in body["schema"]:
            sch = body["schema"]
        if not sch:
            raise UnprocessableBody("schema update body must be an object {attribute: type or spec}")
        await self.run(ns.require)
        await self.gc.submit(ns.name, {"schema": sch}, size)
        return schema_out(ns.head().schema)

    async def namespaces(self, request: Request):
        q = request.query_params
        ps = q.get("page_size")
        try:
            page_size = int(ps) if ps not in (None, "") else 1000
        except ValueError:
            raise InvalidRequest(f"page_size must be an integer, got {ps!r}") from None
        names, nxt = await self.run(self.db.namespaces, q.get("prefix") or None, q.get("cursor") or None, page_size)
        out: dict[str, Any] = {"namespaces": [{"id": n} for n in names]}
        if nxt:
            out["next_cursor"] = nxt
        return out

    async def warm(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        await self.run(ns.require)
        fn = _index_hook("reader:warm")

        def go():
            try:
                if fn is not None:
                    fn(ns)
                else:
                    ns.docs()
            except Exception:  # noqa: BLE001 - best effort
                log.exception("cache warm of %s failed", ns.name)

        threading.Thread(target=go, name=f"warm-{ns.name}", daemon=True).start()
        return {"status": "ACCEPTED", "message": f"warming namespace {ns.name!r}"}

    async def recall(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        body, _ = await self.json_body(request, allow_empty=True)
        fn = _index_hook("recall:recall")
        if fn is None:
            raise PufferError("recall evaluation is not available in this build")
        unknown = set(body) - {"num", "top_k", "filters", "include_ground_truth", "rank_by"}
        if unknown:
            raise InvalidRequest(f"unknown recall parameter(s): {', '.join(sorted(unknown))}")
        if body.get("rank_by") is not None:
            raise InvalidRequest(
                "recall with a custom rank_by is not supported; it samples query vectors from the namespace"
            )
        kw: dict[str, Any] = {}
        for k in ("num", "top_k"):
            if body.get(k) is not None:
                if isinstance(body[k], bool) or not isinstance(body[k], int):
                    raise InvalidRequest(f"{k} must be an integer")
                kw[k] = body[k]
        if body.get("filters") is not None:
            kw["filters"] = body["filters"]
        await self.run(ns.require)
        return await self.run_query(fn, ns, what="recall evaluation", **kw)

    async def health(self, request: Request):
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1)}

    def _lag(self) -> dict[str, int]:
        out = {}
        with self.hot_lock:
            names = list(self.hot)
        for name in names:
            with contextlib.suppress(Exception):
                ns = self.db.namespace(name)
                h = ns.head(refresh=False)
                if h.seq:
                    out[name] = max(0, h.seq - _indexed_seq(ns.read_meta()[0]))
        return out

    async def metrics_view(self, request: Request):
        lag = await self.run(self._lag)
        return Response(
            self.metrics.render(lag, len(self.hot), self.inflight_bytes, self.abandoned),
            200,
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    # ------------------------------------------------------------ indexer loop
    def index_loop(self, interval: float) -> None:
        fn = _index_hook("builder:index_namespace")
        if fn is None:
            log.warning("--index-interval given but no indexer is available; not indexing")
            return
        while not self._stop.wait(interval):
            try:
                cursor = None
                while True:
                    names, cursor = self.db.namespaces(cursor=cursor)
                    for n in names:
                        if self._stop.is_set():
                            return
                        ns = self.db.namespace(n)
                        if ns.head().seq > _indexed_seq(ns.read_meta()[0]):
                            fn(ns)
                    if not cursor:
                        break
            except Exception:  # noqa: BLE001 - keep the loop alive
                log.exception("index loop iteration failed")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(8, self.cfg.threads)
        if self.cfg.index_interval:
            self._indexer = threading.Thread(
                target=self.index_loop, args=(self.cfg.index_interval,), name="puffer-indexer", daemon=True
            )
            self._indexer.start()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests; flush any queued write
            await self.gc.wait_idle(timeout=30)
            self._stop.set()
            if self._indexer is not None:
                await self.run(self._indexer.join, 30)

    # ------------------------------------------------------------ app
    def app(self) -> Starlette:
        v = self.view
        routes = [
            Route("/v2/namespaces/{ns}", v("write", self.write), methods=["POST"]),
            Route("/v2/namespaces/{ns}", v("delete", self.delete), methods=["DELETE"]),
            Route("/v2/namespaces/{ns}/query", v("query", self.query), methods=["POST"]),
            Route("/v2/namespaces/{ns}/multi-query", v("query", self.query), methods=["POST"]),
            Route("/v2/namespaces/{ns}/metadata", v("metadata", self.metadata), methods=["GET"]),
            Route("/v1/namespaces/{ns}/metadata", v("metadata", self.metadata), methods=["GET"]),
            Route("/v1/namespaces/{ns}/schema", v("schema", self.schema_get), methods=["GET"]),
            Route("/v1/namespaces/{ns}/schema", v("schema_update", self.schema_post), methods=["POST"]),
            Route("/v1/namespaces", v("namespaces", self.namespaces), methods=["GET"]),
            Route("/v1/namespaces/{ns}/hint_cache_warm", v("hint_cache_warm", self.warm), methods=["GET"]),
            Route("/v1/namespaces/{ns}/_debug/recall", v("recall", self.recall), methods=["POST"]),
            Route("/health", v("health", self.health, auth=False), methods=["GET"]),
            Route("/metrics", v("metrics", self.metrics_view), methods=["GET"]),
        ]

        async def http_error(request: Request, exc: HTTPException) -> Response:
            t0 = time.perf_counter()
            msg = {
                404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"method {request.method} not allowed on {request.url.path}",
            }.get(exc.status_code, exc.detail)
            self.finish(request, "unmatched", exc.status_code, t0)
            resp = error_json(str(msg), exc.status_code)
            resp.headers.update(exc.headers or {})  # e.g. Allow on a 405
            return resp

        async def server_error(request: Request, exc: Exception) -> Response:
            if isinstance(exc, PufferError):
                return error_response(exc)
            return unexpected_error(request, exc)

        app = Starlette(
            routes=routes,
            lifespan=self.lifespan,
            exception_handlers={HTTPException: http_error, Exception: server_error},
        )
        app.state.server = self
        return app


def create_app(cfg: ServeConfig | None = None, db: DB | None = None) -> Starlette:
    return Server(cfg or ServeConfig(), db).app()


ENV_CONFIG = "PUFFER_SERVE_CONFIG"


def app_from_env() -> Starlette:
    """uvicorn factory for ``--workers N``: the config travels in $PUFFER_SERVE_CONFIG."""
    import json

    setup_logging(os.environ.get(ENV_CONFIG + "_LOG_LEVEL", "info"))
    return create_app(ServeConfig(**json.loads(os.environ.get(ENV_CONFIG, "{}"))))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(getattr(logging, level.upper(), logging.INFO))


def config_json(cfg: ServeConfig) -> str:
    import json

    return json.dumps(asdict(cfg))


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = listen, "8080"
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise InvalidRequest(
            f"--listen {listen!r}: port must be a number 0-65535", hint="e.g. --listen 0.0.0.0:8080"
        ) from None
    return host, p


# ------------------------------------------------------------------ slow clients (uvicorn protocol)
def _guard_settings(app: Any) -> tuple[float | None, int]:
    """(header timeout, header byte cap) of the puffer Server behind a (possibly wrapped) app."""
    for _ in range(8):
        srv = getattr(getattr(app, "state", None), "server", None)
        if isinstance(srv, Server):
            return srv.cfg.header_timeout_s or None, limits.MAX_HEADER_BYTES
        app = getattr(app, "app", None)
        if app is None:
            break
    return limits.HEADER_TIMEOUT_S, limits.MAX_HEADER_BYTES


def _raw_error(status: int, reason: str, msg: str) -> bytes:
    body = response.error_body(msg)
    retry = "x-should-retry: false\r\n" if status in NO_RETRY else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{retry}connection: close\r\n\r\n"
    ).encode() + body


class _SlowClientGuard:
    """Mixin for uvicorn's HTTP/1.1 protocols (httptools, h11): a request line + headers must
    arrive within ``header_timeout_s`` of the connection opening or of the first byte of the
    next request, and be at most ``limits.MAX_HEADER_BYTES``; otherwise the server answers 408 /
    431 in the JSON error shape and closes the connection.  (uvicorn itself has only a keep-alive
    timeout, which every received byte resets: a client trickling a header forever was never closed.)
    Idle keep-alive connections are still closed by uvicorn's ``timeout_keep_alive``."""

    _hdr_timer: asyncio.TimerHandle | None = None
    _hdr_bytes = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._hdr_timeout, self._hdr_max = _guard_settings(self.app)  # type: ignore[attr-defined]
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _awaiting_headers(self) -> bool:
        c = self.cycle  # type: ignore[attr-defined]
        return c is None or c.response_complete

    def _arm_header_timer(self) -> None:
        if self._hdr_timer is None and self._hdr_timeout:
            self._hdr_bytes = 0
            loop = self.loop  # type: ignore[attr-defined]
            self._hdr_timer = loop.call_later(self._hdr_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._hdr_timer is not None:
            self._hdr_timer.cancel()
            self._hdr_timer = None

    def _refuse(self, status: int, reason: str, msg: str) -> None:
        t = self.transport  # type: ignore[attr-defined]
        if not t.is_closing():
            log.info("closing connection from %s: %s", (self.client or ("-",))[0], msg)  # type: ignore[attr-defined]
            t.write(_raw_error(status, reason, msg))
            t.close()

    def _header_timeout(self) -> None:
        self._hdr_timer = None
        if not self._awaiting_headers():
            return
        if self._hdr_bytes:  # part of a request came: tell the client why it is cut off
            self._refuse(408, "Request Timeout", f"request headers not received within {self._hdr_timeout:g} s")
        elif not self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]  # never sent a byte: close quietly

    def data_received(self, data: bytes) -> None:
        waiting = self._awaiting_headers()
        if waiting:
            self._arm_header_timer()  # from the first byte of the next request on a kept-alive connection
            self._hdr_bytes += len(data)
        before = self.cycle  # type: ignore[attr-defined]
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # type: ignore[attr-defined]  # a request's headers are complete
            self._disarm_header_timer()
        elif waiting and self._hdr_bytes > self._hdr_max:
            self._disarm_header_timer()
            self._refuse(
                431, "Request Header Fields Too Large", f"request line and headers exceed {self._hdr_max:,} bytes"
            )

    def send_400_response(self, msg: str) -> None:  # malformed HTTP: the JSON error shape too
        self._refuse(400, "Bad Request", f"invalid HTTP request: {msg}")


from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402


class GuardedH11Protocol(_SlowClientGuard, H11Protocol):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
except ImportError:  # pragma: no cover - httptools is optional for uvicorn
    GuardedProtocol: type = GuardedH11Protocol
else:

    class GuardedHttpToolsProtocol(_SlowClientGuard, HttpToolsProtocol):
        pass

    GuardedProtocol = GuardedHttpToolsProtocol


def uvicorn_kwargs(log_level: str = "info") -> dict:
    """The uvicorn options ``serve`` runs with (tests start their servers with the same)."""
    return dict(
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=60,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        http=GuardedProtocol,
    )


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so a port in use or a bad host is one clear error."""
    listen = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidRequest(
            f"--listen {listen}: cannot resolve host {host!r} ({e})",
            hint="use an IP address such as 127.0.0.1 or 0.0.0.0, or a resolvable host name",
        ) from e
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise InvalidRequest(f"--listen {listen}: address already in use", hint="pick another --listen port") from e
        if e.errno == errno.EACCES:
            raise InvalidRequest(
                f"--listen {listen}: permission denied",
                hint="ports below 1024 need privileges; pick another --listen port",
            ) from e
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidRequest(
                f"--listen {listen}: {host!r} is not an address of this machine",
                hint="use 127.0.0.1, 0.0.0.0 or one of this machine's addresses",
            ) from e
        raise InvalidRequest(
            f"--listen {listen}: cannot listen there ({e.strerror or e})", hint="pick another --listen address or port"
        ) from e
    sock.set_inheritable(True)  # --workers: the worker processes inherit it
    return sock


def serve(cfg: ServeConfig, listen: str = "127.0.0.1:8080", workers: int = 1, log_level: str = "info") -> None:
    """Run uvicorn until SIGINT/SIGTERM; in-flight requests (and queued writes) finish first.

    The socket is bound before anything starts: a port in use or an unresolvable host raises
    InvalidRequest (the CLI prints one ``Error:`` line, exit 1)."""
    import uvicorn

    host, port = parse_listen(listen)
    sock = bind(host, port)
    try:
        _serve(cfg, sock, workers, log_level, uvicorn)
    finally:
        sock.close()


def _serve(cfg: ServeConfig, sock: socket.socket, workers: int, log_level: str, uvicorn) -> None:
    setup_logging(log_level)
    kw = uvicorn_kwargs(log_level)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        os.environ[ENV_CONFIG] = config_json(cfg)
        os.environ[ENV_CONFIG + "_LOG_LEVEL"] = log_level
        config = uvicorn.Config("puffer_cli.server:app_from_env", factory=True, workers=workers, **kw)
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[sock]).run()
        return
    app = create_app(cfg)
    config = uvicorn.Config(app, **kw)
    server = uvicorn.Server(config)

    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            for s in server.servers:
                for sk in s.sockets:
                    h, p = sk.getsockname()[:2]
                    log.info("puffer serve listening on http://%s:%d (store %s)", h, p, app.state.server.db.store.url)
                    print(f"listening on http://{h}:{p}", flush=True)
        await task

    # uvicorn re-raises the signal it shut down on; after a graceful SIGTERM shutdown exit 0 instead
    import signal

    prev = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, prev)
    log.info("puffer serve stopped")
