"""The local-disk backend: create-if-absent by temp file + fsync + ``os.link``, CAS under a lock
file + ``os.replace`` (docs/format.md "Commit protocol")."""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from puffer_cli.errors import InvalidRequest, StoreError
from puffer_cli.store import Store, count_io, digest

__all__ = ["LocalStore"]


# ---------------------------------------------------------------- local disk
def _cat(path: Path, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes ``start:end`` of a file, negative offsets counting from its end (fsspec's
    ``cat_file``, without importing fsspec: a local query need not load it)."""
    with open(path, "rb") as f:
        if start is not None:
            f.seek(start if start >= 0 else max(0, os.fstat(f.fileno()).st_size + start))
        if end is not None:
            if end < 0:
                end = os.fstat(f.fileno()).st_size + end
            return f.read(end - f.tell())
        return f.read()


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
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
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
            data = _cat(self._p(key))
        except IsADirectoryError:
            raise FileNotFoundError(key) from None
        count_io(read=len(data))
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
        count_io(read=len(data))
        return data, f"{st.st_ino}-{st.st_mtime_ns}-{digest(data)}"

    @_local_op("read")
    def read_range(self, key: str, start: int, end: int) -> bytes:
        data = _cat(self._p(key), start, end)
        count_io(read=len(data))
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
        count_io()
        return n

    def _tmp(self, path: Path, data: bytes | Iterable[bytes]) -> Path:
        """A new temporary file beside ``path`` holding ``data`` (bytes, or chunks written
        one at a time), synced."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            fd = -1
            tmp.unlink(missing_ok=True)  # a chunk's producer failed: no half-written leftover
            raise
        finally:
            if fd >= 0:
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
        count_io(written=len(data))

    @_local_op("write")
    def write_chunks(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._p(key)
        tmp = self._tmp(path, chunks)
        n = tmp.stat().st_size
        os.replace(tmp, path)
        self._fsync_dir(path.parent)
        count_io(written=n)
        return n

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
            count_io(written=len(data))
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
            count_io()
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
        count_io()
        out.sort()
        return out

    @_local_op("list")
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        d = self._p(prefix)
        count_io()
        if not d.is_dir():
            return []
        return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))

    @_local_op("delete")
    def delete(self, key: str) -> None:
        count_io()
        os.unlink(self._p(key))

    def change_token(self, key: str) -> str | None:
        """inode, size, mtime and ctime (ns) of the file, one ``stat``: every write of a key
        is a new file renamed over it (a new inode while the old one is still held)."""
        count_io()
        try:
            st = os.stat(os.path.join(self.url, key))
        except (FileNotFoundError, NotADirectoryError):
            return ""
        except OSError:
            return None  # let the read report it
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    def exists(self, key: str) -> bool:
        """One ``stat`` (the strong-read head check makes two per query)."""
        count_io()
        return os.path.isfile(os.path.join(self.url, key))

    @_local_op("stat")
    def size(self, key: str) -> int:
        count_io()
        p = self._p(key)
        if not p.is_file():
            raise FileNotFoundError(key)
        return p.stat().st_size

    def local_path(self, key: str) -> Path:
        """Local file path of a key (lets readers mmap index files without a copy)."""
        return self._p(key)
