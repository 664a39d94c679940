"""``open_store(url)``: a backend picked from a store URL, like ``lancedb.connect``.

* a path (default ``./puffer-data``)  -> :class:`~puffer_cli.store.local.LocalStore`
* ``memory://[name]``                 -> :class:`~puffer_cli.store.memory.MemoryStore` (tests; process-local)
* ``s3://bucket[/prefix]``            -> :class:`~puffer_cli.store.s3.S3Store` (AWS, MinIO, moto, ...)
"""

from __future__ import annotations

import threading

from puffer_cli import caches
from puffer_cli.errors import InvalidRequest
from puffer_cli.store import Store
from puffer_cli.store.local import LocalStore
from puffer_cli.store.memory import MemoryStore
from puffer_cli.store.s3 import S3Store

DEFAULT_STORE = "./puffer-data"


#: open stores per (url, endpoint): one s3fs client per bucket and process (caches.stats() names it)
_STORES = caches.lru("stores", 256)
_STORES_LOCK = threading.Lock()


def open_store(url: str | None = None, *, s3_endpoint: str | None = None) -> Store:
    """Open the store named by ``url`` (default ./puffer-data; connect() reads $PUFFER_STORE).

    Instances are cached per (url, endpoint) so a process shares one s3fs client.
    """
    url = url or DEFAULT_STORE
    key = (url, s3_endpoint)
    with _STORES_LOCK:
        found = _STORES.get(key)
        if found is not None:
            return found
        if url.startswith("memory://"):
            st: Store = MemoryStore(url[len("memory://") :])
        elif url.startswith("s3://"):
            st = S3Store(url, endpoint_url=s3_endpoint)
        elif "://" in url and not url.startswith("file://"):
            raise InvalidRequest(
                f"unsupported store URL {url!r}",
                hint="use a local path, memory://, or s3://bucket/prefix",
            )
        else:
            st = LocalStore(url[len("file://") :] if url.startswith("file://") else url)
        _STORES.put(key, st)
        return st
