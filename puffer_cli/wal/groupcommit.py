"""Group commit: concurrent writes to one namespace become ONE WAL entry.

The first write to arrive for a namespace opens a short window (``window_s``,
default 2 ms); every write that arrives during the window, or while the previous
batch is being committed, joins the next batch.  A batch is committed with
:meth:`Namespace.write_batch` (one WAL entry, bodies planned in arrival order,
each against the state the previous ones leave, re-planned on a lost race), and
each request is answered only after that entry is durable in the store.  A body
that fails validation gets its own error; the others commit.  Batches of one
namespace are committed one at a time, in order.

A filter write (``delete_by_filter`` / ``patch_by_filter``) evaluates a filter over the
namespace, which is query work: it is committed in a batch of its own, planned under the
query budget (``limits.deadline(filter_budget_s)``; the library raises BudgetExceeded, 408,
for that body alone), so a hostile filter cannot fail the writes batched with it.

Runs on the server's asyncio loop; the blocking commit goes to a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from puffer_cli import limits
from puffer_cli.errors import PufferError

DEFAULT_WINDOW_S = 0.002
DEFAULT_MAX_BATCH = 512
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024
FILTER_WRITE_KEYS = ("delete_by_filter", "patch_by_filter")


def is_filter_write(body: dict) -> bool:
    return any(body.get(k) is not None for k in FILTER_WRITE_KEYS)


@dataclass
class _Pending:
    body: dict
    size: int
    fut: asyncio.Future


@dataclass
class _Queue:
    pending: list[_Pending] = field(default_factory=list)
    task: asyncio.Task | None = None


@dataclass
class Stats:
    requests: int = 0
    commits: int = 0  # write_batch calls (each at most one WAL entry)
    failed_batches: int = 0  # write_batch raised (every request in it got the error)
    commit_seconds: float = 0.0
    max_batch: int = 0


class GroupCommitter:
    """``await gc.submit(ns_name, body)`` -> the write's result dict (or raises its PufferError).

    ``open_ns(name) -> Namespace``; ``copy_source`` is passed to ``write_batch``.
    """

    def __init__(
        self,
        open_ns: Callable[[str], Any],
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        copy_source: Callable | None = None,
        on_commit: Callable[[str, int, float], None] | None = None,
        filter_budget_s: float | None = limits.QUERY_BUDGET_S,
    ):
        self.open_ns = open_ns
        self.window_s = max(0.0, window_s)
        self.max_batch = max(1, max_batch)
        self.max_batch_bytes = max_batch_bytes
        self.copy_source = copy_source
        self.on_commit = on_commit
        self.filter_budget_s = filter_budget_s or None
        self.stats = Stats()
        self._queues: dict[str, _Queue] = {}

    async def submit(self, ns: str, body: dict, size: int = 0) -> dict:
        loop = asyncio.get_running_loop()
        q = self._queues.setdefault(ns, _Queue())
        p = _Pending(body, size, loop.create_future())
        q.pending.append(p)
        self.stats.requests += 1
        if q.task is None:
            q.task = loop.create_task(self._drain(ns, q))
        # shield: a client that goes away must not cancel a commit others wait on
        res = await asyncio.shield(p.fut)
        if isinstance(res, BaseException):
            raise res
        return res

    def busy(self, ns: str | None = None) -> bool:
        qs = self._queues.values() if ns is None else [q for q in [self._queues.get(ns)] if q is not None]
        return any(q.task is not None for q in qs)

    async def wait_idle(self, timeout: float | None = None, ns: str | None = None) -> None:
        """Wait until queued writes (of ``ns``, or all) are committed (shutdown, namespace delete)."""
        t0 = time.monotonic()
        while self.busy(ns):
            if timeout is not None and time.monotonic() - t0 > timeout:
                return
            await asyncio.sleep(0.005)

    async def _drain(self, ns: str, q: _Queue) -> None:
        try:
            if self.window_s:
                await asyncio.sleep(self.window_s)
            while q.pending:
                n, nbytes = 0, 0
                for p in q.pending:
                    if n and (n >= self.max_batch or nbytes + p.size > self.max_batch_bytes or is_filter_write(p.body)):
                        break
                    n += 1
                    nbytes += p.size
                    if is_filter_write(p.body):
                        break  # a filter write goes alone (it runs under the query budget)
                batch, q.pending = q.pending[:n], q.pending[n:]
                await self._commit(ns, batch)
        finally:
            q.task = None
            if q.pending:  # raced with a late arrival after the loop test
                q.task = asyncio.get_running_loop().create_task(self._drain(ns, q))
            elif self._queues.get(ns) is q:
                del self._queues[ns]

    async def _commit(self, ns: str, batch: list[_Pending]) -> None:
        bodies = [p.body for p in batch]
        t0 = time.perf_counter()
        budget = self.filter_budget_s if any(is_filter_write(b) for b in bodies) else None
        try:
            with limits.deadline(budget):  # a contextvar: run_sync copies it into the thread
                results = await anyio.to_thread.run_sync(self._write_batch, ns, bodies)
        except PufferError as e:
            results = [e] * len(batch)
            self.stats.failed_batches += 1
        except Exception as e:  # noqa: BLE001 - every waiter must be answered
            results = [e] * len(batch)
            self.stats.failed_batches += 1
        dt = time.perf_counter() - t0
        self.stats.commits += 1
        self.stats.commit_seconds += dt
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        if self.on_commit:
            self.on_commit(ns, len(batch), dt)
        for p, r in zip(batch, results):
            if not p.fut.done():
                p.fut.set_result(r)

    def _write_batch(self, ns: str, bodies: list[dict]) -> list:
        return self.open_ns(ns).write_batch(bodies, copy_source=self.copy_source)
