"""``connect(url)``: the library's entry point (like ``lancedb.connect``).

>>> import puffer_cli
>>> db = puffer_cli.connect("memory://demo")
>>> ns = db.namespace("docs")
>>> ns.write({"upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "lang": "en"}]})["rows_upserted"]
1
>>> ns.query(filters=["lang", "Eq", "en"]).rows[0]["id"]
1
>>> list(db.namespaces())
['docs']
>>> db
DB(store='memory://demo')

The handle (``db.namespace(name)``):

>>> import puffer_cli
>>> db = puffer_cli.connect("memory://handle-demo")
>>> ns = db.namespace("docs")
>>> ns
NamespaceHandle('docs', store='memory://handle-demo')
>>> ns.exists()
False
>>> ns.write({"upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "text": "quick fox"},
...                           {"id": 2, "vector": [0.9, 0.1], "text": "lazy dog"}],
...           "schema": {"text": {"type": "string", "full_text_search": True}}})["rows_upserted"]
2
>>> res = ns.query(rank_by=["vector", "ANN", [0.1, 0.2]], top_k=1, include_attributes=["text"])
>>> res.rows[0]["id"], res.rows[0]["text"]
(1, 'quick fox')
>>> res.to_polars().columns
['id', '$dist', 'text']
>>> ns.query(rank_by=["text", "BM25", "dog"]).rows[0]["id"]
2
>>> sorted(ns.schema())
['id', 'text', 'vector']
>>> ns.rows()["id"].to_list()
[1, 2]
>>> ns.index().status
'indexed'
>>> ns.delete() > 0, ns.exists()
(True, False)
>>> ns.rows()
Traceback (most recent call last):
...
puffer_cli.errors.NamespaceNotFound: namespace 'docs' not found in memory://handle-demo
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import polars as pl

from puffer_cli import config
from puffer_cli.errors import InvalidRequest, MissingDependency
from puffer_cli.index import retention as _retention  # noqa: F401,E402  (replays below the WAL floor)
from puffer_cli.limits import NAMESPACE_LIST_THREADS
from puffer_cli.store import Store, layout
from puffer_cli.store import filecache as _cache
from puffer_cli.store.filecache import Cache
from puffer_cli.store.local import LocalStore
from puffer_cli.store.url import open_store
from puffer_cli.wal.namespace import Namespace

if TYPE_CHECKING:
    from puffer_cli.index.builder import IndexReport
    from puffer_cli.jobs.ingest import IngestReport


class DB:
    """A store plus the options every namespace opened from it shares."""

    def __init__(
        self, store: Store, *, single_writer: bool = False, wal_policy: str = "fail", cache: Cache | None = None
    ):
        self.store = store
        self.single_writer = single_writer
        self.wal_policy = wal_policy
        #: this DB's local cache of index files (connect(cache_max_gb=...)); None: the process-wide one
        self.cache = cache

    def __repr__(self) -> str:
        return f"DB(store={self.store.url!r})"

    def namespace(self, name: str) -> NamespaceHandle:
        """The namespace ``name`` (a handle: nothing is read or created until it is used)."""
        return NamespaceHandle(self.open_namespace(name))

    def open_namespace(self, name: str) -> Namespace:
        """The namespace ``name``'s commit protocol and state, with this DB's options: what the
        CLI, the server and the jobs work on (users want :meth:`namespace`)."""
        return Namespace(
            self.store, name, single_writer=self.single_writer, wal_policy=self.wal_policy, cache=self.cache
        )

    def namespaces(self, prefix: str | None = None) -> Iterator[str]:
        """Every namespace name (with ``prefix``), in order: an iterator that pages as it goes.

        The paged form (what the server and ``index --all`` use) is :meth:`namespaces_page`."""
        cur: str | None = None
        while True:
            page, cur = self.namespaces_page(prefix, cur)
            yield from page
            if not cur:
                return

    def namespaces_page(
        self, prefix: str | None = None, cursor: str | None = None, page_size: int = 1000
    ) -> tuple[list[str], str | None]:
        """Namespace names in order, after ``cursor``; (page, next cursor or None).

        A namespace is listed iff its name is valid (layout.is_namespace_name, leading
        dots included) and it holds ``meta.json`` or a committed WAL entry: what a
        delete leaves behind (empty directories and lock files of a local store, a
        straggler object of a racing indexer) is not a namespace. So listing,
        ``index --all`` and delete agree on every backend."""
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise InvalidRequest("page_size must be between 1 and 1000")
        names = sorted(
            n
            for n in self._candidates()
            if layout.is_namespace_name(n) and (not prefix or n.startswith(prefix)) and (not cursor or n > cursor)
        )
        page: list[str] = []
        i = 0
        while i < len(names) and len(page) <= page_size:
            batch = names[i : i + page_size + 1 - len(page)]
            i += len(batch)
            page.extend(n for n, ok in zip(batch, self._exist(batch)) if ok)
        more = len(page) > page_size
        page = page[:page_size]
        return page, (page[-1] if more else None)

    def _candidates(self) -> set[str]:
        names: set[str] = set(self.store.list_dirs(""))
        if isinstance(self.store, LocalStore):
            # LocalStore.list_dirs skips names starting with '.', which are valid namespace
            # names (turbopuffer's rule): add them (store.py owns the proper fix)
            try:
                with os.scandir(self.store.local_path("")) as it:
                    names.update(e.name for e in it if e.name.startswith(".") and e.is_dir())
            except (FileNotFoundError, NotADirectoryError):
                pass
        return names

    def _exist(self, names: list[str]) -> list[bool]:
        def one(n: str) -> bool:
            if self.store.exists(layout.meta(n)):
                return True
            return any(layout.wal_seq(k) is not None for k in self.store.list(layout.wal_dir(n)))

        if not self.store.is_remote or len(names) < 2:
            return [one(n) for n in names]
        import contextvars
        from concurrent.futures import ThreadPoolExecutor

        ctx = contextvars.copy_context()  # io_scope() counts the workers' requests
        with ThreadPoolExecutor(min(NAMESPACE_LIST_THREADS, len(names))) as ex:
            return list(ex.map(lambda n: ctx.copy().run(one, n), names))


@dataclass
class QueryResponse:
    """One query's answer: ``rows`` (dicts of typed values), ``aggregations``,
    ``aggregation_groups``, ``performance``; ``results`` holds one response per
    sub-query of a multi-query; ``raw`` is the engine's response dict."""

    rows: list[dict] = field(default_factory=list)
    aggregations: dict | None = None
    aggregation_groups: list[dict] | None = None
    performance: dict = field(default_factory=dict)
    results: list[QueryResponse] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_engine(cls, out: Mapping[str, Any]) -> QueryResponse:
        subs = [cls.from_engine(r) for r in out.get("results", [])]
        return cls(
            rows=list(out.get("rows") or []),
            aggregations=out.get("aggregations"),
            aggregation_groups=out.get("aggregation_groups"),
            performance=dict(out.get("performance") or {}),
            results=subs,
            raw=dict(out),
        )

    def to_polars(self) -> pl.DataFrame:
        """The rows (or the aggregation groups) as a polars frame."""
        rows = self.rows if self.rows or self.aggregation_groups is None else self.aggregation_groups
        return pl.DataFrame(rows) if rows else pl.DataFrame()

    def to_arrow(self) -> Any:
        """The rows (or the aggregation groups) as a ``pyarrow.Table`` (needs pyarrow:
        ``pip install 'puffer-cli[arrow]'``)."""
        _need("pyarrow", "arrow", "to_arrow()")
        return self.to_polars().to_arrow()

    def to_pandas(self) -> Any:
        """The rows (or the aggregation groups) as a ``pandas.DataFrame`` (needs pandas and
        pyarrow: ``pip install 'puffer-cli[pandas]'``)."""
        _need("pandas", "pandas", "to_pandas()")
        _need("pyarrow", "pandas", "to_pandas()")
        return self.to_polars().to_pandas()

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def _need(module: str, extra: str, what: str) -> None:
    """Raise a one-line error naming the extra to install when ``module`` is missing."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules (tests)
        found = False
    if not found:
        raise MissingDependency(f"{what} needs {module}", hint=f"pip install 'puffer-cli[{extra}]'")


class NamespaceHandle:
    """A namespace of a store; ``db.namespace(name)`` makes one (nothing is created until
    the first write). Every method is one library call; errors are
    :class:`puffer_cli.PufferError` subclasses (``NamespaceNotFound``, ``InvalidRequest``, ...).

    It holds the namespace's commit protocol (:class:`puffer_cli.wal.namespace.Namespace`)
    rather than being one, so ``help(ns)`` and ``dir(ns)`` show only this API."""

    __slots__ = ("_ns",)

    def __init__(self, ns: Namespace):
        self._ns = ns

    def __repr__(self) -> str:
        return f"NamespaceHandle({self.name!r}, store={self.store.url!r})"

    @property
    def name(self) -> str:
        """The namespace's name."""
        return self._ns.name

    @property
    def store(self) -> Store:
        """The store the namespace lives in."""
        return self._ns.store

    def exists(self) -> bool:
        """Whether the namespace holds anything (a committed write)."""
        return self._ns.exists()

    def write(self, body: Mapping[str, Any]) -> dict:
        """Apply one turbopuffer write body (``upsert_rows``, ``upsert_columns``, ``patch_rows``,
        ``deletes``, ``delete_by_filter``, ``schema``, ``distance_metric``, ...) as one committed
        WAL entry; returns the turbopuffer write response (``rows_upserted``, ...)."""
        return self._ns.write(body)

    def query(
        self,
        body: Mapping[str, Any] | None = None,
        *,
        rank_by: Any = None,
        top_k: int | None = None,
        filters: Any = None,
        include_attributes: Any = None,
        consistency: str | None = None,
        aggregate_by: Mapping[str, Any] | None = None,
        group_by: Sequence[str] | None = None,
        queries: Sequence[Mapping[str, Any]] | None = None,
        where: str | None = None,
    ) -> QueryResponse:
        """Run a turbopuffer query: a whole ``body`` dict, or keyword arguments (which
        override the body's keys). ``consistency`` is "strong" (default) or "eventual";
        ``queries`` is a multi-query (``res.results``); ``where`` is a filter in SQL
        (``"lang = 'en' AND n >= 5"``, see :mod:`puffer_cli.filters.sql`), And-ed with ``filters``.
        A filter or ``include_attributes`` naming an attribute the namespace does not have raises
        InvalidQuery with the closest name. Raises NamespaceNotFound."""
        from puffer_cli.filters.sql import where_to_filter
        from puffer_cli.query.checks import check_known_attributes
        from puffer_cli.search import engine

        q: dict[str, Any] = dict(body or {})
        for key, v in (
            ("rank_by", rank_by),
            ("top_k", top_k),
            ("filters", filters),
            ("include_attributes", include_attributes),
            ("aggregate_by", aggregate_by),
            ("group_by", list(group_by) if group_by is not None else None),
            ("queries", list(queries) if queries is not None else None),
        ):
            if v is not None:
                q[key] = v
        if consistency is not None:
            if consistency not in ("strong", "eventual"):
                raise InvalidRequest(f"unknown consistency {consistency!r}", hint="use strong or eventual")
            q["consistency"] = {"level": consistency}
        if where is not None:
            w = where_to_filter(where)
            q["filters"] = w if q.get("filters") is None else ["And", [q["filters"], w]]
        if "queries" not in q and q.get("rank_by") is None and not q.get("aggregate_by"):
            q["rank_by"] = ["id", "asc"]
        out = engine.run(self._ns, q)
        schema = self._ns.head(refresh=False).schema  # what the query just read: no extra request
        for sub in q.get("queries") or [q]:
            if isinstance(sub, Mapping):
                check_known_attributes(sub.get("filters"), sub.get("include_attributes"), schema)
        return QueryResponse.from_engine(out)

    def ingest(
        self,
        paths: str | Sequence[str],
        *,
        id_col: str = "id",
        vector_col: str | None = None,
        schema: Mapping[str, Any] | None = None,
        distance_metric: str | None = None,
        fmt: str | None = None,
        batch_rows: int | None = None,
        progress: Callable[[Any, int], None] | None = None,
    ) -> IngestReport:
        """Batch-load parquet / ndjson / csv files (``puffer ingest``): one WAL entry per chunk of
        ``batch_rows`` rows, idempotent by id.

        ``id_col`` names the id column, ``vector_col`` the vector column (stored as ``vector``),
        ``schema`` declares attributes (``{"title": {"type": "string", "full_text_search": true}}``),
        ``distance_metric`` is ``cosine_distance`` or ``euclidean_squared``, ``fmt`` forces
        ``parquet`` / ``ndjson`` / ``csv`` (else from the file name); ``progress(report, total)``
        is called after each chunk. Returns the report (rows, WAL entries, seqs, time)."""
        from puffer_cli.jobs.ingest import DEFAULT_BATCH_ROWS, ingest

        return ingest(
            self._ns,
            [paths] if isinstance(paths, str) else list(paths),
            id_col=id_col,
            vector_col=vector_col,
            schema=dict(schema) if schema is not None else None,
            distance_metric=distance_metric,
            fmt=fmt,
            batch_rows=DEFAULT_BATCH_ROWS if batch_rows is None else batch_rows,
            progress=progress,
        )

    def export(self, output: str | None = None, fmt: str | None = None, at_seq: int | None = None) -> dict:
        """Write a consistent snapshot to ``output`` (parquet / ndjson / csv; ``puffer export``)."""
        from puffer_cli.jobs.export import export

        return export(self._ns, output, fmt, at_seq)

    def index(
        self,
        *,
        max_seconds: float | None = None,
        gc_grace_s: float | None = None,
        lease_ttl: float | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
        repair: bool = False,
        wal_retention_s: float | None = None,
    ) -> IndexReport:
        """Build and publish the next index generation (``puffer index``): safe to run from many
        processes at once (one takes the lease; the others return ``status="busy"``).

        ``max_seconds`` bounds the run (the rest waits for the next run), ``gc_grace_s`` is how
        long unreferenced generations are kept (default 600 s or ``$PUFFER_INDEX_GC_GRACE``),
        ``lease_ttl`` the lease's length (``$PUFFER_INDEX_LEASE_TTL``), ``progress(stage, done,
        total)`` is told each stage's progress. ``repair`` checks every file of the current
        generation and rebuilds damaged segments; ``wal_retention_s`` is how long WAL entries an
        index generation covers are kept (default 7 days or ``$PUFFER_WAL_RETENTION``; docs/indexer.md).
        Returns the report (``status``: indexed, up-to-date, busy, ...)."""
        from puffer_cli.index.builder import index_namespace

        if lease_ttl is None:
            lease_ttl = config.from_env().index_lease_ttl_s
        return index_namespace(
            self._ns,
            max_seconds=max_seconds,
            gc_grace_s=gc_grace_s,
            lease_ttl=lease_ttl,
            progress=progress,
            repair=repair,
            wal_retention_s=wal_retention_s,
        )

    def branch(self, dest: str) -> NamespaceHandle:
        """Make ``dest`` a copy-on-write branch of this namespace (``puffer branch``): instant,
        nothing copied; writes to either side stay on that side. Returns the new handle.
        Raises NamespaceNotFound, or InvalidRequest if ``dest`` exists."""
        from puffer_cli.jobs.branch import branch_namespace

        branch_namespace(self.store, dest, self.name, single_writer=self._ns.single_writer)
        return NamespaceHandle(
            Namespace(
                self.store,
                dest,
                single_writer=self._ns.single_writer,
                wal_policy=self._ns.wal_policy,
                cache=self._ns.cache,
            )
        )

    def warm(self) -> dict:
        """Prefetch the current index generation into the local cache (``puffer warm``)."""
        from puffer_cli.index.warm import warm

        self._ns.require()
        return warm(self._ns)

    def recall(
        self,
        *,
        num: int | None = None,
        top_k: int = 10,
        filters: Any = None,
        field: str | None = None,
        rank_by: Any = None,
        include_ground_truth: bool = False,
        probe: float | None = None,
        fill: float | None = None,
        prune: float | None = None,
    ) -> dict:
        """ANN vs exhaustive recall@k on sampled vectors (``puffer recall``; 25 unless ``num``),
        or on the one vector of ``rank_by``; ``include_ground_truth`` adds the exact neighbours;
        ``probe`` / ``fill`` / ``prune`` measure other IVF options than the schema's (docs/indexer.md)."""
        from puffer_cli.jobs.recall import recall

        return recall(
            self._ns,
            num=num,
            top_k=top_k,
            filters=filters,
            field=field,
            rank_by=rank_by,
            include_ground_truth=include_ground_truth,
            probe=probe,
            fill=fill,
            prune=prune,
        )

    def metadata(self) -> dict:
        """Head seq, schema, distance metric, timestamps, index pointer. Raises NamespaceNotFound."""
        head = self._ns.require()
        meta, _ = self._ns.read_meta()
        return {
            "namespace": self.name,
            "seq": head.seq,
            "schema": head.schema,
            "distance_metric": head.metric,
            "created_at": head.created_at,
            "updated_at": head.updated_at,
            "index": (meta or {}).get("index"),
        }

    def schema(self) -> dict:
        """The schema in force at the head: {attribute: {"type": ..., ...}}."""
        return dict(self._ns.require().schema)

    def rows(self, at_seq: int | None = None) -> pl.DataFrame:
        """The live documents as a polars frame ordered by id: at the head, or as they were at
        committed seq ``at_seq`` (what ``export`` writes). Raises NamespaceNotFound."""
        from puffer_cli.jobs.export import snapshot

        return snapshot(self._ns, at_seq)[0]

    def delete(self) -> int:
        """Remove every key of the namespace; returns how many. Raises NamespaceNotFound."""
        return self._ns.delete_all()


def connect(
    url: str | None = None,
    *,
    s3_endpoint: str | None = None,
    single_writer: bool | None = None,
    wal_policy: str | None = None,
    cache_max_gb: float | None = None,
) -> DB:
    """Open a store: a local path (default ./puffer-data), ``memory://``, or ``s3://bucket/prefix``.

    ``cache_max_gb`` bounds this DB's local cache of index files (the same directory as the
    process-wide cache; other DBs keep their bounds); else ``$PUFFER_CACHE_MAX_GB`` bounds
    the process-wide cache; neither given: the bound stays as it is (default
    min(10 GB, 25% of the cache's filesystem)). The environment variables the library reads
    are read here (README, Environment), except those named there as read elsewhere."""
    env = config.from_env()
    url = url or env.store
    if s3_endpoint is None:
        s3_endpoint = env.s3_endpoint
    if single_writer is None:
        single_writer = env.single_writer
    if wal_policy is None:
        wal_policy = env.wal_policy or "fail"
    if wal_policy not in ("fail", "skip"):
        raise InvalidRequest(f"unknown WAL corruption policy {wal_policy!r}", hint="use fail or skip")
    _cache.set_default_root(env.cache_dir)
    cache = None
    if cache_max_gb is not None:  # this DB's own bound: other DBs of the process keep theirs
        shared = _cache.get_cache()
        bound = _cache.parse_max_gb(cache_max_gb, "cache_max_gb")
        cache = _cache.Cache(str(shared.root) if shared.persistent else "", bound)
    elif env.cache_max_gb:
        _cache.set_max_bytes(_cache.parse_max_gb(env.cache_max_gb, "PUFFER_CACHE_MAX_GB"))
    store = open_store(url, s3_endpoint=s3_endpoint)
    return DB(store, single_writer=single_writer, wal_policy=wal_policy, cache=cache)


# ------------------------------------------------------------------ async face

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _threaded(
    fn: Callable[Concatenate[NamespaceHandle, _P], _R],
) -> Callable[Concatenate[AsyncNamespaceHandle, _P], Awaitable[_R]]:
    """``fn`` of the sync handle as a coroutine method that runs it in a worker thread."""

    @functools.wraps(fn)
    async def run(self: AsyncNamespaceHandle, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        import asyncio  # here, not at the top: a running loop has imported it; the CLI never does

        return await asyncio.to_thread(fn, self.sync, *args, **kwargs)

    return run


class AsyncNamespaceHandle:
    """The async twin of :class:`NamespaceHandle` (``(await connect_async(url)).namespace(name)``):
    the same methods, awaitable; each runs in a worker thread, so the event loop never waits
    on the store (turbopuffer's ``AsyncTurbopuffer``, LanceDB's ``connect_async``)."""

    __slots__ = ("sync",)

    def __init__(self, handle: NamespaceHandle):
        #: the synchronous handle this one runs in worker threads
        self.sync = handle

    def __repr__(self) -> str:
        return f"AsyncNamespaceHandle({self.name!r}, store={self.sync.store.url!r})"

    @property
    def name(self) -> str:
        """The namespace's name."""
        return self.sync.name

    exists = _threaded(NamespaceHandle.exists)
    write = _threaded(NamespaceHandle.write)
    query = _threaded(NamespaceHandle.query)
    ingest = _threaded(NamespaceHandle.ingest)
    export = _threaded(NamespaceHandle.export)
    index = _threaded(NamespaceHandle.index)
    branch = _threaded(NamespaceHandle.branch)
    warm = _threaded(NamespaceHandle.warm)
    recall = _threaded(NamespaceHandle.recall)
    metadata = _threaded(NamespaceHandle.metadata)
    schema = _threaded(NamespaceHandle.schema)
    rows = _threaded(NamespaceHandle.rows)
    delete = _threaded(NamespaceHandle.delete)


class AsyncDB:
    """The async twin of :class:`DB` (``await puffer_cli.connect_async(url)``)."""

    def __init__(self, db: DB):
        #: the synchronous DB this one runs in worker threads
        self.sync = db

    def __repr__(self) -> str:
        return f"AsyncDB(store={self.sync.store.url!r})"

    def namespace(self, name: str) -> AsyncNamespaceHandle:
        """The namespace ``name`` (no I/O until a method is awaited)."""
        return AsyncNamespaceHandle(self.sync.namespace(name))

    async def namespaces(self, prefix: str | None = None) -> list[str]:
        """Every namespace name (with ``prefix``), in order."""
        import asyncio

        return await asyncio.to_thread(lambda: list(self.sync.namespaces(prefix)))


async def connect_async(
    url: str | None = None,
    *,
    s3_endpoint: str | None = None,
    single_writer: bool | None = None,
    wal_policy: str | None = None,
    cache_max_gb: float | None = None,
) -> AsyncDB:
    """:func:`connect`, for asyncio code: ``db = await puffer_cli.connect_async(url)``; then
    ``await db.namespace("docs").query(...)``."""
    import asyncio

    db = await asyncio.to_thread(
        connect,
        url,
        s3_endpoint=s3_endpoint,
        single_writer=single_writer,
        wal_policy=wal_policy,
        cache_max_gb=cache_max_gb,
    )
    return AsyncDB(db)
