"""The one place the library reads the environment: ``from_env()`` -> :class:`Settings`.

Entry points (``connect()``, the CLI, ``puffer serve``) call it and pass the values on as
explicit parameters; no module below them reads ``os.environ``.  :data:`VARIABLES` lists
every variable the project reads (README "Environment" mirrors it; tests/test_config.py
checks both agree).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: name -> meaning (README "Environment" has the same rows, with who reads them)
VARIABLES: dict[str, str] = {
    "PUFFER_STORE": "store URL: path, s3://bucket/prefix, memory:// (default ./puffer-data)",
    "PUFFER_IVF_ROUTING": "auto (default: one routing per namespace past 2M rows), segment or shared",
    "PUFFER_S3_ENDPOINT": "S3 endpoint URL (MinIO, moto, SeaweedFS, ...)",
    "AWS_ENDPOINT_URL": "S3 endpoint when PUFFER_S3_ENDPOINT is unset",
    "PUFFER_SINGLE_WRITER": "1: this process is the namespace's only writer",
    "PUFFER_WAL_CORRUPT_POLICY": "on a corrupt WAL segment: fail (default) or skip it",
    "PUFFER_CACHE_MAX_GB": "size bound of the local index-file cache",
    "PUFFER_CACHE_DIR": 'local cache directory ("": no cache)',
    "PUFFER_DEBUG": "1: tracebacks instead of one-line errors",
    "PUFFER_LISTEN": "serve's HOST:PORT",
    "PUFFER_API_KEY": "serve's bearer token",
    "PUFFER_QUERY_BUDGET": "serve's per-query time budget",
    "PUFFER_BACKPRESSURE_BYTES": "serve refuses writes (429) over this many unindexed WAL bytes per namespace",
    "PUFFER_INDEX_GC_GRACE": "seconds before an unreferenced index generation is deleted",
    "PUFFER_INDEX_LEASE_TTL": "seconds the indexer's lease lasts",
    "PUFFER_INDEX_SEGMENT_ROWS": "rows per index segment at most (default 1,000,000; tuning and tests)",
    "PUFFER_INDEX_CRASH_AT": "test hook: crash the indexer at a named point (index/hooks.py)",
    "PUFFER_INDEX_PAUSE_AT": "test hook: pause the indexer at a named point (index/hooks.py)",
    "PUFFER_SERVE_CONFIG": "internal: serve hands its config to uvicorn's workers",
    "PUFFER_SERVE_CONFIG_LOG_LEVEL": "internal: serve hands its log level to uvicorn's workers",
    "PUFFER_BENCH_DATA": "benchmark data directory (benchmarks/)",
}

_FALSE = ("", "0", "false", "no", "off")


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _rows(v: str | None) -> int | None:
    """A row count: not an integer -> None (the default applies); below 1 -> 1."""
    try:
        return max(1, int(v)) if v not in (None, "") else None
    except ValueError:
        return None


def _routing(v: str | None) -> str:
    """``auto``, ``segment`` or ``shared``; unset or anything else (a typo) -> ``auto``, the default."""
    w = (v or "").strip().lower()
    return w if w in ("segment", "shared") else "auto"


def _bytes(v: str | None) -> int | None:
    """A byte count (an integer, or a float such as 2e9): not a number -> None; below 0 -> 0."""
    f = _float(v)
    return None if f is None or f != f else max(0, int(f))


@dataclass(frozen=True)
class Settings:
    """What the environment says; None: not set (the library's default applies)."""

    store: str | None = None
    s3_endpoint: str | None = None
    single_writer: bool = False
    wal_policy: str | None = None
    cache_dir: str | None = None  # "" = no persistent cache
    cache_max_gb: str | None = None  # parsed (and refused if bad) by cache.parse_max_gb
    debug: bool = False
    index_lease_ttl_s: float | None = None
    index_gc_grace_s: float | None = None
    wal_retention_s: float | None = None  # None: index/gc.py's default (7 days)
    index_segment_rows: int | None = None  # a tuning and test knob; below 1 -> 1
    ivf_routing: str = "auto"  # PUFFER_IVF_ROUTING: auto (the default) | segment (format 2) | shared (format 3)
    index_crash_at: str = ""  # test hooks (index/hooks.py)
    index_pause_at: str = ""
    serve_config: str | None = None  # serve's hand-off to its uvicorn workers (server/run.py)
    serve_log_level: str | None = None
    backpressure_bytes: int | None = None  # None: limits.BACKPRESSURE_BYTES; 0: off


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings in ``env`` (default ``os.environ``)."""
    e = os.environ if env is None else env
    return Settings(
        store=e.get("PUFFER_STORE") or None,
        s3_endpoint=e.get("PUFFER_S3_ENDPOINT") or e.get("AWS_ENDPOINT_URL") or None,
        single_writer=e.get("PUFFER_SINGLE_WRITER", "").strip().lower() not in _FALSE,
        wal_policy=e.get("PUFFER_WAL_CORRUPT_POLICY") or None,
        cache_dir=e.get("PUFFER_CACHE_DIR"),
        cache_max_gb=e.get("PUFFER_CACHE_MAX_GB") or None,
        debug=e.get("PUFFER_DEBUG", "").strip().lower() not in _FALSE,
        index_lease_ttl_s=_float(e.get("PUFFER_INDEX_LEASE_TTL")),
        index_gc_grace_s=_float(e.get("PUFFER_INDEX_GC_GRACE")),
        wal_retention_s=_float(e.get("PUFFER_WAL_RETENTION")),
        index_segment_rows=_rows(e.get("PUFFER_INDEX_SEGMENT_ROWS")),
        ivf_routing=_routing(e.get("PUFFER_IVF_ROUTING")),
        index_crash_at=e.get("PUFFER_INDEX_CRASH_AT", ""),
        index_pause_at=e.get("PUFFER_INDEX_PAUSE_AT", ""),
        serve_config=e.get("PUFFER_SERVE_CONFIG") or None,
        serve_log_level=e.get("PUFFER_SERVE_CONFIG_LOG_LEVEL") or None,
        backpressure_bytes=_bytes(e.get("PUFFER_BACKPRESSURE_BYTES")),
    )
