"""The request plumbing of the HTTP server (a mixin of server.Server): worker threads and
the query budget (``run_query``), request bodies bounded in size, time and in-flight bytes
(``body``), and the API key check.  docs/http.md "Limits: server" describes the limits."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import cast

import anyio
import anyio.to_thread
from starlette.requests import Request

from puffer_cli import limits
from puffer_cli.errors import BudgetExceeded, RateLimited, RequestTimeout, TooLarge, Unauthorized, UnprocessableBody
from puffer_cli.server import wire
from puffer_cli.server.http import ServeConfig
from puffer_cli.server.metrics import Metrics

log = logging.getLogger("puffer.serve")


class RequestPlumbing:
    """Needs ``cfg``, ``query_limiter``, ``inflight_bytes``, ``abandoned``, ``abandoned_lock``
    and ``metrics`` (set by ``Server.__init__``)."""

    cfg: ServeConfig
    metrics: Metrics
    query_limiter: anyio.CapacityLimiter
    inflight_bytes: int
    abandoned: int
    abandoned_lock: threading.Lock

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
                        self.metrics.abandoned.set(self.abandoned)
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
                        self.metrics.abandoned.set(self.abandoned)
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
        self.metrics.inflight.set(self.inflight_bytes)
        request.state.puffer_reserved = getattr(request.state, "puffer_reserved", 0) + n

    def release(self, request: Request) -> None:
        n = getattr(request.state, "puffer_reserved", 0)
        if n:
            self.inflight_bytes -= n
            self.metrics.inflight.set(self.inflight_bytes)
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
                wait = min(wait or total_to or 0.0, max(0.0, end - time.monotonic()))
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
        return wire.parse_object(cast(bytes, raw), allow_empty=allow_empty), len(raw)  # json reads bytearray too

    def check_auth(self, request: Request) -> None:
        key = self.cfg.api_key
        if not key:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("missing or invalid API key" if got else "missing Authorization: Bearer header")
