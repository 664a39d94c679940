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
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from puffer_cli import config
from puffer_cli.errors import InvalidRequest
from puffer_cli.handle import NamespaceHandle
from puffer_cli.limits import NAMESPACE_LIST_THREADS
from puffer_cli.store import Store, layout
from puffer_cli.store import filecache as _cache
from puffer_cli.store.local import LocalStore
from puffer_cli.store.url import open_store


class DB:
    """A store plus the options every namespace opened from it shares."""

    def __init__(self, store: Store, *, single_writer: bool = False, wal_policy: str = "fail"):
        self.store = store
        self.single_writer = single_writer
        self.wal_policy = wal_policy

    def __repr__(self) -> str:
        return f"DB(store={self.store.url!r})"

    def namespace(self, name: str) -> NamespaceHandle:
        """The namespace ``name`` (a handle: nothing is read or created until it is used)."""
        return NamespaceHandle(self.store, name, single_writer=self.single_writer, wal_policy=self.wal_policy)

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


def connect(
    url: str | None = None,
    *,
    s3_endpoint: str | None = None,
    single_writer: bool | None = None,
    wal_policy: str = "fail",
    cache_max_gb: float | None = None,
) -> DB:
    """Open a store: a local path (default ./puffer-data), ``memory://``, or ``s3://bucket/prefix``.

    ``cache_max_gb`` (else ``$PUFFER_CACHE_MAX_GB``) bounds the process-wide local
    cache of index files; neither given: the bound stays as it is (default
    min(10 GB, 25% of the cache's filesystem)). The environment variables the library reads
    are read here (README, Environment), except those named there as read elsewhere."""
    env = config.from_env()
    url = url or env.store
    if s3_endpoint is None:
        s3_endpoint = env.s3_endpoint
    if single_writer is None:
        single_writer = env.single_writer
    if cache_max_gb is not None:
        _cache.set_max_bytes(_cache.parse_max_gb(cache_max_gb, "cache_max_gb"))
    elif env.cache_max_gb:
        _cache.set_max_bytes(_cache.parse_max_gb(env.cache_max_gb, "PUFFER_CACHE_MAX_GB"))
    _cache.set_default_root(env.cache_dir)
    return DB(open_store(url, s3_endpoint=s3_endpoint), single_writer=single_writer, wal_policy=wal_policy)
