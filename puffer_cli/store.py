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

import asyncio
import builtins
import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import layout, limits
from .errors import InvalidRequest, PufferError, StoreError, UnsafeStore

log = logging.getLogger("puffer.store")

DEFAULT_STORE = "./puffer-data"


@dataclass
class IOStats:
    """Object-store round trips and bytes, for ``performance`` in responses."""

    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each remote request

    def add(self, other: IOStats) -> None:
        self.requests += other.requests
        self.bytes_read += other.bytes_read
        self.bytes_written += other.bytes_written
        self.spans.extend(other.spans)

    @property
    def round_trips(self) -> int:
        """Sequential round trips to the object store: requests that overlap in time (one
        parallel batch) count once; a request started after every earlier one ended starts
        the next round trip.  0 on a local store (no remote requests)."""
        n, end = 0, float("-inf")
        for a, b in sorted(self.spans):
            if a > end:
                n += 1
            end = max(end, b)
        return n


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
    _probe_guard = threading.Lock()  # one probe at a time (per process; probes are rare)
    probe_reason = ""
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

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
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

    def _probe_create(self, key: str, data: bytes) -> bool:
        """``create`` as the probe's race runs it (S3: with a short deadline, so a server
        that hangs on concurrent conditional creates cannot hang the probe)."""
        return self.create(key, data)

    def probe_conditional_writes(self) -> bool:
        """Is create-if-absent atomic here? Sequentially, a second create of one key
        must be refused; concurrently, two creates of one key must resolve within
        ``limits.S3_PROBE_TIMEOUT_S``, exactly one winning. ``self.probe_reason`` says
        what failed."""
        self.probe_reason = ""
        base = f"{layout.PROBE_DIR}{uuid.uuid4().hex}"
        seq_key, race_key = f"{base}/seq", f"{base}/race"
        made: list[str] = []
        try:
            first = self.create(seq_key, b"1")  # (this also warms an S3 client up: the race below is timed)
            made.append(seq_key)
            second = self.create(seq_key, b"2")
            if not (first and not second):
                self.probe_reason = "it accepted a second create-if-absent (If-None-Match: *) of one key"
                return False
            results: list = [None, None]
            made.append(race_key)

            def go(i: int) -> None:
                try:
                    results[i] = self._probe_create(race_key, b"%d" % i)
                except Exception as e:  # noqa: BLE001 - a timeout here is the answer, not an error
                    results[i] = e

            ts = [threading.Thread(target=go, args=(i,), daemon=True, name="puffer-probe") for i in (0, 1)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(limits.S3_PROBE_TIMEOUT_S + 2)
            if sorted(map(repr, results)) != ["False", "True"]:
                got = ", ".join(
                    "no answer" if r is None else str(r) if isinstance(r, bool) else type(r).__name__ for r in results
                )
                self.probe_reason = (
                    f"two concurrent create-if-absent of one key did not resolve to one winner "
                    f"within {limits.S3_PROBE_TIMEOUT_S:g} s (got: {got})"
                )
                return False
            return True
        finally:
            for k in made:
                try:
                    self.delete(k)
                except Exception:  # noqa: BLE001 - best effort; the probe keys are tiny
                    pass

    def require_safe_writes(self, single_writer: bool) -> None:
        """Refuse concurrent-writer use on a store whose conditional writes are not
        atomic (probed once per store instance)."""
        if single_writer or self.conditional_writes_safe:
            return
        with self._probe_guard:
            if getattr(self, "_probe_ok", None) is None:
                self._probe_ok = self.probe_conditional_writes()
        if not self._probe_ok:
            raise UnsafeStore(f"store {self.url} is unsafe for concurrent writers: {self.probe_reason}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


# ---------------------------------------------------------------- local disk
def _local_op(what: str):
    """Run a LocalStore primitive under ``LocalStore._os`` (its first argument is the key)."""

    def deco(fn):
        @functools.wraps(fn)
        def run(self, key="", *a, **kw):
            with self._os(what, key):
                return fn(self, key, *a, **kw)

        return run

    return deco


class LocalStore(Store):
    """A directory. create = temp + fsync + os.link; cas = lock file + os.replace."""

    def __init__(self, root: str | os.PathLike):
        import fsspec

        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        self.fs = fsspec.filesystem("file")
        p = self.root  # the store directory need not exist yet, but what does exist must be a directory
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            raise InvalidRequest(
                f"store path {self.root} is not a directory ({p} is a file)",
                hint="pass --store a directory (it is created on the first write), memory:// or s3://bucket/prefix",
            )
        if p == self.root and not os.access(p, os.R_OK | os.X_OK):
            raise StoreError(
                f"cannot read the store directory {self.root}: permission denied",
                hint="fix its permissions or pass --store a directory you can read",
            )

    def _p(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def _os(self, what: str, key: str):
        """Translate OS errors of one operation: a missing key stays FileNotFoundError;
        permissions, a read-only or full disk, a file in the way become StoreError."""
        try:
            yield
        except FileNotFoundError as e:
            if what not in ("write", "create"):
                raise  # a missing key
            raise StoreError(
                f"cannot {what} {key!r} in the store {self.root}: {e.strerror} ({e.filename})",
                hint="pass --store a directory that can be created and written",
            ) from e
        except (NotADirectoryError, FileExistsError, IsADirectoryError) as e:
            if what == "read":
                raise FileNotFoundError(key) from e
            raise StoreError(
                f"cannot {what} {key!r} in the store {self.root}: {e.strerror} ({e.filename})",
                hint="a file or directory is in the way; pass --store a directory puffer owns",
            ) from e
        except PermissionError as e:
            raise StoreError(
                f"cannot {what} {key!r} in the store {self.root}: permission denied ({e.filename})",
                hint="fix the directory's permissions or pass --store a directory you can write",
            ) from e
        except OSError as e:
            raise StoreError(
                f"cannot {what} {key!r} in the store {self.root}: {e.strerror or e}",
                hint="check the disk (space, read-only mount) or pass another --store",
            ) from e

    @_local_op("read")
    def read(self, key: str) -> bytes:
        try:
            data = self.fs.cat_file(str(self._p(key)))
        except IsADirectoryError:
            raise FileNotFoundError(key) from None
        _count(read=len(data))
        return data

    @_local_op("read")
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

    @_local_op("read")
    def read_range(self, key: str, start: int, end: int) -> bytes:
        data = self.fs.cat_file(str(self._p(key)), start=start, end=end)
        _count(read=len(data))
        return data

    @_local_op("clean")
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

    @_local_op("write")
    def write(self, key: str, data: bytes) -> None:
        path = self._p(key)
        tmp = self._tmp(path, data)
        os.replace(tmp, path)
        self._fsync_dir(path.parent)
        _count(written=len(data))

    @_local_op("create")
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

    @_local_op("write")
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

    @_local_op("list")
    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        base = self._p(prefix)
        d = base if prefix.endswith("/") or base.is_dir() else base.parent
        out: list[str] = []
        if not d.is_dir():
            _count()
            return out
        for dirpath, _dirnames, filenames in os.walk(d):
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

    @_local_op("list")
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        d = self._p(prefix)
        _count()
        if not d.is_dir():
            return []
        return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))

    @_local_op("delete")
    def delete(self, key: str) -> None:
        _count()
        os.unlink(self._p(key))

    @_local_op("stat")
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

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        names = set()
        for k in self.list(prefix):
            rest = k[len(prefix) :]
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
class _Precondition(Exception):
    """A conditional PUT was refused (HTTP 412): for create "exists", for cas "stale"."""


class _Transient(Exception):
    """A failure worth retrying; ``error`` is what to raise once the deadline is spent."""

    def __init__(self, error: PufferError, unreachable: bool = False):
        super().__init__(str(error))
        self.error = error
        self.unreachable = unreachable


_RETRY_CODES = {
    "ConditionalRequestConflict",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "TooManyRequests",
}
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidSecurity",
}
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def _check_endpoint(endpoint: str) -> None:
    try:
        u = urllib.parse.urlsplit(endpoint)
        ok = u.scheme in ("http", "https") and bool(u.hostname) and (u.port is None or u.port > 0)
    except ValueError:
        ok = False
    if not ok:
        raise InvalidRequest(
            f"S3 endpoint {endpoint!r} is not a URL",
            hint="pass --s3-endpoint http(s)://host[:port] (or unset PUFFER_S3_ENDPOINT)",
        )


class S3Store(Store):
    """S3 or any S3-compatible server through s3fs. create = If-None-Match: *,
    cas = If-Match: etag. ``conditional_writes_safe`` is established by a probe.

    Every S3 request goes through :meth:`_call`: it retries transient failures
    (409 ConditionalRequestConflict, 5xx, throttling, connection resets, timeouts)
    with jittered exponential backoff until a deadline, and :meth:`_translate` turns
    every botocore/aiohttp/s3fs error into FileNotFoundError, a refused precondition,
    or a typed :class:`StoreError` naming the endpoint and bucket."""

    conditional_writes_safe = False  # until probed
    is_remote = True

    def __init__(self, url: str, endpoint_url: str | None = None, **options):
        import s3fs

        rest = url[len("s3://") :]
        if rest.startswith("/") or not rest.strip("/"):
            raise InvalidRequest(f"store URL {url!r} names no bucket", hint="use s3://bucket[/prefix]")
        self.bucket, _, prefix = rest.strip("/").partition("/")
        if not _BUCKET_RE.match(self.bucket):
            raise InvalidRequest(
                f"store URL {url!r}: {self.bucket!r} is not a valid bucket name",
                hint="use s3://bucket[/prefix] with a bucket of letters, digits, '.', '-'",
            )
        self.prefix = prefix.strip("/")
        self.url = url
        endpoint_url = endpoint_url or os.environ.get("PUFFER_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint_url:
            _check_endpoint(endpoint_url)
        self.endpoint = endpoint_url or "AWS S3"
        client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
        # botocore and s3fs make one attempt each; _call owns retries (and their deadline)
        config_kwargs: dict = {
            "connect_timeout": limits.S3_CONNECT_TIMEOUT_S,
            "read_timeout": limits.S3_READ_TIMEOUT_S,
            "retries": {"total_max_attempts": 1},
        }
        if endpoint_url:
            config_kwargs["s3"] = {"addressing_style": "path"}
        self.fs = s3fs.S3FileSystem(
            use_listings_cache=False,
            skip_instance_cache=True,
            client_kwargs=client_kwargs,
            config_kwargs=config_kwargs,
            **options,
        )
        self.fs.retries = 1  # s3fs's own retry loop (a class attribute); _call retries instead

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _p(self, key: str) -> str:
        return f"{self.bucket}/{self._k(key)}"

    # -- the one wrapper ----------------------------------------------------------
    def _call(self, what: str, key: str, make, *, deadline_s: float | None = None, retry_check=None):
        """Run ``make()`` (a coroutine factory: one S3 operation) on s3fs's loop.

        Transient failures are retried with jittered backoff until ``deadline_s``
        (default ``limits.S3_RETRY_DEADLINE_S``; an unreachable endpoint gets
        ``S3_UNREACHABLE_DEADLINE_S``). With ``deadline_s`` each attempt is also cut
        off at the deadline (the probe uses that). ``retry_check()`` runs after a
        refused precondition: True means an earlier attempt of ours landed and only
        its response was lost (we retried, or aiohttp silently re-sent the PUT on a
        keep-alive connection the server had dropped), so the call succeeded.
        Raises FileNotFoundError, _Precondition or a PufferError; never a
        botocore/aiohttp exception."""
        from fsspec.asyn import sync

        start = time.monotonic()
        hard = deadline_s is not None
        deadline = start + (deadline_s if deadline_s is not None else limits.S3_RETRY_DEADLINE_S)
        attempt = 0
        scope = _scope.get()
        while True:
            t0 = time.perf_counter()
            try:
                left = deadline - time.monotonic()
                out = sync(self.fs.loop, make, timeout=max(left, 0.01) if hard else None)
                if scope is not None:
                    scope.spans.append((t0, time.perf_counter()))
                return out
            except Exception as e:  # noqa: BLE001 - every failure goes through _translate
                if scope is not None:
                    scope.spans.append((t0, time.perf_counter()))
                err = self._translate(e, what, key)
                if isinstance(err, _Precondition):
                    if retry_check is not None and retry_check():
                        return None  # our earlier attempt landed; its response was lost
                    raise err from None
                if not isinstance(err, _Transient):
                    if err is e:
                        raise
                    raise err from e
                end = deadline if not err.unreachable else min(deadline, start + limits.S3_UNREACHABLE_DEADLINE_S)
                pause = random.uniform(0, min(limits.S3_RETRY_MAX_S, limits.S3_RETRY_BASE_S * 2**attempt))
                if time.monotonic() + pause >= end:
                    final = err.error
                    final.message += f" (gave up after {attempt + 1} attempts in {time.monotonic() - start:.1f} s)"
                    raise final from e
                log.debug("S3 %s %s: retrying after %s", what, key, err)
                time.sleep(pause)
                attempt += 1

    def _translate(self, e: BaseException, what: str, key: str) -> BaseException:
        """One place that maps an s3fs/botocore/aiohttp failure to what store.py raises."""
        import botocore.exceptions as bex

        where = f"bucket {self.bucket!r} at {self.endpoint}"
        chain: builtins.list[BaseException] = []
        x: BaseException | None = e
        while x is not None and len(chain) < 6:
            chain.append(x)
            x = x.__cause__ or x.__context__
        client = next((c for c in chain if isinstance(c, bex.ClientError)), None)
        if client is not None:
            err = client.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(client.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            msg = err.get("Message") or code
            if code == "PreconditionFailed" or status == 412:
                return _Precondition(code)
            if code == "NoSuchBucket":
                return StoreError(
                    f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}",
                    hint=f"create it (e.g. `aws s3 mb s3://{self.bucket}`) or fix --store / --s3-endpoint",
                )
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return FileNotFoundError(key)
            if code in _AUTH_CODES or status in (401, 403):
                return StoreError(
                    f"S3 access denied ({code or status}) to {where} on {what} {key!r}: {msg}",
                    hint="check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy",
                )
            if code in _RETRY_CODES or status in (409, 429) or status >= 500:
                return _Transient(
                    StoreError(
                        f"S3 {what} {key!r} failed on {where}: {code or status} {msg}",
                        hint="the S3 server is overloaded or failing; retry later",
                    )
                )
            return StoreError(f"S3 {what} {key!r} failed on {where}: {code or status} {msg}")
        if isinstance(e, FileExistsError):
            return _Precondition("exists")
        if isinstance(e, FileNotFoundError):
            return FileNotFoundError(key)
        if isinstance(e, (PufferError, _Precondition)):
            return e
        if any(isinstance(c, (bex.NoCredentialsError, bex.PartialCredentialsError)) for c in chain):
            return StoreError(
                f"no AWS credentials found for {where}",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            )
        if any(isinstance(c, (asyncio.TimeoutError, asyncio.CancelledError, bex.ReadTimeoutError)) for c in chain):
            return _Transient(
                StoreError(
                    f"S3 {what} {key!r} on {where} got no answer in time",
                    hint="the S3 server is slow or hanging; retry later",
                )
            )
        unreachable = StoreError(
            f"cannot reach the S3 endpoint {self.endpoint} for bucket {self.bucket!r}: "
            f"{type(chain[-1]).__name__}: {chain[-1]}",
            hint="check --s3-endpoint / PUFFER_S3_ENDPOINT and that the server is up",
        )
        try:
            import aiohttp

            net: tuple = (aiohttp.ClientError,)
        except ImportError:  # pragma: no cover
            net = ()
        if any(isinstance(c, (bex.EndpointConnectionError, bex.ConnectTimeoutError)) for c in chain) or any(
            isinstance(c, ConnectionRefusedError) for c in chain
        ):
            return _Transient(unreachable, unreachable=True)
        if any(isinstance(c, (bex.HTTPClientError, bex.ConnectionError, ConnectionError, *net)) for c in chain):
            return _Transient(unreachable)
        if isinstance(e, ValueError) and "endpoint" in str(e).lower():
            return InvalidRequest(
                f"S3 endpoint {self.endpoint!r} is invalid: {e}", hint="pass --s3-endpoint http(s)://host[:port]"
            )
        if isinstance(e, (bex.BotoCoreError, OSError, *net)):
            return StoreError(f"S3 {what} {key!r} failed on {where}: {type(e).__name__}: {e}")
        return e  # a bug in puffer, not a store failure: let it surface as one

    # -- primitives ---------------------------------------------------------------
    def read(self, key: str) -> bytes:
        data = self._call("read", key, lambda: self.fs._cat_file(self._p(key)))
        _count(read=len(data))
        return data

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        async def get():
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self._k(key))
            body = resp["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            return data, resp["ETag"]

        try:
            out = self._call("read", key, get)
        except FileNotFoundError:
            out = None
        _count(read=len(out[0]) if out else 0)
        return out

    def read_range(self, key: str, start: int, end: int) -> bytes:
        data = self._call("read", key, lambda: self.fs._cat_file(self._p(key), start=start, end=end))
        _count(read=len(data))
        return data

    def write(self, key: str, data: bytes) -> None:
        self._call("write", key, lambda: self.fs._pipe_file(self._p(key), data))
        _count(written=len(data))

    def _is_ours(self, key: str, data: bytes) -> bool:
        """After a conditional PUT was refused: did an earlier attempt of ours land (its
        response lost)? Then the object holds exactly our bytes. (puffer's creates and
        CAS payloads differ between writers and from what they replace: WAL entries
        carry a nonce, leases a holder and times.)"""
        got = self.read_versioned(key)
        return got is not None and got[0] == data

    def _create(self, key: str, data: bytes, deadline_s: float | None = None) -> bool:
        _count(written=len(data))
        try:
            self._call(
                "create",
                key,
                lambda: self.fs._pipe_file(self._p(key), data, mode="create"),
                deadline_s=deadline_s,
                retry_check=lambda: self._is_ours(key, data),
            )
            return True
        except _Precondition:
            return False

    def create(self, key: str, data: bytes) -> bool:
        return self._create(key, data)

    def _probe_create(self, key: str, data: bytes) -> bool:
        return self._create(key, data, deadline_s=limits.S3_PROBE_TIMEOUT_S)

    def cas(self, key: str, data: bytes, version: str | None) -> bool:
        if version is None:
            return self.create(key, data)
        _count(written=len(data))
        try:
            self._call(
                "cas",
                key,
                lambda: self.fs._pipe_file(self._p(key), data, IfMatch=version),
                retry_check=lambda: self._is_ours(key, data),
            )
            return True
        except (_Precondition, FileNotFoundError):  # stale version, or the object is gone
            return False

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        full_prefix = self._k(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        async def go():
            out: builtins.list[str] = []
            token = None
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

        return sorted(self._call("list", prefix, go))

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        full_prefix = self._k(prefix) if prefix else (self.prefix + "/" if self.prefix else "")

        async def go():
            out: builtins.list[str] = []
            token = None
            while True:
                kw = {"Bucket": self.bucket, "Prefix": full_prefix, "Delimiter": "/"}
                if token:
                    kw["ContinuationToken"] = token
                resp = await self.fs._call_s3("list_objects_v2", **kw)
                _count()
                out.extend(p["Prefix"][len(full_prefix) :].rstrip("/") for p in resp.get("CommonPrefixes", []))
                if not resp.get("IsTruncated"):
                    return out
                token = resp["NextContinuationToken"]

        return sorted(self._call("list", prefix, go))

    def delete(self, key: str) -> None:
        _count()
        self._call("delete", key, lambda: self.fs._rm_file(self._p(key)))

    def size(self, key: str) -> int:
        _count()
        info = self._call("stat", key, lambda: self.fs._info(self._p(key), refresh=True))
        return int(info["size"])


_STORES: dict[tuple, Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(url: str | None = None, *, s3_endpoint: str | None = None) -> Store:
    """Open the store named by ``url`` (default ./puffer-data; connect() reads $PUFFER_STORE).

    Instances are cached per (url, endpoint) so a process shares one s3fs client.
    """
    url = url or DEFAULT_STORE
    key = (url, s3_endpoint)
    with _STORES_LOCK:
        if key in _STORES:
            return _STORES[key]
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
        _STORES[key] = st
        return st


def now_ms() -> int:
    return int(time.time() * 1000)
