"""Every limit puffer enforces, in one place (documented in docs/http.md, "Limits").

A limit is checked *before* the work it bounds starts, so a request that breaks
one is refused with a clear 4xx and changes nothing.  Work that cannot be
bounded up front (a query over a large namespace) runs under a time budget:
:func:`deadline` opens one for the current thread/task and :func:`check_deadline`,
called between stages of the work, raises :class:`~puffer_cli.errors.BudgetExceeded`
once it has passed.  The budget is a contextvar, so ``anyio.to_thread.run_sync``
(which copies the context) carries it into worker threads.

Values follow turbopuffer's published limits where it has one.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

from puffer_cli.errors import BudgetExceeded

# -- writes -----------------------------------------------------------------------
MAX_ATTRIBUTES_PER_NAMESPACE = 256  # turbopuffer: 256 attribute names per namespace
MAX_ATTRIBUTES_PER_WRITE = 256  # distinct attribute names one write body may name
MAX_ATTRIBUTE_NAME_BYTES = 128  # turbopuffer: 128
MAX_ID_BYTES = 64  # turbopuffer: 64 bytes
MAX_STRING_BYTES = 8 * 1024 * 1024  # one string attribute value
MAX_ARRAY_ITEMS = 65_536  # elements of one array attribute value
MAX_VECTOR_DIMS = 10_752  # turbopuffer: 10,752 dense dimensions
MAX_SPARSE_NONZEROS = 1_024  # turbopuffer: 1,024 dimensions per sparse vector ({}f16 value or SparseKNN query)
MAX_SPARSE_KEY_BYTES = 64  # one sparse dimension key (a string such as "30521" or "dim0"), UTF-8
MAX_MULTI_VECTORS = 2_048  # vectors of one [][N]f32 (multi-vector) value (ColPali pages: ~1,030)
MAX_VALUE_DEPTH = 32  # nesting of JSON values inside a write or query body
MAX_BODY_BYTES = 256 * 1024 * 1024  # one request body (decompressed)
MAX_BODY_BYTES_IN_FLIGHT = 512 * 1024 * 1024  # all request bodies being read/parsed at once
# turbopuffer's backpressure: writes are 429 once a namespace's unindexed WAL data is over this
# (docs/http.md "Backpressure"; serve's PUFFER_BACKPRESSURE_BYTES, 0 = off)
BACKPRESSURE_BYTES = 2 * 10**9

# usearch HNSW options a schema may set (outside these a build fails or exhausts memory)
ANN_CONNECTIVITY = (2, 128)
ANN_EXPANSION_ADD = (1, 4_096)
ANN_EXPANSION_SEARCH = (1, 4_096)

# -- queries ----------------------------------------------------------------------
MAX_TOP_K = 10_000  # top_k / limit.total
MAX_MULTI_QUERIES = 16  # turbopuffer: 16 queries per multi-query
MAX_QUERY_VECTORS = 256  # query vectors of one multi-vector ANN / kNN (ColBERT queries: 32)
MAX_FILTER_NODES = 1_024  # leaves + And/Or/Not nodes in one filter
MAX_FILTER_DEPTH = 32  # nesting of And/Or/Not (and of rank_by Sum/Max/Product)
MAX_FILTER_LIST_ITEMS = 10_000  # values of one In/NotIn/ContainsAny list
MAX_PATTERN_CHARS = 4_096  # Regex/Glob pattern length
MAX_QUERY_TEXT_CHARS = 16_384  # BM25 / token filter query string length
QUERY_BUDGET_S = 10.0  # default wall-clock budget of one query
MAX_OFFSET = 1_000_000  # offset of a ranked query (rows skipped are still ranked)
MAX_COMPUTE_ATTRIBUTES = 64  # compute_attributes entries of one query
MAX_HIGHLIGHT_FRAGMENTS = 100  # Highlight fragment_limit
MAX_RECALL_QUERIES = 1_000  # sampled query vectors of one _debug/recall (2 queries each)

# -- server (puffer serve) --------------------------------------------------------
QUERY_GRACE_S = 0.5  # the HTTP answer (408) leaves at budget + this, even if a call is stuck
HEADER_TIMEOUT_S = 10.0  # a connection's request line + headers must arrive within this
MAX_HEADER_BYTES = 64 * 1024  # request line + headers of one request (431 above)
BODY_CHUNK_TIMEOUT_S = 20.0  # longest wait for the next chunk of a request body
BODY_TIMEOUT_S = 300.0  # a whole request body (256 MiB at ~1 MiB/s)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("puffer_deadline", default=None)


@contextmanager
def deadline(seconds: float | None = QUERY_BUDGET_S) -> Iterator[None]:
    """Run the block under a budget of ``seconds`` (None: no budget). Nested budgets
    keep the earlier end."""
    if seconds is None:
        yield
        return
    end = time.monotonic() + seconds
    cur = _deadline.get()
    token = _deadline.set(end if cur is None else min(cur, end))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left in the current budget (None when there is none)."""
    end = _deadline.get()
    return None if end is None else end - time.monotonic()


def check_deadline(what: str = "query") -> None:
    """Raise BudgetExceeded if the current budget has run out."""
    end = _deadline.get()
    if end is not None and time.monotonic() > end:
        raise BudgetExceeded(f"{what} exceeded its time budget")


# -- local file cache (cache.py; docs/indexer.md "Local cache") --------------------
CACHE_MAX_BYTES_CAP = 10 * 10**9  # default bound: min(this, CACHE_DISK_FRACTION of the cache's filesystem)
CACHE_DISK_FRACTION = 0.25
CACHE_LOW_WATER = 0.9  # eviction frees down to this fraction of the bound
CACHE_EVICT_GRACE_S = 30.0  # a file used (or fetched) this recently is not evicted
CACHE_STALE_TMP_S = 3600.0  # temp files of a killed fetch older than this are removed
NAMESPACE_LIST_THREADS = 16  # existence checks in flight when listing namespaces of an object store

# -- object store (S3 calls; store.py) -------------------------------------------------
S3_CONNECT_TIMEOUT_S = 5.0  # botocore connect_timeout of every S3 request
S3_READ_TIMEOUT_S = 30.0  # botocore read_timeout (per socket read) of every S3 request
S3_RETRY_DEADLINE_S = 20.0  # retries of one store call (5xx, 409, throttling, resets) end by then
S3_UNREACHABLE_DEADLINE_S = 4.0  # ... but an endpoint that refuses connections fails sooner
S3_RETRY_BASE_S = 0.05  # jittered exponential backoff: uniform(0, min(max, base * 2**n))
S3_RETRY_MAX_S = 2.0
RANGE_CONCURRENCY = 16  # ranged reads of one batch in flight at once (a cold query's probed lists)
S3_PRESIGN_EXPIRES_S = 900  # a batch's ranged GETs use presigned URLs valid this long ...
S3_PRESIGN_REUSE_S = 300  # ... and reused this long per key (index files are immutable)
S3_PROBE_TIMEOUT_S = 5.0  # the conditional-write probe's calls (two concurrent creates must resolve)
