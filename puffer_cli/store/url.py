"""``open_store(url)``: a backend picked from a store URL, like ``lancedb.connect``.

* a path (default ``./puffer-data``)  -> :class:`~puffer_cli.store.local.LocalStore`
* ``memory://[name]``                 -> :class:`~puffer_cli.store.memory.MemoryStore` (tests; process-local)
* ``s3://bucket[/prefix]``            -> :class:`~puffer_cli.store.s3.S3Store` (AWS, MinIO, moto, ...)
"""

from __future__ import annotations

import os
import re
import threading

from puffer_cli import caches
from puffer_cli.errors import InvalidRequest
from puffer_cli.store import Store
from puffer_cli.store.local import LocalStore
from puffer_cli.store.memory import MemoryStore

DEFAULT_STORE = "./puffer-data"


#: open stores per (url, endpoint): one s3fs client per bucket and process (caches.stats() names it)
_STORES = caches.lru("stores", 256)
_STORES_LOCK = threading.Lock()


def open_store(url: str | None = None, *, s3_endpoint: str | None = None) -> Store:
    """Open the store named by ``url`` (default ./puffer-data; connect() reads $PUFFER_STORE).

    Instances are cached per (url, endpoint) so a process shares one s3fs client.
    """
    url = url or DEFAULT_STORE
    check_url(url)
    key = (url, s3_endpoint)
    with _STORES_LOCK:
        found = _STORES.get(key)
        if found is not None:
            return found
        if url.startswith("memory://"):
            st: Store = MemoryStore(url[len("memory://") :])
        elif url.startswith("s3://"):
            from puffer_cli.store.s3 import S3Store  # here: s3fs, aiobotocore and asyncio load only for s3://

            st = S3Store(url, endpoint_url=s3_endpoint)
        elif "://" in url and not url.startswith("file://"):
            raise InvalidRequest(
                f"unsupported store URL {url!r}",
                hint="use a local path, memory://, or s3://bucket/prefix",
            )
        else:
            st = LocalStore(local_path(url[len("file://") :] if url.startswith("file://") else url))
        _STORES.put(key, st)
        return st


#: ``scheme:`` at the start of a store URL (two letters at least: ``C:\...`` is a Windows path)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
KNOWN_SCHEMES = ("s3", "memory", "file")


def check_url(url: str) -> None:
    """Refuse what looks like a URL but is not one puffer opens, rather than making a local
    directory of it: ``s3:/bucket`` (one slash) would otherwise be the folder ``./s3:/bucket``."""
    m = _SCHEME.match(url)
    if m is None or url.startswith(("memory://", "s3://", "file://")):
        return
    scheme, rest = m.group(1), url[m.end() :]
    if scheme.lower() in KNOWN_SCHEMES:
        raise InvalidRequest(
            f"store URL {url!r} is malformed: {scheme}: must be followed by //",
            hint=f"did you mean {scheme.lower()}://{rest.lstrip('/')}? For a local folder, write ./{url}",
        )
    raise InvalidRequest(
        f"unsupported store URL {url!r} (scheme {scheme!r})",
        hint="use a local path, memory://, or s3://bucket/prefix"
        + ("" if rest.startswith("//") else f"; for a local folder, write ./{url}"),
    )


def local_path(path: str) -> str:
    """A local store path with ``~`` / ``~user`` expanded; refused when it names no home."""
    if not path.startswith("~"):
        return path
    try:
        out = os.path.expanduser(path)
    except (KeyError, RuntimeError):  # no $HOME and no passwd entry
        out = path
    if out.startswith("~"):
        user = path[1:].split("/", 1)[0]
        raise InvalidRequest(
            f"store path {path!r}: cannot expand {'~' + user!r}: "
            + (f"there is no user {user!r}" if user else "the home directory is not known"),
            hint=f"give the path in full, or ./{path} for a folder named {path.split('/', 1)[0]!r}",
        )
    return out
