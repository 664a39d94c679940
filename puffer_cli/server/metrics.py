"""The Prometheus metrics of ``puffer serve`` (prometheus_client), across ``--workers N``.

One worker: a plain in-process registry.  Several: prometheus_client's multiprocess mode.  The
parent creates a private directory (:func:`create_dir`) before it starts the workers and passes it
in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client reads it when it is imported, in each freshly
spawned worker) and in ``ServeConfig.metrics_dir``; every worker writes its counters and gauges to
its own memory-mapped files there, and the worker that answers ``GET /metrics`` merges all of them
(:class:`prometheus_client.multiprocess.MultiProcessCollector`).  So counters are sums over every
worker that ever ran (a restarted worker's counts stay), gauges say how they combine
(``multiprocess_mode``: ``livesum``/``livemax`` over the workers alive now).

``puffer_index_lag_entries`` is a fact about the store, not a process: the answering worker reads
it at scrape time for the namespaces hot in any live worker (each publishes its hot set in
``hot-{pid}.json`` in the directory when the set changes).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as mp
from prometheus_client.core import GaugeMetricFamily, Metric

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client itself, at import
DIR_PREFIX = "puffer-metrics-"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Request counts/latencies per route, group commits, and the process gauges; ``metrics_dir``
    set: the multiprocess mode (the values live in files there, shared by all workers)."""

    def __init__(self, metrics_dir: str | None = None):
        self.dir = metrics_dir
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "puffer_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "puffer_http_request_duration_seconds",
            "Request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commits = Counter("puffer_wal_commits", "WAL entries committed by group commit.", registry=r)
        self.committed = Counter(
            "puffer_wal_committed_requests", "Write requests carried by those commits.", registry=r
        )
        self.commit_seconds = Counter("puffer_wal_commit_seconds", "Time spent committing.", registry=r)
        self.hot = Gauge(
            "puffer_hot_namespaces",
            "Namespaces kept loaded in memory (the largest number in one worker).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.inflight = Gauge(
            "puffer_request_body_bytes_in_flight",
            "Bytes of request bodies being read or parsed (all workers).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.abandoned = Gauge(
            "puffer_abandoned_query_threads",
            "Queries answered 408 whose worker thread still runs (all workers).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.workers = Gauge("puffer_serve_workers", "Server processes alive.", multiprocess_mode="livesum", registry=r)
        self.workers.set(1)

    # -- recording
    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def on_commit(self, ns: str, n: int, seconds: float) -> None:
        self.commits.inc()
        self.committed.inc(n)
        self.commit_seconds.inc(seconds)

    def hot_changed(self, names: list[str]) -> None:
        """The set of hot namespaces of this process changed: the gauge, and (several workers) the
        file the answering worker reads to report the index lag of every worker's hot namespaces."""
        self.hot.set(len(names))
        if self.dir:
            path = os.path.join(self.dir, f"hot-{os.getpid()}.json")
            with contextlib.suppress(OSError):  # a scrape then reports this worker's lag a little late
                tmp = path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(names, f)
                os.replace(tmp, path)

    def hot_elsewhere(self) -> set[str]:
        """Namespaces hot in the other live workers (empty with one worker)."""
        out: set[str] = set()
        if not self.dir:
            return out
        for path in glob.glob(os.path.join(self.dir, "hot-*.json")):
            pid = _pid(path)
            if pid is None or pid == os.getpid() or not _alive(pid):
                continue
            with contextlib.suppress(OSError, ValueError), open(path) as f:
                out.update(n for n in json.load(f) if isinstance(n, str))
        return out

    # -- exposition
    def render(self, lag: dict[str, int]) -> str:
        """The Prometheus text: this process's registry, or every worker's files merged."""
        out = CollectorRegistry()
        if self.dir:
            self.forget_dead()
            source = CollectorRegistry()
            mp.MultiProcessCollector(source, self.dir)
        else:
            source = self.registry
        out.register(_Exposed(source, lag))
        return generate_latest(out).decode()

    def forget_dead(self) -> None:
        """Drop the live gauges (and hot set) of workers that died: uvicorn restarts a dead worker
        but tells nobody, so whoever scrapes does this bookkeeping (``mark_process_dead``)."""
        assert self.dir
        for path in glob.glob(os.path.join(self.dir, "gauge_live*_*.db")) + glob.glob(
            os.path.join(self.dir, "hot-*.json")
        ):
            pid = _pid(path)
            if pid is not None and not _alive(pid):
                mp.mark_process_dead(pid, self.dir)
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.dir, f"hot-{pid}.json"))


class _Exposed:
    """A collector: ``source``'s metrics without the ``_created`` series (puffer's text has never
    had them: they would double every counter line), plus the index lag read at scrape time."""

    def __init__(self, source: CollectorRegistry, lag: dict[str, int]):
        self.source, self.lag = source, lag

    def collect(self) -> Iterator[Metric]:
        for m in self.source.collect():
            m.samples = [s for s in m.samples if not s.name.endswith("_created")]
            yield m
        g = GaugeMetricFamily(
            "puffer_index_lag_entries", "WAL entries not yet indexed (hot namespaces).", labels=["namespace"]
        )
        for ns, n in sorted(self.lag.items()):
            g.add_metric([ns], n)
        yield g


def _pid(path: str) -> int | None:
    m = re.search(r"_(\d+)\.db$|hot-(\d+)\.json$", path)
    return int(m.group(1) or m.group(2)) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------ the parent's directory
def create_dir() -> str:
    """A fresh, empty multiprocess directory for this ``serve`` (the parent of the workers); the
    directories of earlier runs whose parent is gone (killed before it could remove its own) are
    removed first, so no stale counts survive into a new server."""
    tmp = tempfile.gettempdir()
    for d in glob.glob(os.path.join(tmp, DIR_PREFIX + "*")):
        m = re.match(re.escape(DIR_PREFIX) + r"(\d+)-", os.path.basename(d))
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=tmp)


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
