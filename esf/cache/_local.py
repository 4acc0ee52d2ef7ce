"""The in-process tier: a cachetools cache bounded in entries and bytes, guarded by one lock."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
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


class _Tracked:
    """Mixed into a cachetools class: counts evictions and keeps ``mirror`` (the lock-free read index) in step
    with every entry cachetools removes by itself."""

    evictions = 0
    mirror: dict[Any, Entry]

    def popitem(self) -> Any:
        item = super().popitem()  # type: ignore[misc]
        self.evictions += 1
        self.mirror.pop(item[0], None)
        return item

    def expire(self, time: Any = None) -> Any:
        expired = super().expire(time)  # type: ignore[misc]
        for key, _ in expired:
            self.mirror.pop(key, None)
        return expired


class _TrackedTimedLRU(_Tracked, _TimedLRU):
    pass


class _TrackedLRU(_Tracked, cachetools.LRUCache[Any, Entry]):
    pass


class _TrackedLFU(_Tracked, cachetools.LFUCache[Any, Entry]):
    pass


_POLICIES: dict[str, Any] = {"ttl": _TrackedTimedLRU, "lru": _TrackedLRU, "lfu": _TrackedLFU}

#: Keys read lock-free and not yet applied to the policy's recency/frequency (older ones are dropped).
READ_BUFFER = 4096


class LocalTier:
    """A bounded in-process cache; every method is thread-safe.

    Hits read ``mirror`` (a plain dict, without the lock) and note the key in ``reads``; the lock holder
    applies those reads to the eviction policy before it next changes the cache (a lossy read buffer, as
    in Caffeine), so LRU and LFU decisions follow the reads without a lock on every hit.

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
        self.mirror: dict[Any, Entry] = {}
        self._cache.mirror = self.mirror
        self.reads: deque[Any] = deque(maxlen=READ_BUFFER)

    def get(self, key: Any) -> Entry | None:
        with self.lock:
            self._drain()
            try:
                entry: Entry = self._cache[key]
            except KeyError:
                return None
        return entry

    def _drain(self) -> None:
        """Apply the buffered lock-free reads to the policy (the caller holds the lock)."""
        reads, cache = self.reads, self._cache
        while reads:
            try:
                cache[reads.popleft()]
            except (KeyError, IndexError):
                pass

    def drain(self) -> None:
        with self.lock:
            self._drain()

    def set(self, key: Any, entry: Entry) -> bool:
        """Keep ``entry``; returns False when it cannot fit at all (larger than ``max_bytes``)."""
        if self.max_entries == 0 or entry.size > self.max_bytes:
            self.pop(key)
            return False
        with self.lock:
            self._drain()
            cache = self._cache
            if key not in cache:
                while len(cache) >= self.max_entries:
                    cache.popitem()
            cache[key] = entry
            self.mirror[key] = entry
        return True

    def pop(self, key: Any) -> None:
        if key not in self.mirror:
            return
        with self.lock:
            self._cache.pop(key, None)
            self.mirror.pop(key, None)

    def drop_namespace(self, namespace: str) -> int:
        """Remove every entry of ``namespace``; returns how many."""
        with self.lock:
            doomed = [k for k in self.mirror if k[0] == namespace]
            for k in doomed:
                self._cache.pop(k, None)
                self.mirror.pop(k, None)
        return len(doomed)

    def expire_checks(self) -> None:
        """Make every entry ask the shared tier before it is served again (it is still served, until its own
        expiry, while the shared tier cannot answer)."""
        with self.lock:
            for key, entry in list(self.mirror.items()):
                if entry.checked_until > 0.0:
                    checked = dataclasses.replace(entry, checked_until=0.0)
                    if key in self._cache:
                        self._cache[key] = checked
                    self.mirror[key] = checked

    def clear(self) -> None:
        with self.lock:
            evictions = self._cache.evictions
            self._cache.clear()  # MutableMapping.clear pops items one by one: not evictions
            self._cache.evictions = evictions
            self.mirror.clear()
            self.reads.clear()

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
