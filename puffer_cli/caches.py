"""The registry of process-wide in-memory caches: named, bounded LRU caches.

``lru(name, maxsize)`` creates (or returns) a registered cache; its keys are tuples that
start with ``(store_url, namespace)`` for entries that belong to one namespace, so
:func:`forget` can drop a namespace's entries from every registered cache at once (the
server calls it when a namespace leaves its working set, or is deleted).  :func:`stats`
reports every cache's size, bound, hits, misses and evictions (``/metrics``, tests).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

_MISSING = object()


class LRU:
    """A thread-safe bounded LRU map; the least recently used entry goes when it is full."""

    def __init__(self, name: str, maxsize: int, maxbytes: int | None = None, weigh: Callable[[Any], int] | None = None):
        self.name = name
        self.maxsize = max(1, int(maxsize))
        #: optional bound on the sum of ``weigh(value)`` (e.g. bytes of decoded arrays)
        self.maxbytes = maxbytes
        self.weigh = weigh
        self.nbytes = 0
        self._d: OrderedDict[Hashable, Any] = OrderedDict()
        # reentrant: dropping an entry can free a frame whose finalizer drops entries (text.bm25)
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            v = self._d.get(key, _MISSING)
            if v is _MISSING:
                self.misses += 1
                return default
            self._d.move_to_end(key)
            self.hits += 1
            return v

    def _w(self, value: Any) -> int:
        return int(self.weigh(value)) if self.weigh is not None else 0

    def _evict(self) -> None:
        while len(self._d) > self.maxsize or (
            self.maxbytes is not None and self.nbytes > self.maxbytes and len(self._d) > 1
        ):
            _k, v = self._d.popitem(last=False)
            self.nbytes -= self._w(v)
            self.evictions += 1

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            old = self._d.get(key, _MISSING)
            if old is not _MISSING:
                self.nbytes -= self._w(old)
            self._d[key] = value
            self.nbytes += self._w(value)
            self._d.move_to_end(key)
            self._evict()

    def setdefault(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value at ``key``, else ``make()`` stored there (atomically: one value per key)."""
        with self._lock:
            v = self._d.get(key, _MISSING)
            if v is not _MISSING:
                self._d.move_to_end(key)
                self.hits += 1
                return v
            self.misses += 1
            v = self._d[key] = make()
            self.nbytes += self._w(v)
            self._evict()
            return v

    def pop(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            v = self._d.pop(key, _MISSING)
            if v is _MISSING:
                return default
            self.nbytes -= self._w(v)
            return v

    def forget(self, store_url: str, namespace: str) -> int:
        """Drop the entries whose key starts with (store_url, namespace); how many."""
        with self._lock:
            gone = [k for k in self._d if isinstance(k, tuple) and k[:2] == (store_url, namespace)]
            for k in gone:
                self.pop(k)
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.nbytes = 0

    def keys(self) -> list[Hashable]:
        """A snapshot of the keys, least recently used first."""
        with self._lock:
            return list(self._d)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.keys())

    def values(self) -> list[Any]:
        with self._lock:
            return list(self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._d


_REGISTRY: dict[str, LRU] = {}
_LOCK = threading.Lock()


def lru(name: str, maxsize: int, maxbytes: int | None = None, weigh: Callable[[Any], int] | None = None) -> LRU:
    """The registered cache ``name`` (created with bound ``maxsize`` on first call; with
    ``maxbytes``, also bounded by the sum of ``weigh(value)`` over its values)."""
    with _LOCK:
        c = _REGISTRY.get(name)
        if c is None:
            c = _REGISTRY[name] = LRU(name, maxsize, maxbytes, weigh)
        return c


def forget(store: Any, namespace: str) -> int:
    """Drop one namespace's entries (keys starting with (store.url, namespace)) from every
    registered cache; returns how many entries went."""
    url = store if isinstance(store, str) else store.url
    with _LOCK:
        caches = list(_REGISTRY.values())
    return sum(c.forget(url, namespace) for c in caches)


def stats() -> dict[str, dict[str, int]]:
    """name -> {size, maxsize, hits, misses, evictions} of every registered cache."""
    with _LOCK:
        caches = list(_REGISTRY.values())
    return {
        c.name: {"size": len(c), "maxsize": c.maxsize, "hits": c.hits, "misses": c.misses, "evictions": c.evictions}
        for c in caches
    }
