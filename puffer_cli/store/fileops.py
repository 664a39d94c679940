"""The file operations of the local cache (store/filecache.py): copies (reflink first), atomic
creation, the directory scan eviction uses, and which files this process has open."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from puffer_cli import limits

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


# ---------------------------------------------------------------- copies
def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy ``src`` to the new file ``dst``: a reflink (FICLONE) where the filesystem
    supports it, else ``os.copy_file_range`` (in-kernel), else a user-space copy.
    Returns which one was used."""
    import fcntl

    with open(src, "rb") as fi, open(dst, "wb") as fo:
        try:
            fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
            return "reflink"
        except OSError:
            pass
        size = os.fstat(fi.fileno()).st_size
        if hasattr(os, "copy_file_range"):
            try:
                done = 0
                while done < size:
                    n = os.copy_file_range(fi.fileno(), fo.fileno(), size - done)
                    if n == 0:
                        break
                    done += n
                if done == size:
                    return "copy_file_range"
            except OSError:
                pass
            fi.seek(0)
            fo.seek(0)
            fo.truncate()
        shutil.copyfileobj(fi, fo, 1 << 20)
        return "copy"


# ---------------------------------------------------------------- in use
def open_paths(prefix: str) -> set[str]:
    """Files under ``prefix`` this process has mapped or open (Linux /proc; else empty)."""
    out: set[str] = set()
    try:
        with open("/proc/self/maps", "rb") as f:
            for line in f:
                i = line.find(b" /")
                if i < 0:
                    continue
                p = line[i + 1 :].rstrip(b"\n").decode("utf-8", "surrogateescape")
                if p.endswith(" (deleted)"):
                    continue
                if p.startswith(prefix):
                    out.add(p)
    except OSError:
        pass
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                p = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if p.startswith(prefix):
                out.add(p)
    except OSError:
        pass
    return out


def unwritable(e: OSError) -> bool:
    return e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT)


def touch(p: Path) -> None:
    """Mark ``p`` used now (its mtime is the LRU clock; content never changes)."""
    with contextlib.suppress(OSError):
        os.utime(p)


def write_atomic(p: Path, fill) -> None:
    """Create ``p`` from a temp file filled by ``fill(tmp_path)``, then rename; a
    concurrent eviction may remove the (empty) parent directory in between: retry."""
    for attempt in range(3):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            fill(tmp)
            os.replace(tmp, p)
            return
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if attempt == 2:
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def scan(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Cached files under ``root`` with their stat; removes temp files of killed
    fetches; skips files that are not cache entries (tantivy's lock files)."""
    stale = time.time() - limits.CACHE_STALE_TMP_S
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        continue
                    if not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.name.startswith(".tmp-"):
                    if st.st_mtime < stale:
                        with contextlib.suppress(OSError):
                            os.unlink(e.path)
                    continue
                if e.name.startswith(".tantivy"):
                    continue
                yield e.path, st


def prune_empty(top: Path, root: Path) -> None:
    """Remove empty directories under ``top`` (bottom-up; never ``root`` itself)."""
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        if Path(dirpath) == root:
            continue
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
