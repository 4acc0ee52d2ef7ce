"""The in-process tier: a cachetools cache bounded in entries and bytes, guarded by one lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import cachetools

__all__ = ["Entry", "LocalTier"]

#: Bytes counted per entry on top of its encoded value and key (the Python objects around them).
ENTRY_OVERHEAD_BYTES = 200


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached value as this process holds it.

    ``value`` is read-only (containers frozen). Times: ``expires_at`` and ``refresh_at`` are
    wall-clock seconds shared by every process (``refresh_at`` 0: no refresh-ahead);
    ``checked_until`` and ``drop_at`` are this process's monotonic seconds: the copy is served
    without asking the shared tier until ``checked_until``, and kept (for ``stale_on_error``)
    until ``drop_at``.
    """

    value: Any
    version: int
    size: int
    expires_at: float
    refresh_at: float
    checked_until: float
    drop_at: float


class _TimedLRU(cachetools.TLRUCache[Any, Entry]):
    """Entries leave at their ``drop_at`` first, then least recently used."""

    def __init__(self, maxsize: int, getsizeof: Any) -> None:
        super().__init__(maxsize, ttu=lambda _k, e, _now: e.drop_at, timer=time.monotonic, getsizeof=getsizeof)


def _counting(base: Any) -> Any:
    """``base`` counting the entries it evicts to make room (``popitem``)."""

    class Counting(base):  # type: ignore[misc,valid-type]
        evictions = 0

        def popitem(self) -> Any:
            item = super().popitem()
            self.evictions += 1
            return item

    return Counting


_POLICIES: dict[str, Any] = {
    "ttl": _counting(_TimedLRU),
    "lru": _counting(cachetools.LRUCache),
    "lfu": _counting(cachetools.LFUCache),
}


class LocalTier:
    """A bounded in-process cache; every method is thread-safe.

    Parameters:
        policy: ``ttl``, ``lru`` or ``lfu``.
        max_entries: entries kept (0: nothing is kept).
        max_bytes: sum of entry sizes kept.
    """

    def __init__(self, policy: str, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self._cache: Any = _POLICIES[policy](max_bytes, getsizeof=_size)

    def get(self, key: Any) -> Entry | None:
        with self.lock:
            entry: Entry | None = self._cache.get(key)
        return entry

    def set(self, key: Any, entry: Entry) -> bool:
        """Keep ``entry``; returns False when it cannot fit at all (larger than ``max_bytes``)."""
        if self.max_entries == 0 or entry.size > self.max_bytes:
            self.pop(key)
            return False
        with self.lock:
            cache = self._cache
            if key not in cache:
                while len(cache) >= self.max_entries:
                    cache.popitem()
            cache[key] = entry
        return True

    def pop(self, key: Any) -> None:
        with self.lock:
            self._cache.pop(key, None)

    def drop_namespace(self, namespace: str) -> int:
        """Remove every entry of ``namespace``; returns how many."""
        with self.lock:
            doomed = [k for k in self._cache if k[0] == namespace]
            for k in doomed:
                self._cache.pop(k, None)
        return len(doomed)

    def clear(self) -> None:
        with self.lock:
            self._cache.clear()

    def __len__(self) -> int:
        with self.lock:
            return len(self._cache)

    @property
    def evictions(self) -> int:
        """Entries removed to make room (by count or by bytes) since start."""
        return int(self._cache.evictions)

    @property
    def bytes(self) -> int:
        with self.lock:
            return int(self._cache.currsize)

    def reset_lock(self) -> None:
        """A new lock after ``fork`` (another thread of the parent may have held the old one)."""
        self.lock = threading.Lock()


def _size(entry: Entry) -> int:
    return entry.size
