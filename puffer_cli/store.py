"""Object storage: the only module that talks to fsspec / s3fs.

``open_store(url)`` picks a backend from the URL, like ``lancedb.connect``:

* a path (default ``./puffer-data``)  -> :class:`LocalStore`
* ``memory://[name]``                 -> :class:`MemoryStore` (tests; process-local)
* ``s3://bucket[/prefix]``            -> :class:`S3Store` (AWS, MinIO, moto, ...)

Every backend offers the same primitives, each atomic as docs/format.md says:
``read``/``read_versioned`` (bytes + version token), ``write`` (whole object),
``create`` (create-if-absent, the WAL commit point), ``cas`` (compare-and-swap on
the version token), ``list`` (sorted keys under a prefix, optionally after a key),
``read_range``, ``delete``.  Keys are ``/``-separated and relative to the root.
"""
from __future__ import annotations

import contextvars
import errno
import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequest, StoreError, UnsafeStore

DEFAULT_STORE = "./puffer-data"


@dataclass
class IOStats:
    """Object-store round trips and bytes, for ``performance`` in responses."""

    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def add(self, other: "IOStats") -> None:
        self.requests += other.requests
        self.bytes_read += other.bytes_read
        self.bytes_written += other.bytes_written


_scope: contextvars.ContextVar[IOStats | None] = contextvars.ContextVar("puffer_io", default=None)


class io_scope:
    """``with io_scope() as s:`` counts the store traffic of this thread/task in ``s``."""

    def __enter__(self) -> IOStats:
        self.stats = IOStats()
        self._token = _scope.set(self.stats)
        return self.stats

    def __exit__(self, *exc) -> None:
        _scope.reset(self._token)


def _count(read: int = 0, written: int = 0) -> None:
    s = _scope.get()
    if s is not None:
        s.requests += 1
        s.bytes_read += read
        s.bytes_written += written


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class Store:
    """Common interface. Subclasses implement the primitives."""

    url: str
    #: True when the backend is known to honour create-if-absent / CAS atomically.
    conditional_writes_safe: bool = True
    is_remote = False

    # -- primitives -------------------------------------------------------------
    def read(self, key: str) -> bytes:
        """Whole object; ``FileNotFoundError`` if missing."""
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, version token) or None if missing."""
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> bytes:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        """Write a whole object; readers see the old or the new bytes, never a mix."""
        raise NotImplementedError

    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent. True if created, False if it existed."""
        raise NotImplementedError

    def cas(self, key: str, data: bytes, version: str | None) -> bool:
        """Replace ``key`` if its version is ``version`` (None: create if absent)."""
        raise NotImplementedError

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        """Sorted keys under ``prefix`` (recursive), optionally only those > start_after."""
        raise NotImplementedError

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Immediate 'sub-directories' under prefix (names without slashes)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def sweep_temp(self, prefix: str, older_than_s: float) -> int:
        """Delete temporary files a killed writer left under ``prefix`` (older than
        ``older_than_s``); returns how many. Only a local directory has any: object
        stores write whole objects."""
        return 0

    # -- derived ----------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except FileNotFoundError:
            return False

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for k in keys:
            try:
                self.delete(k)
            except FileNotFoundError:
                pass
        return len(keys)

    def probe_conditional_writes(self) -> bool:
        """Create the same probe key twice; a safe store refuses the second create."""
        key = f"_puffer_probe/{uuid.uuid4().hex}"
        try:
            first = self.create(key, b"1")
            second = self.create(key, b"2")
        finally:
            try:
                self.delete(key)
            except FileNotFoundError:
                pass
        return first and not second

    def require_safe_writes(self, single_writer: bool) -> None:
        """Refuse concurrent-writer use on a store that ignores conditional writes."""
        if single_writer or self.conditional_writes_safe:
            return
        if not getattr(self, "_probed", False):
            self._probe_ok = self.probe_conditional_writes()
            self._probed = True
        if not self._probe_ok:
            raise UnsafeStore(f"store {self.url} ignores conditional writes (If-None-Match)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


# ---------------------------------------------------------------- local disk
class LocalStore(Store):
    """A directory. create = temp + fsync + os.link; cas = lock file + os.replace."""

    def __init__(self, root: str | os.PathLike):
        import fsspec

        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        self.fs = fsspec.filesystem("file")

    def _p(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes:
        try:
            data = self.fs.cat_file(str(self._p(key)))
        except IsADirectoryError:
            raise FileNotFoundError(key)
        _count(read=len(data))
        return data

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Version = inode + mtime + content digest of the one file we read (every
        write makes a new inode via rename, so an identical rewrite is a new version)."""
        try:
            fd = os.open(self._p(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        finally:
            os.close(fd)
        _count(read=len(data))
        return data, f"{st.st_ino}-{st.st_mtime_ns}-{_digest(data)}"

    def read_range(self, key: str, start: int, end: int) -> bytes:
        data = self.fs.cat_file(str(self._p(key)), start=start, end=end)
        _count(read=len(data))
        return data

    def sweep_temp(self, prefix: str, older_than_s: float) -> int:
        base = self._p(prefix)
        if not base.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        n = 0
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if not f.startswith(".tmp-"):
                    continue
                p = os.path.join(dirpath, f)
                try:
                    if os.stat(p).st_mtime < cutoff:
                        os.unlink(p)
                        n += 1
                except FileNotFoundError:
                    pass
        _count()
        return n

    def _tmp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, key: str, data: bytes) -> None:
        path = self._p(key)
        tmp = self._tmp(path, data)
        os.replace(tmp, path)
        self._fsync_dir(path.parent)
        _count(written=len(data))

    def create(self, key: str, data: bytes) -> bool:
        path = self._p(key)
        tmp = self._tmp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
            _count(written=len(data))
        self._fsync_dir(path.parent)
        return True

    def cas(self, key: str, data: bytes, version: str | None) -> bool:
        import fcntl

        path = self._p(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.parent / f".{path.name}.lock"
        with open(lock, "a+b") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                cur = self.read_versioned(key)
                if (cur is None) != (version is None) or (cur is not None and cur[1] != version):
                    return False
                self.write(key, data)
                return True
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        base = self._p(prefix)
        d = base if prefix.endswith("/") or base.is_dir() else base.parent
        out: list[str] = []
        if not d.is_dir():
            _count()
            return out
        for dirpath, dirnames, filenames in os.walk(d):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for f in filenames:
                if f.startswith(".tmp-") or (f.startswith(".") and f.endswith(".lock")):
                    continue
                k = rel + f
                if k.startswith(prefix) and (start_after is None or k > start_after):
                    out.append(k)
        _count()
        out.sort()
        return out

    def list_dirs(self, prefix: str = "") -> list[str]:
        d = self._p(prefix)
        _count()
        if not d.is_dir():
            return []
        return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))

    def delete(self, key: str) -> None:
        _count()
        os.unlink(self._p(key))

    def size(self, key: str) -> int:
        _count()
        p = self._p(key)
        if not p.is_file():
            raise FileNotFoundError(key)
        return p.stat().st_size

    def local_path(self, key: str) -> Path:
        """Local file path of a key (lets readers mmap index files without a copy)."""
        return self._p(key)


# ---------------------------------------------------------------- memory
_MEM_LOCK = threading.RLock()
_MEM_VERSIONS: dict[str, int] = {}
_MEM_COUNTER = 0


class MemoryStore(Store):
    """fsspec's in-memory filesystem; create/cas under one process-wide lock."""

    def __init__(self, name: str = ""):
        import fsspec

        self.fs = fsspec.filesystem("memory")
        self.name = name.strip("/") or "default"
        self.root = f"/puffer/{self.name}"
        self.url = f"memory://{name}"

    def _p(self, key: str) -> str:
        return f"{self.root}/{key}"

    def read(self, key: str) -> bytes:
        with _MEM_LOCK:
            data = self.fs.cat_file(self._p(key))
        _count(read=len(data))
        return data

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        with _MEM_LOCK:
            try:
                data = self.read(key)
            except FileNotFoundError:
                return None
            return data, str(_MEM_VERSIONS.get(self._p(key), 0))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        return self.read(key)[start:end]

    def write(self, key: str, data: bytes) -> None:
        global _MEM_COUNTER
        with _MEM_LOCK:
            self.fs.pipe_file(self._p(key), bytes(data))
            _MEM_COUNTER += 1
            _MEM_VERSIONS[self._p(key)] = _MEM_COUNTER
        _count(written=len(data))

    def create(self, key: str, data: bytes) -> bool:
        with _MEM_LOCK:
            if self.fs.exists(self._p(key)):
                return False
            self.write(key, data)
            return True

    def cas(self, key: str, data: bytes, version: str | None) -> bool:
        with _MEM_LOCK:
            cur = self.read_versioned(key)
            if (cur is None) != (version is None) or (cur is not None and cur[1] != version):
                return False
            self.write(key, data)
            return True

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        _count()
        n = len(self.root) + 1
        with _MEM_LOCK:
            keys = [p[n:] for p in list(self.fs.store) if p.startswith(self.root + "/")]
        return sorted(k for k in keys if k.startswith(prefix) and (start_after is None or k > start_after))

    def list_dirs(self, prefix: str = "") -> list[str]:
        names = set()
        for k in self.list(prefix):
            rest = k[len(prefix):]
            if "/" in rest:
                names.add(rest.split("/", 1)[0])
        return sorted(names)

    def delete(self, key: str) -> None:
        _count()
        with _MEM_LOCK:
            self.fs.rm_file(self._p(key))

    def size(self, key: str) -> int:
        _count()
        with _MEM_LOCK:
            if not self.fs.isfile(self._p(key)):
                raise FileNotFoundError(key)
            return len(self.fs.store[self._p(key)].getvalue())

    def clear(self) -> None:
        """Drop every key of this store (tests)."""
        with _MEM_LOCK:
            for p in [p for p in self.fs.store if p.startswith(self.root + "/")]:
                del self.fs.store[p]


# ---------------------------------------------------------------- S3
class S3Store(Store):
    """S3 or any S3-compatible server through s3fs. create = If-None-Match: *,
    cas = If-Match: etag. ``conditional_writes_safe`` is established by a probe."""

    conditional_writes_safe = False  # until probed
    is_remote = True

    def __init__(self, url: str, endpoint_url: str | None = None, **options):
        import s3fs

        rest = url[len("s3://"):].strip("/")
        if not rest:
            raise InvalidRequest(f"store URL {url!r} names no bucket", hint="use s3://bucket[/prefix]")
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.url = url
        endpoint_url = endpoint_url or os.environ.get("PUFFER_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = {}
        if endpoint_url:
            client_kwargs["endpoint_url"] = endpoint_url
        config_kwargs = {"s3": {"addressing_style": "path"}} if endpoint_url else {}
        self.fs = s3fs.S3FileSystem(
            use_listings_cache=False, skip_instance_cache=True,
            client_kwargs=client_kwargs, config_kwargs=config_kwargs, **options,
        )

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _p(self, key: str) -> str:
        return f"{self.bucket}/{self._k(key)}"

    def _sync(self, fn):
        from fsspec.asyn import sync

        return sync(self.fs.loop, fn)

    def _wrap(self, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except (FileNotFoundError, FileExistsError):
            raise
        except PermissionError as e:
            raise StoreError(f"permission denied on {self.url}: {e}", hint="check AWS credentials") from e

    def read(self, key: str) -> bytes:
        data = self._wrap(self.fs.cat_file, self._p(key))
        _count(read=len(data))
        return data

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        async def get():
            try:
                resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self._k(key))
            except FileNotFoundError:
                return None
            body = resp["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            return data, resp["ETag"]

        out = self._sync(get)
        _count(read=len(out[0]) if out else 0)
        return out

    def read_range(self, key: str, start: int, end: int) -> bytes:
        data = self._wrap(self.fs.cat_file, self._p(key), start=start, end=end)
        _count(read=len(data))
        return data

    def write(self, key: str, data: bytes) -> None:
        self._wrap(self.fs.pipe_file, self._p(key), data)
        _count(written=len(data))

    def create(self, key: str, data: bytes) -> bool:
        _count(written=len(data))
        try:
            self.fs.pipe_file(self._p(key), data, mode="create")
            return True
        except FileExistsError:
            return False

    def cas(self, key: str, data: bytes, version: str | None) -> bool:
        if version is None:
            return self.create(key, data)
        _count(written=len(data))
        try:
            self.fs.pipe_file(self._p(key), data, IfMatch=version)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EBUSY) or "PreconditionFailed" in str(e) or "412" in str(e):
                return False
            raise

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        full_prefix = self._k(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        async def go():
            out, token = [], None
            while True:
                kw = {"Bucket": self.bucket, "Prefix": full_prefix}
                if start_after is not None:
                    kw["StartAfter"] = self._k(start_after)
                if token:
                    kw["ContinuationToken"] = token
                resp = await self.fs._call_s3("list_objects_v2", **kw)
                _count()
                out.extend(o["Key"][strip:] for o in resp.get("Contents", []))
                if not resp.get("IsTruncated"):
                    return out
                token = resp["NextContinuationToken"]

        return sorted(self._sync(go))

    def list_dirs(self, prefix: str = "") -> list[str]:
        full_prefix = self._k(prefix) if prefix else (self.prefix + "/" if self.prefix else "")

        async def go():
            out, token = [], None
            while True:
                kw = {"Bucket": self.bucket, "Prefix": full_prefix, "Delimiter": "/"}
                if token:
                    kw["ContinuationToken"] = token
                resp = await self.fs._call_s3("list_objects_v2", **kw)
                _count()
                out.extend(p["Prefix"][len(full_prefix):].rstrip("/") for p in resp.get("CommonPrefixes", []))
                if not resp.get("IsTruncated"):
                    return out
                token = resp["NextContinuationToken"]

        return sorted(self._sync(go))

    def delete(self, key: str) -> None:
        _count()
        self.fs.rm_file(self._p(key))

    def size(self, key: str) -> int:
        _count()
        info = self.fs.info(self._p(key), refresh=True)
        return int(info["size"])

    def require_safe_writes(self, single_writer: bool) -> None:
        Store.require_safe_writes(self, single_writer)


_STORES: dict[tuple, Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(url: str | None = None, *, s3_endpoint: str | None = None) -> Store:
    """Open the store named by ``url`` (or $PUFFER_STORE, or ./puffer-data).

    Instances are cached per (url, endpoint) so a process shares one s3fs client.
    """
    url = url or os.environ.get("PUFFER_STORE") or DEFAULT_STORE
    key = (url, s3_endpoint)
    with _STORES_LOCK:
        if key in _STORES:
            return _STORES[key]
        if url.startswith("memory://"):
            st: Store = MemoryStore(url[len("memory://"):])
        elif url.startswith("s3://"):
            st = S3Store(url, endpoint_url=s3_endpoint)
        elif "://" in url and not url.startswith("file://"):
            raise InvalidRequest(
                f"unsupported store URL {url!r}",
                hint="use a local path, memory://, or s3://bucket/prefix",
            )
        else:
            st = LocalStore(url[len("file://"):] if url.startswith("file://") else url)
        _STORES[key] = st
        return st


def now_ms() -> int:
    return int(time.time() * 1000)
