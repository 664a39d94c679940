"""`puffer serve`: the turbopuffer-compatible HTTP API (starlette).

Every view is a thin wrapper over a library function: parse the request
(:mod:`puffer_cli.server.wire`), call the library in a worker thread, serialise the
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
    GET    /console                            the web console, HTML (server/console.py)
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from puffer_cli import caches
from puffer_cli.db import DB, connect
from puffer_cli.errors import InvalidRequest, PufferError, UnprocessableBody, show
from puffer_cli.index import builder
from puffer_cli.index import warm as warm_mod
from puffer_cli.jobs import branch
from puffer_cli.jobs import recall as recall_eval
from puffer_cli.schema import shape
from puffer_cli.search import engine, response
from puffer_cli.server import console
from puffer_cli.server.admission import Admission
from puffer_cli.server.http import (
    CLIENT_CLOSED,
    JSON,
    ServeConfig,
    error_json,
    error_response,
    indexed_seq,
    iso_ms,
    row_bytes,
    schema_out,
    unexpected_error,
)
from puffer_cli.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from puffer_cli.server.metrics import Metrics
from puffer_cli.server.requests import RequestPlumbing
from puffer_cli.wal import operations
from puffer_cli.wal.groupcommit import GroupCommitter

log = logging.getLogger("puffer.serve")


# ------------------------------------------------------------------ the app
def write_answer(res: dict, size: int, t0: float) -> dict:
    """A write's response body: the fold's counts plus status, message, billing, timing."""
    out = dict(res)
    out.setdefault("status", "OK")
    out["message"] = f"{out.get('rows_affected', 0)} rows affected"
    out["billing"] = {"billable_logical_bytes_written": size}
    out["performance"] = {"server_total_ms": int((time.perf_counter() - t0) * 1000)}
    return out


def set_read_only(name: str, ro: bool, cur: dict | None) -> dict | None:
    """meta.json with ``read_only`` set (kept only while true); None: nothing to change."""
    if bool((cur or {}).get("read_only")) == ro:
        return None
    cur = cur or {"format": 1, "namespace": name, "index": None}
    if ro:
        cur["read_only"] = True
    else:
        cur.pop("read_only", None)
    return cur


class Server(RequestPlumbing):
    def __init__(self, cfg: ServeConfig, db: DB | None = None):
        self.cfg = cfg
        self.db = db or connect(
            cfg.store, s3_endpoint=cfg.s3_endpoint, single_writer=cfg.single_writer, wal_policy=cfg.wal_policy
        )
        self.metrics = Metrics(cfg.metrics_dir)
        self.admission = Admission(cfg.backpressure_bytes)  # read_only and backpressure
        self.gc = GroupCommitter(
            self.db.open_namespace,
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
        # where the store is: never shown in an HTTP error (a local path, or the store URL)
        self.redact = tuple({self.db.store.url, str(getattr(self.db.store, "root", "") or "")} - {""})

    # -- helpers
    def ns(self, name: str):
        n = self.db.open_namespace(name)  # validates the name (400)
        self.touch(name)
        return n

    def touch(self, name: str) -> None:
        """LRU of namespaces kept loaded in memory; evicted ones drop their in-process caches."""
        evict = []
        with self.hot_lock:
            new = name not in self.hot
            self.hot[name] = None
            self.hot.move_to_end(name)
            while len(self.hot) > max(1, self.cfg.hot_namespaces):
                evict.append(self.hot.popitem(last=False)[0])
            if new:  # the set changed (rare: not on every request)
                self.metrics.hot_changed(list(self.hot))
        for e in evict:
            self.forget(e)

    def forget(self, name: str) -> None:
        """Drop a namespace's in-process state: its entries in every registered cache (the
        replay cache, the index reader's generations, tails and manifests: caches.forget)."""
        try:
            caches.forget(self.db.store, name)
        except Exception:  # noqa: BLE001 - eviction is best effort
            log.exception("forget(%s) failed", name)

    def copy_source_name(self, src) -> str:
        """The source of a ``copy_from_namespace`` / ``start_copy_from`` body, its shape checked."""
        name = src.get("source_namespace") if isinstance(src, dict) else src
        if not isinstance(name, str):
            raise InvalidRequest('copy_from_namespace must be a namespace name or {"source_namespace": name}')
        if isinstance(src, dict) and src.get("dest_encryption") is not None:
            raise InvalidRequest("copy_from_namespace: dest_encryption (customer-managed keys, CMEK) is not supported")
        keys = {"source_namespace", "source_api_key", "source_region", "dest_encryption"}
        if isinstance(src, dict) and set(src) - keys:
            unknown = sorted(set(src) - keys)
            raise InvalidRequest(
                f"copy_from_namespace: unknown key(s) {', '.join(map(repr, unknown))}",
                hint="it takes source_namespace (and source_api_key / source_region)",
            )
        if isinstance(src, dict) and (src.get("source_api_key") or src.get("source_region")):
            raise InvalidRequest("copy_from_namespace: copying from another organisation or region is not supported")
        return name

    def copy_source(self, src) -> tuple[dict, Any, str | None]:
        ns = self.db.open_namespace(self.copy_source_name(src))
        ns.require()
        docs, head = ns.docs()
        return head.schema, docs, head.metric  # the copy keeps the source's distance metric

    def view(self, route: str, fn: Callable[[Request], Awaitable[Any]], *, auth: bool = True):
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if auth:
                    self.check_auth(request)
                out = await fn(request)
                resp = out if isinstance(out, Response) else Response(response.dumps(out), 200, media_type=JSON)
            except PufferError as e:
                resp = error_response(e, self.redact)
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
                resp = unexpected_error(request, e, self.redact)
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
            return await self.branch(ns, body, t0)
        if body.get("encryption") is not None:
            raise InvalidRequest(
                "encryption (customer-managed keys, CMEK) is not supported by puffer; "
                "omit it (the store's own encryption at rest applies)"
            )
        if "source_namespace" in body and "copy_from_namespace" not in body:  # client.copy_from()
            body = {"copy_from_namespace": body}
        await self.run(self.admission.check, ns, body)
        return write_answer(await self.gc.submit(ns.name, body, size), size, t0)

    async def branch(self, ns, body: dict, t0: float) -> dict:
        """``branch_from_namespace`` (client ``ns.branch_from``): a request of its own."""
        extra = sorted(set(body) - {"branch_from_namespace"})
        if extra or "branch_from_namespace" not in body:
            raise InvalidRequest(
                "branch_from_namespace cannot be combined with other write fields"
                + (f" ({', '.join(extra)})" if extra else ""),
                hint="branch first, then write to the branch",
            )
        src = branch.parse_source(body["branch_from_namespace"])
        out = await self.run(branch.branch_namespace, self.db.store, ns.name, src, single_writer=self.db.single_writer)
        out["message"] = f"branched {ns.name!r} from {src!r}"
        out["billing"] = {"billable_logical_bytes_written": 0}
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
        res = await self.run_query(
            engine.run_multi if multi else engine.run_query, ns, body, what="multi-query" if multi else "query"
        )
        return self.shape(ns, res, body)

    async def explain_query(self, request: Request):
        """turbopuffer's ``explain_query``: ``{"plan_text": ...}``. The plan is read off an actual
        run of the query by the engine (engine.run_query's ``performance``) and the namespace's
        index state, not a separate planner: which path answered (index or exhaustive), the rows in
        the namespace and the rows scored exactly, the unindexed WAL tail, object-store traffic."""
        ns = self.ns(request.path_params["ns"])
        body, _ = await self.json_body(request)
        if "queries" in body:
            raise InvalidRequest("explain_query takes one query, not queries")
        res = await self.run_query(engine.run_query, ns, body, what="query")
        return {"plan_text": await self.run(self._plan_text, ns, body, res)}

    def _plan_text(self, ns, body: dict, res: dict) -> str:
        head = ns.head(refresh=False)
        meta, _ = ns.read_meta()
        idx = (meta or {}).get("index") or {}
        indexed = indexed_seq(meta)
        perf = res.get("performance") or {}
        size = int(perf.get("approx_namespace_size") or 0)
        scanned = int(perf.get("exhaustive_search_count") or 0)
        rank = body.get("rank_by")
        ann = isinstance(rank, list) and len(rank) == 3 and rank[1] == "ANN"
        if not idx:
            path = "exhaustive (no index built; every row is scored exactly)"
        elif ann and scanned < size:
            path = "index (IVF approximate nearest neighbours) + exhaustive over the unindexed tail"
        elif ann:
            path = "index (every row scored exactly: the index is small or probes all clusters)"
        else:
            path = "index (segment scan, filters and order by attribute) + exhaustive over the unindexed tail"
        lines = [
            f"namespace: {ns.name}",
            "rank_by: "
            + (show(rank, 200, ascii=True, default=str) if rank is not None else "(none: filter/aggregate only)"),
            f"filters: {'yes' if body.get('filters') is not None else 'no'}",
            f"path: {path}",
            f"rows in namespace (approx): {size}",
            f"rows scored exactly: {scanned}",
            f"index covers seq: {indexed} of {head.seq} ({max(0, head.seq - indexed)} WAL entries unindexed)",
            f"rows returned: {len(res.get('rows') or [])}",
            f"cache: {perf.get('cache_temperature')} (hit ratio {perf.get('cache_hit_ratio')})",
            f"object store: {perf.get('object_store_requests')} requests, "
            f"{perf.get('object_store_round_trips')} round trips, {perf.get('object_store_bytes_read')} bytes read",
            f"query execution: {perf.get('query_execution_ms')} ms",
        ]
        return "\n".join(lines + engine.explain(ns, body))

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
        indexed = indexed_seq(meta)
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
            nbytes = rows * row_bytes(head.schema)
        else:
            docs, _ = ns.docs()
            rows, nbytes = docs.height, int(docs.estimated_size())
        index: dict[str, Any]
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
            "created_at": iso_ms(head.created_at),
            "updated_at": iso_ms(head.updated_at),
            "encryption": {"mode": "default"},
            "index": index,
            "schema": schema_out(head.schema),
            "distance_metric": head.metric,
            "last_seq": head.seq,
            **({"read_only": True} if (meta or {}).get("read_only") else {}),  # omitted when false
        }

    async def metadata(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        return await self.run(self._metadata, ns)

    async def metadata_patch(self, request: Request):
        """``PATCH /v1/namespaces/{ns}/metadata`` (the client's ``update_metadata``). ``read_only``
        is kept in meta.json (while true, document and schema writes are 403). Pinning
        (provisioned read replicas that keep a namespace in memory) does not exist here: turning
        it on is a 400; null/false states what is already true."""
        ns = self.ns(request.path_params["ns"])
        body, _ = await self.json_body(request)  # an empty body is 422 (docs/http.md, "Errors")
        unknown = set(body) - {"pinning", "read_only"}
        if unknown:
            raise InvalidRequest(f"unknown metadata parameter(s): {', '.join(sorted(unknown))}")
        shape.check_fields(body, shape.METADATA_FIELDS)
        pin = body.get("pinning")
        if pin is not None and pin is not False:
            raise InvalidRequest(
                "pinning is not supported by puffer: there are no provisioned read replicas; "
                "queries are served from the local cache (see hint_cache_warm)"
            )
        ro = body.get("read_only")
        if ro is not None:
            await self.run(ns.require)
            await self.run(ns.update_meta, functools.partial(set_read_only, ns.name, ro))
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
        await self.run(self.admission.check, ns, None, backpressure=False)
        await self.gc.submit(ns.name, {"schema": sch}, size)
        return schema_out(ns.head().schema)

    async def namespaces(self, request: Request):
        q = request.query_params
        ps = q.get("page_size")
        try:
            page_size = int(ps) if ps not in (None, "") else 1000
        except ValueError:
            raise InvalidRequest(f"page_size must be an integer, got {ps!r}") from None
        names, nxt = await self.run(
            self.db.namespaces_page, q.get("prefix") or None, q.get("cursor") or None, page_size
        )
        out: dict[str, Any] = {"namespaces": [{"id": n} for n in names]}
        if nxt:
            out["next_cursor"] = nxt
        return out

    async def warm(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        await self.run(ns.require)

        def go():
            try:
                warm_mod.warm(ns)
            except Exception:  # noqa: BLE001 - best effort
                log.exception("cache warm of %s failed", ns.name)

        threading.Thread(target=go, name=f"warm-{ns.name}", daemon=True).start()
        return {"status": "ACCEPTED", "message": f"warming namespace {ns.name!r}"}

    async def recall(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        body, _ = await self.json_body(request, allow_empty=True)
        unknown = set(body) - {"num", "top_k", "filters", "include_ground_truth", "rank_by"}
        if unknown:
            raise InvalidRequest(f"unknown recall parameter(s): {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = {}
        for k in ("num", "top_k"):
            if body.get(k) is not None:
                if isinstance(body[k], bool) or not isinstance(body[k], int):
                    raise InvalidRequest(f"{k} must be an integer")
                kw[k] = body[k]
        for k in ("filters", "rank_by", "include_ground_truth"):
            if body.get(k) is not None:
                kw[k] = body[k]
        await self.run(ns.require)
        out = await self.run_query(recall_eval.recall, ns, what="recall evaluation", **kw)
        return response.recall_wire(out)

    async def start_copy_from(self, request: Request):
        """``start_copy_from``: the copy runs now (one WAL entry, as ``copy_from_namespace``);
        its result is stored as an operation any process can poll (``operations.py``)."""
        t0 = time.perf_counter()
        ns = self.ns(request.path_params["ns"])
        body, size = await self.json_body(request)
        # the 3.x client sends {"copy_from_namespace": {"source_namespace": ...}}; a flat body is taken too
        src = body["copy_from_namespace"] if set(body) == {"copy_from_namespace"} else body
        self.copy_source_name(src)  # a malformed request is a 4xx now, not a failed operation
        await self.run(self.admission.check, ns, body)
        token, start = operations.new_token(), operations.now()
        try:
            res = await self.gc.submit(ns.name, {"copy_from_namespace": src}, size)
        except PufferError as e:
            if e.status >= 500:
                raise  # the store failed: nothing to record durably; the client retries
            op = operations.finished(start, error=e)
        else:
            op = operations.finished(start, result=write_answer(res, size, t0))
        await self.run(operations.record, self.db.store, ns.name, token, op)
        return {"token": token}

    async def poll_operation(self, request: Request):
        ns = self.ns(request.path_params["ns"])
        return await self.run(operations.load, self.db.store, ns.name, request.path_params["op"])

    async def health(self, request: Request):
        # pid: which worker process answered (under --workers N a connection stays with one)
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1), "pid": os.getpid()}

    def _lag(self) -> dict[str, int]:
        """WAL entries after the index, for the namespaces hot here or in another worker."""
        out = {}
        with self.hot_lock:
            names = set(self.hot)
        for name in sorted(names | self.metrics.hot_elsewhere()):
            with contextlib.suppress(Exception):
                ns = self.db.open_namespace(name)
                h = ns.head(refresh=False)
                if h.seq:
                    out[name] = max(0, h.seq - indexed_seq(ns.read_meta()[0]))
        return out

    async def metrics_view(self, request: Request):
        lag = await self.run(self._lag)
        text = await self.run(self.metrics.render, lag)
        return Response(text, 200, media_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------ indexer loop
    def index_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                cursor = None
                while True:
                    names, cursor = self.db.namespaces_page(cursor=cursor)
                    for n in names:
                        if self._stop.is_set():
                            return
                        ns = self.db.open_namespace(n)
                        if ns.head().seq > indexed_seq(ns.read_meta()[0]):
                            builder.index_namespace(ns)
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
            Route("/v2/namespaces/{ns}/explain_query", v("query", self.explain_query), methods=["POST"]),
            Route("/v2/namespaces/{ns}/metadata", v("metadata", self.metadata), methods=["GET"]),
            Route("/v1/namespaces/{ns}/metadata", v("metadata", self.metadata), methods=["GET"]),
            Route("/v1/namespaces/{ns}/metadata", v("metadata_update", self.metadata_patch), methods=["PATCH"]),
            Route("/v1/namespaces/{ns}/schema", v("schema", self.schema_get), methods=["GET"]),
            Route("/v1/namespaces/{ns}/schema", v("schema_update", self.schema_post), methods=["POST"]),
            Route("/v1/namespaces", v("namespaces", self.namespaces), methods=["GET"]),
            Route("/v1/namespaces/{ns}/hint_cache_warm", v("hint_cache_warm", self.warm), methods=["GET"]),
            Route("/v1/namespaces/{ns}/_debug/recall", v("recall", self.recall), methods=["POST"]),
            Route("/v2/namespaces/{ns}/async", v("start_copy_from", self.start_copy_from), methods=["POST"]),
            Route("/v1/namespaces/{ns}/operations/{op}", v("operation", self.poll_operation), methods=["GET"]),
            Route("/health", v("health", self.health, auth=False), methods=["GET"]),
            Route("/metrics", v("metrics", self.metrics_view), methods=["GET"]),
            *console.routes(self),  # /console: the web console (server/console.py, docs/console.md)
        ]

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)  # registered for HTTPException only
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
                return error_response(exc, self.redact)
            return unexpected_error(request, exc, self.redact)

        app = Starlette(
            routes=routes,
            # responses of at least GZIP_MIN_BYTES are gzip-compressed when the request sends
            # Accept-Encoding: gzip (the turbopuffer client's compression option)
            middleware=[Middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES)],
            lifespan=self.lifespan,
            exception_handlers={HTTPException: http_error, Exception: server_error},
        )
        app.state.server = self
        return app


GZIP_MIN_BYTES = 1024


def create_app(cfg: ServeConfig | None = None, db: DB | None = None) -> Starlette:
    return Server(cfg or ServeConfig(), db).app()
