"""Local file cache for immutable index files, keyed by object key.

Index files never change once written (a new generation writes new keys), so a
cached copy is never stale and the cache may be deleted at any time.

* default root: ``platformdirs.user_cache_dir("puffer")``; ``$PUFFER_CACHE_DIR``
  or ``--cache-dir`` override it; ``""`` disables the persistent cache (files
  then go to a private temporary directory removed at process exit: usearch and
  tantivy need real local files to map).
* layout: ``{root}/{store-tag}/{object key}`` where ``store-tag`` is a short
  digest of the store URL, so two buckets never share entries.
* a local-disk store is read in place (``LocalStore.local_path``), never copied;
  only directories that must be writable (tantivy) are materialised, by hard link.

Downloads are atomic (temp file + rename), so concurrent processes sharing the
cache see complete files only.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from .store import LocalStore, Store

_UNSET = object()


@dataclass
class CacheStats:
    """What this process fetched from the store into the cache (and what it found there)."""

    hits: int = 0
    misses: int = 0
    files_fetched: int = 0
    bytes_fetched: int = 0
    ranged_reads: int = 0     # reads of parts of uncached files (cold queries), and their bytes
    ranged_bytes: int = 0


class Cache:
    def __init__(self, root: str | os.PathLike | None):
        self.persistent = bool(root)
        if root:
            self.root = Path(root).expanduser().absolute()
        else:
            self.root = Path(tempfile.mkdtemp(prefix="puffer-cache-"))
            atexit.register(shutil.rmtree, self.root, True)
        self.stats = CacheStats()
        self._lock = threading.Lock()
        #: fetch a whole file in the background after a ranged read of it, so the next
        #: queries of a long-lived process map it (a one-shot `puffer query` turns it off)
        self.background_fetch = True
        self._fetching: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, persistent={self.persistent})"

    # ---------------------------------------------------------------- paths
    def _tag(self, store: Store) -> str:
        return hashlib.blake2b(store.url.encode(), digest_size=6).hexdigest()

    def path_for(self, store: Store, key: str) -> Path:
        return self.root / self._tag(store) / key

    def is_local(self, store: Store) -> bool:
        return isinstance(store, LocalStore)

    def has(self, store: Store, key: str) -> bool:
        if self.is_local(store):
            return True
        return self.path_for(store, key).is_file()

    # ---------------------------------------------------------------- files
    def file(self, store: Store, key: str, data: bytes | None = None) -> Path:
        """A local path holding object ``key`` (downloaded on a miss).

        ``data``: the object's bytes when the caller already has them (no fetch)."""
        if self.is_local(store):
            p = store.local_path(key)
            if not p.is_file():
                raise FileNotFoundError(key)
            return p
        p = self.path_for(store, key)
        if p.is_file():
            with self._lock:
                self.stats.hits += 1
            return p
        if data is None:
            data = store.read(key)
            with self._lock:
                self.stats.misses += 1
                self.stats.files_fetched += 1
                self.stats.bytes_fetched += len(data)
        self._put(p, data)
        return p

    def note_ranged(self, store: Store, key: str, nbytes: int) -> None:
        """Record that part of the uncached file ``key`` was read directly from the store;
        with ``background_fetch``, start fetching the whole file (once) for later queries."""
        with self._lock:
            self.stats.ranged_reads += 1
            self.stats.ranged_bytes += nbytes
            start = self.background_fetch and (store.url, key) not in self._fetching
            if start:
                self._fetching.add((store.url, key))
        if start:
            def run():
                try:
                    self.file(store, key)
                except Exception:  # noqa: BLE001 - best effort: queries keep reading by range
                    pass
                finally:
                    with self._lock:
                        self._fetching.discard((store.url, key))

            threading.Thread(target=run, name="puffer-cache-fetch", daemon=True).start()

    def put(self, store: Store, key: str, data: bytes) -> None:
        """Seed the cache with bytes we just wrote (the indexer does this)."""
        if not self.is_local(store):
            self._put(self.path_for(store, key), data)

    def _put(self, p: Path, data: bytes) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.parent / f".tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)

    def directory(self, store: Store, keys: list[str], prefix: str) -> Path:
        """A writable local directory holding the objects ``keys`` (all under
        ``prefix``) with their names relative to it (tantivy needs this)."""
        if self.is_local(store):
            d = self.root / self._tag(store) / "dirs" / prefix
            marker = d / ".complete"
            if not marker.exists():
                d.mkdir(parents=True, exist_ok=True)
                for k in keys:
                    src = store.local_path(k)
                    dst = d / k[len(prefix):]
                    if dst.exists():
                        continue
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dst.parent / f".tmp-{uuid.uuid4().hex}"
                    try:
                        os.link(src, tmp)
                    except OSError:
                        shutil.copyfile(src, tmp)
                    os.replace(tmp, dst)
                marker.touch()
            return d
        for k in keys:
            self.file(store, k)
        return self.path_for(store, prefix)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_CACHE: Cache | None = None
_CACHE_ROOT: object = _UNSET
_GLOCK = threading.Lock()


def default_root() -> str:
    env = os.environ.get("PUFFER_CACHE_DIR")
    if env is not None:
        return env
    import platformdirs

    return platformdirs.user_cache_dir("puffer")


def configure(root: str | None) -> Cache:
    """Set the process-wide cache root (``None``: the default, ``""``: disabled)."""
    global _CACHE, _CACHE_ROOT
    with _GLOCK:
        _CACHE_ROOT = default_root() if root is None else root
        _CACHE = Cache(_CACHE_ROOT)
        return _CACHE


def get_cache() -> Cache:
    """The process-wide cache (created on first use from $PUFFER_CACHE_DIR or the default)."""
    global _CACHE
    if _CACHE is None:
        with _GLOCK:
            if _CACHE is None:
                _CACHE = Cache(default_root() if _CACHE_ROOT is _UNSET else _CACHE_ROOT)
    return _CACHE
