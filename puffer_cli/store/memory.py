"""The in-memory backend (``memory://``, tests): fsspec's memory filesystem, one process-wide store;
create and CAS under one process-wide lock."""

from __future__ import annotations

import builtins
import threading

from puffer_cli.store import Store, count_io

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
        count_io(read=len(data))
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

    def change_token(self, key: str) -> str | None:
        """The key's write counter ("" if absent): every write of any key takes a new one."""
        count_io()
        with _MEM_LOCK:
            p = self._p(key)
            return str(_MEM_VERSIONS.get(p, 0)) if p in self.fs.store else ""

    def write(self, key: str, data: bytes) -> None:
        global _MEM_COUNTER
        with _MEM_LOCK:
            self.fs.pipe_file(self._p(key), bytes(data))
            _MEM_COUNTER += 1
            _MEM_VERSIONS[self._p(key)] = _MEM_COUNTER
        count_io(written=len(data))

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
        count_io()
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
        count_io()
        with _MEM_LOCK:
            self.fs.rm_file(self._p(key))

    def size(self, key: str) -> int:
        count_io()
        with _MEM_LOCK:
            if not self.fs.isfile(self._p(key)):
                raise FileNotFoundError(key)
            return len(self.fs.store[self._p(key)].getvalue())

    def clear(self) -> None:
        """Drop every key of this store (tests)."""
        with _MEM_LOCK:
            for p in [p for p in self.fs.store if p.startswith(self.root + "/")]:
                del self.fs.store[p]
