"""Local file cache for immutable index files, keyed by object key; bounded in size.

Index files never change once written (a new generation writes new keys), so a
cached copy is never stale and the cache may be deleted at any time.

* default root: ``platformdirs.user_cache_dir("puffer")``; ``--cache-dir`` or
  ``$PUFFER_CACHE_DIR`` (read by the entry points, passed to :func:`configure`) override it;
  ``""`` disables the persistent cache (files then go to a private temporary directory
  removed at process exit: usearch and tantivy need real local files to map).
* layout: ``{root}/{store-tag}/{object key}`` where ``store-tag`` is a short
  digest of the store URL, so two buckets never share entries.
* a local-disk store is read in place (``LocalStore.local_path``), never copied;
  only directories that must be writable (tantivy) are materialised, as copies
  (reflink where the filesystem can, else ``copy_file_range``, else a plain copy):
  never hard links, which would keep files of a collected generation alive.
* size bound: ``max_bytes`` (``--cache-max-gb`` / ``$PUFFER_CACHE_MAX_GB``, read by
  the CLI and ``connect()`` only, then passed here); default
  ``min(10 GB, 25% of the cache's filesystem)``, computed once per process.
  When what this process adds takes the cache (all stores under the root) over the
  bound, the least recently used files are deleted down to 90% of it. "Used" is the
  file's mtime, touched on every hit. Never evicted: files this process has mapped
  or open (``/proc/self/maps``, ``/proc/self/fd``), files pinned with :meth:`Cache.pin`,
  and files used in the last ``grace_s`` seconds (another process may have just
  been handed the path and not opened it yet).
* several processes may share a root: downloads are atomic (temp file + rename), so
  nobody reads a partial file; eviction only unlinks, and on POSIX a file another
  process has open or mapped stays intact for it (its next ``file()`` fetches again).
* an unwritable root (read-only, not a directory, permission denied, full disk)
  degrades to a private temporary directory with one warning; if even that cannot
  be written, :class:`~puffer_cli.errors.StoreError`.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from puffer_cli import limits
from puffer_cli.errors import StoreError
from puffer_cli.store import Store
from puffer_cli.store.fileops import copy_file, open_paths, prune_empty, scan, touch, unwritable, write_atomic
from puffer_cli.store.local import LocalStore

log = logging.getLogger("puffer.cache")

_UNSET = object()


@dataclass
class CacheStats:
    """What this process fetched from the store into the cache (and what it found there)."""

    hits: int = 0
    misses: int = 0
    files_fetched: int = 0
    bytes_fetched: int = 0
    ranged_reads: int = 0  # reads of parts of uncached files (cold queries), and their bytes
    ranged_bytes: int = 0
    evictions: int = 0  # files this process deleted to keep the bound, and their bytes
    evicted_bytes: int = 0
    background_files: int = 0  # whole files fetched after a ranged read (not any query's misses)


@dataclass
class Usage:
    """One scan of the cache directory."""

    files: int = 0
    bytes: int = 0
    evicted_files: int = 0
    evicted_bytes: int = 0
    kept_in_use: int = 0  # files over the bound that could not go (in use / within grace)


# ---------------------------------------------------------------- default bound
_DEFAULT_MAX: dict[int, int] = {}


def default_max_bytes(root: str | os.PathLike) -> int:
    """``min(10 GB, 25% of the size of the filesystem holding root)``, once per filesystem."""
    p = Path(root)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        dev = p.stat().st_dev
        if dev not in _DEFAULT_MAX:
            sv = os.statvfs(p)
            _DEFAULT_MAX[dev] = int(
                min(limits.CACHE_MAX_BYTES_CAP, limits.CACHE_DISK_FRACTION * sv.f_blocks * sv.f_frsize)
            )
        return _DEFAULT_MAX[dev]
    except OSError:
        return limits.CACHE_MAX_BYTES_CAP


def parse_max_gb(value: object, what: str = "--cache-max-gb") -> int | None:
    """Bytes for a ``--cache-max-gb`` / ``$PUFFER_CACHE_MAX_GB`` value (None/"" = default)."""
    from puffer_cli.errors import InvalidRequest

    if value is None or value == "":
        return None
    try:
        gb = float(value)  # type: ignore[arg-type]  # any object: what float() refuses is refused below
    except (TypeError, ValueError):
        gb = float("nan")
    if not gb >= 0 or gb == float("inf"):
        raise InvalidRequest(
            f"{what} must be a number of GB >= 0, not {value!r}", hint="e.g. 5 or 0.5 (GB = 10^9 bytes)"
        )
    return int(gb * 1e9)


class Cache:
    def __init__(self, root: str | os.PathLike | None, max_bytes: int | None = None):
        self.persistent = bool(root)
        if root:
            self.root = Path(root).expanduser().absolute()
        else:
            self.root = self._private_root()
        self.stats = CacheStats()
        self._lock = threading.Lock()
        #: fetch a whole file in the background after a ranged read of it, so the next
        #: queries of a long-lived process map it (a one-shot `puffer query` turns it off)
        self.background_fetch = True
        self._fetching: set[tuple[str, str]] = set()
        self._max_bytes = max_bytes
        #: files used this recently are not evicted (see module docstring)
        self.grace_s = limits.CACHE_EVICT_GRACE_S
        self._pins: dict[str, int] = {}
        self._known: int | None = None  # bytes in the cache at the last scan (+ what we added since)
        self._evict_lock = threading.Lock()
        self.degraded: str | None = None  # why the configured root could not be used

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, persistent={self.persistent}, max_bytes={self.max_bytes})"

    @staticmethod
    def _private_root() -> Path:
        try:
            root = Path(tempfile.mkdtemp(prefix="puffer-cache-"))
        except OSError as e:
            raise StoreError(
                f"cannot create a temporary directory for index files: {e}",
                hint="set TMPDIR or --cache-dir to a writable directory",
            ) from None
        atexit.register(shutil.rmtree, root, True)
        return root

    # ---------------------------------------------------------------- bound
    @property
    def max_bytes(self) -> int:
        if self._max_bytes is None:
            self._max_bytes = default_max_bytes(self.root)
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int | None) -> None:
        self._max_bytes = None if value is None else max(0, int(value))

    # ---------------------------------------------------------------- paths
    def _tag(self, store: Store) -> str:
        return hashlib.blake2b(store.url.encode(), digest_size=6).hexdigest()

    def path_for(self, store: Store, key: str) -> Path:
        return self.root / self._tag(store) / key

    def is_local(self, store: Store) -> TypeGuard[LocalStore]:
        return isinstance(store, LocalStore)

    def has(self, store: Store, key: str) -> bool:
        if self.is_local(store):
            return True
        return self.path_for(store, key).is_file()

    # ---------------------------------------------------------------- pins
    def pin(self, paths: Iterable[str | os.PathLike]) -> None:
        """Protect these local paths from eviction by this process until :meth:`unpin`
        (for holders that neither map nor keep open the file, or systems without /proc)."""
        with self._lock:
            for p in paths:
                k = str(p)
                self._pins[k] = self._pins.get(k, 0) + 1

    def unpin(self, paths: Iterable[str | os.PathLike]) -> None:
        with self._lock:
            for p in paths:
                k = str(p)
                n = self._pins.get(k, 0) - 1
                if n > 0:
                    self._pins[k] = n
                else:
                    self._pins.pop(k, None)

    @contextlib.contextmanager
    def pinned(self, paths: Iterable[str | os.PathLike]) -> Iterator[None]:
        paths = list(paths)
        self.pin(paths)
        try:
            yield
        finally:
            self.unpin(paths)

    # ---------------------------------------------------------------- files
    def file(self, store: Store, key: str, data: bytes | None = None, background: bool = False) -> Path:
        """A local path holding object ``key`` (downloaded on a miss).

        ``data``: the object's bytes when the caller already has them (no fetch);
        ``background``: a fetch no query waits for (counted apart from the misses, which
        tell a query it was cold)."""
        if self.is_local(store):
            p = store.local_path(key)
            if not p.is_file():
                raise FileNotFoundError(key)
            return p
        p = self.path_for(store, key)
        if p.is_file():
            touch(p)
            with self._lock:
                self.stats.hits += 1
            return p
        if data is None:
            data = store.read(key)
            with self._lock:
                if background:
                    self.stats.background_files += 1
                else:
                    self.stats.misses += 1
                    self.stats.files_fetched += 1
                    self.stats.bytes_fetched += len(data)
        return self._put(store, key, data)

    def open(self, store: Store, key: str):
        """``key`` opened for reading (binary): like ``file(...).open("rb")``, but a file
        another process evicts between the two is fetched again instead of failing."""
        for attempt in range(3):
            p = self.file(store, key)
            try:
                return open(p, "rb")
            except FileNotFoundError:
                if attempt == 2:
                    raise

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
                    self.file(store, key, background=True)
                except Exception:  # noqa: BLE001 - best effort: queries keep reading by range
                    pass
                finally:
                    with self._lock:
                        self._fetching.discard((store.url, key))

            threading.Thread(target=run, name="puffer-cache-fetch", daemon=True).start()

    def put(self, store: Store, key: str, data: bytes) -> None:
        """Seed the cache with bytes we just wrote (the indexer does this)."""
        if not self.is_local(store):
            self._put(store, key, data)

    def put_fetched(self, store: Store, files: dict[str, bytes], nbytes: int) -> None:
        """Seed the cache with files a query fetched in one object of ``nbytes`` (a prefetch
        pack, index/pack.py): counted as one miss, as that object's fetch."""
        with self._lock:
            self.stats.misses += 1
            self.stats.files_fetched += 1
            self.stats.bytes_fetched += nbytes
        if not self.is_local(store):
            for k, data in files.items():
                if not self.has(store, k):
                    self._put(store, k, data)

    def _put(self, store: Store, key: str, data: bytes) -> Path:
        try:
            p = self.path_for(store, key)
            write_atomic(p, lambda tmp: tmp.write_bytes(data))
        except OSError as e:
            if not unwritable(e):
                raise
            self._degrade(e)
            p = self.path_for(store, key)
            try:
                write_atomic(p, lambda tmp: tmp.write_bytes(data))
            except OSError as e2:
                raise StoreError(
                    f"cannot write index files to the local cache {self.root}: {e2.strerror or e2}",
                    hint="free disk space, or set TMPDIR / --cache-dir to a writable directory",
                ) from None
        self._added(len(data), keep=(str(p),))
        return p

    def _degrade(self, e: OSError) -> None:
        """The root cannot be written: warn once and go on in a private temp dir
        (StoreError if we already are in one)."""
        with self._lock:
            if not self.persistent:
                raise StoreError(
                    f"cannot write index files to the local cache {self.root}: {e.strerror or e}",
                    hint="free disk space, or set TMPDIR / --cache-dir to a writable directory",
                ) from None
            self.degraded = f"{self.root}: {e.strerror or e}"
            log.warning(
                "cache dir %s is not writable (%s); caching index files in a temporary "
                "directory for this run (fix it or pass --cache-dir)",
                self.root,
                e.strerror or e,
            )
            self.root = self._private_root()
            self.persistent = False
            self._known = None

    def directory(self, store: Store, keys: list[str], prefix: str) -> Path:
        """A writable local directory holding the objects ``keys`` (all under
        ``prefix``) with their names relative to it (tantivy needs this)."""
        if self.is_local(store):
            try:
                return self._local_directory(store, keys, prefix)
            except OSError as e:
                if not unwritable(e):
                    raise
                self._degrade(e)
                return self._local_directory(store, keys, prefix)
        paths = [str(self.path_for(store, k)) for k in keys]
        with self.pinned(paths):  # fetching one file must not evict the others
            for k in keys:
                self.file(store, k)
        return self.path_for(store, prefix)

    def _local_directory(self, store: LocalStore, keys: list[str], prefix: str) -> Path:
        d = self.root / self._tag(store) / "dirs" / prefix
        added = 0
        paths = [str(d / k[len(prefix) :]) for k in keys]
        for k in keys:
            dst = d / k[len(prefix) :]
            if dst.is_file():
                touch(dst)
                continue
            src = store.local_path(k)
            if not src.is_file():
                raise FileNotFoundError(k)
            write_atomic(dst, lambda tmp, src=src: copy_file(src, tmp))
            added += dst.stat().st_size
        if added:
            self._added(added, keep=paths)
        return d

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._known = None

    def discard(self, store: Store, prefix: str) -> int:
        """Delete this store's cached files under ``prefix`` (e.g. a collected generation)
        that nothing in this process uses. Returns how many."""
        bases = [self.path_for(store, prefix), self.root / self._tag(store) / "dirs" / prefix]
        in_use = self._in_use()
        n = 0
        for base in bases:
            if not base.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(base):
                for f in files:
                    p = os.path.join(dirpath, f)
                    if p in in_use:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                        n += 1
            prune_empty(base, self.root)
        self._known = None
        return n

    # ---------------------------------------------------------------- eviction
    def _added(self, nbytes: int, keep: Iterable[str] = ()) -> None:
        """We added ``nbytes``: evict if that may take the cache over its bound (never
        the files ``keep`` just written for the caller)."""
        with self._lock:
            if self._known is not None:
                self._known += nbytes
            over = self._known is None or self._known > self.max_bytes
        if over:
            with self.pinned(keep):
                self.evict()

    def _in_use(self) -> set[str]:
        with self._lock:
            pins = set(self._pins)
        return open_paths(str(self.root) + os.sep) | pins

    def usage(self) -> Usage:
        """Files and bytes in the cache now (every store under the root)."""
        u = Usage()
        for _p, st in scan(self.root):
            u.files += 1
            u.bytes += st.st_size
        return u

    def evict(self, target: int | None = None) -> Usage:
        """Scan the cache; if it holds more than the bound, delete least recently used
        files (not in use, not within ``grace_s``) until it holds at most ``target``
        (default: 90% of the bound). Safe while other processes use the same root."""
        with self._evict_lock:
            files = list(scan(self.root))
            total = sum(st.st_size for _p, st in files)
            u = Usage(files=len(files), bytes=total)
            limit = self.max_bytes
            if total > limit:
                goal = int(limit * limits.CACHE_LOW_WATER) if target is None else target
                in_use = self._in_use()
                recent = time.time() - self.grace_s
                files.sort(key=lambda f: f[1].st_mtime)
                for p, st in files:
                    if total <= goal:
                        break
                    if p in in_use or st.st_mtime > recent:
                        u.kept_in_use += 1
                        continue
                    try:
                        # another process may have used it since our scan: check again
                        if os.stat(p).st_mtime > recent:
                            u.kept_in_use += 1
                            continue
                        os.unlink(p)
                    except FileNotFoundError:
                        pass  # someone else evicted it
                    except OSError:
                        continue  # read-only dir: nothing we can do about this one
                    total -= st.st_size
                    u.evicted_files += 1
                    u.evicted_bytes += st.st_size
                    u.files -= 1
                u.bytes = total
                if u.evicted_files:
                    prune_empty(self.root, self.root)
                    with self._lock:
                        self.stats.evictions += u.evicted_files
                        self.stats.evicted_bytes += u.evicted_bytes
            with self._lock:
                self._known = total
            return u


_CACHE: Cache | None = None
_CACHE_ROOT: str | None = None  # None: not configured (configure() always sets a str)
_MAX_BYTES: int | None = None
_GLOCK = threading.Lock()


def default_root() -> str:
    """The user cache dir (the entry points pass ``--cache-dir`` / ``$PUFFER_CACHE_DIR``,
    read by config.from_env, to :func:`configure`)."""
    import platformdirs

    return platformdirs.user_cache_dir("puffer")


def configure(root: str | None, max_bytes: int | None | object = _UNSET) -> Cache:
    """Set the process-wide cache root (``None``: the default, ``""``: disabled) and,
    if given, its size bound in bytes (``None``: the default)."""
    global _CACHE, _CACHE_ROOT, _MAX_BYTES
    with _GLOCK:
        if max_bytes is not _UNSET:
            _MAX_BYTES = max_bytes  # type: ignore[assignment]
        _CACHE_ROOT = default_root() if root is None else root
        _CACHE = Cache(_CACHE_ROOT, _MAX_BYTES)
        return _CACHE


def set_default_root(root: str | None) -> None:
    """The root the process-wide cache gets on first use if nobody :func:`configure` d one
    (``connect()`` / ``serve`` pass ``config.from_env().cache_dir`` here; None: no change).
    A cache already in use keeps its root."""
    global _CACHE_ROOT
    if root is None:
        return
    with _GLOCK:
        if _CACHE is None and _CACHE_ROOT is None:
            _CACHE_ROOT = root


def set_max_bytes(max_bytes: int | None) -> None:
    """Set the size bound of the process-wide cache (now and for later ``configure``)."""
    global _MAX_BYTES
    with _GLOCK:
        _MAX_BYTES = max_bytes
        if _CACHE is not None:
            _CACHE.max_bytes = max_bytes


def get_cache() -> Cache:
    """The process-wide cache (created on first use with the configured root, else the default)."""
    global _CACHE
    if _CACHE is None:
        with _GLOCK:
            if _CACHE is None:
                _CACHE = Cache(default_root() if _CACHE_ROOT is None else _CACHE_ROOT, _MAX_BYTES)
    return _CACHE
