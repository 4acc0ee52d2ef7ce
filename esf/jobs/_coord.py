"""Cross-process coordination: claims, counters, token buckets and leases.

Redis in production (shared by every worker and host); SQLite under
``data_dir`` on one machine. Both implementations are atomic across
processes: Redis through single commands and Lua scripts, SQLite through
``BEGIN IMMEDIATE`` transactions.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._sqlite import SqliteFile
from ..errors import ServiceUnavailable

if TYPE_CHECKING:
    import redis

    from ..resilience import CircuitBreaker


#: Seconds between two deletions of expired rows in the SQLite coordinator.
SWEEP_INTERVAL_S = 60.0


class Coordinator(Protocol):
    """Atomic primitives shared by every process of a deployment."""

    def claim(self, key: str, value: str, ttl_s: float) -> str | None:
        """Store ``value`` at ``key`` for ``ttl_s`` unless present. Returns the existing value, or None if claimed."""

    def get(self, key: str) -> str | None:
        """The live value at ``key``, or None."""

    def delete(self, key: str) -> None:
        """Remove ``key``."""

    def incr(self, key: str, ttl_s: float) -> int:
        """Increment a counter (created with ``ttl_s``) and return its new value."""

    def take_token(self, key: str, rate_per_s: float, burst: int) -> float:
        """Take one token from a bucket refilled at ``rate_per_s``. Returns 0 when taken, else seconds to wait."""

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take or renew a lease held by ``owner``; False when another live owner holds it."""

    def release_lease(self, key: str, owner: str) -> None:
        """Give up a lease if ``owner`` holds it."""

    def close(self) -> None:
        """Release connections."""


_BUCKET_LUA = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', key, math.ceil((burst / rate) * 1000) + 60000)
return tostring(wait)
"""

_LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisCoordinator:
    """Coordination on Redis; keys live under ``prefix``."""

    def __init__(self, client: redis.Redis[bytes], prefix: str = "esf:", *,
                 breaker: CircuitBreaker | None = None) -> None:
        self._r = client
        self._prefix = prefix
        #: Opens after consecutive connection failures and timeouts: calls then fail at once.
        self.breaker = breaker
        self._token = client.register_script(_BUCKET_LUA)
        self._lease = client.register_script(_LEASE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def _k(self, key: str) -> str:
        return self._prefix + key

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import redis as _redis

        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            raise breaker.open_error()
        try:
            result = fn(*args, **kwargs)
        except (_redis.ConnectionError, _redis.TimeoutError) as exc:
            if breaker is not None:
                breaker.record_failure()
            raise ServiceUnavailable(f"Redis coordination failed: {type(exc).__name__}: {exc}") from exc
        except _redis.RedisError as exc:
            if breaker is not None:
                breaker.record_success()  # Redis answered: not an outage
            raise ServiceUnavailable(f"Redis coordination failed: {type(exc).__name__}: {exc}") from exc
        if breaker is not None:
            breaker.record_success()
        return result

    def claim(self, key: str, value: str, ttl_s: float) -> str | None:
        ok = self._call(self._r.set, self._k(key), value, nx=True, px=max(1, int(ttl_s * 1000)))
        if ok:
            return None
        existing = self._call(self._r.get, self._k(key))
        if existing is None:  # expired in between: try once more
            return self.claim(key, value, ttl_s)
        return existing.decode() if isinstance(existing, bytes) else str(existing)

    def get(self, key: str) -> str | None:
        v = self._call(self._r.get, self._k(key))
        return v.decode() if isinstance(v, bytes) else v

    def delete(self, key: str) -> None:
        self._call(self._r.delete, self._k(key))

    def incr(self, key: str, ttl_s: float) -> int:
        pipe = self._r.pipeline()
        pipe.incr(self._k(key))
        pipe.pexpire(self._k(key), max(1, int(ttl_s * 1000)))
        value, _ = self._call(pipe.execute)
        return int(value)

    def take_token(self, key: str, rate_per_s: float, burst: int) -> float:
        wait = self._call(self._token, keys=[self._k(key)], args=[rate_per_s, burst, time.time()])
        return float(wait)

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> bool:
        return bool(self._call(self._lease, keys=[self._k(key)], args=[owner, max(1, int(ttl_s * 1000))]))

    def release_lease(self, key: str, owner: str) -> None:
        self._call(self._release, keys=[self._k(key)], args=[owner])

    def close(self) -> None:
        self._r.close()


class SqliteCoordinator(SqliteFile):
    """Coordination in one SQLite file, for the embedded deployment (one machine)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "the SQLite coordination store")
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS esf_coord (key TEXT PRIMARY KEY, value TEXT NOT NULL,"
                       " expires REAL NOT NULL)")

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Delete expired rows, at most once a minute per process."""
        if now - getattr(self._local, "swept", 0.0) < SWEEP_INTERVAL_S:
            return
        db.execute("DELETE FROM esf_coord WHERE expires <= ?", (now,))
        self._local.swept = now

    def _live(self, db: sqlite3.Connection, key: str, now: float) -> str | None:
        row = db.execute("SELECT value, expires FROM esf_coord WHERE key = ?", (key,)).fetchone()
        if row is None or row[1] <= now:
            return None
        return str(row[0])

    def _put(self, db: sqlite3.Connection, key: str, value: str, expires: float) -> None:
        db.execute("INSERT INTO esf_coord(key, value, expires) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE"
                   " SET value = excluded.value, expires = excluded.expires", (key, value, expires))

    def claim(self, key: str, value: str, ttl_s: float) -> str | None:
        now = time.time()
        with self._tx() as db:
            self._sweep(db, now)
            existing = self._live(db, key, now)
            if existing is not None:
                return existing
            self._put(db, key, value, now + ttl_s)
            return None

    def get(self, key: str) -> str | None:
        with self._tx() as db:
            return self._live(db, key, time.time())

    def delete(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM esf_coord WHERE key = ?", (key,))

    def incr(self, key: str, ttl_s: float) -> int:
        now = time.time()
        with self._tx() as db:
            value = int(self._live(db, key, now) or 0) + 1
            self._put(db, key, str(value), now + ttl_s)
            return value

    def take_token(self, key: str, rate_per_s: float, burst: int) -> float:
        now = time.time()
        with self._tx() as db:
            raw = self._live(db, key, now)
            tokens, ts = (float(burst), now) if raw is None else map(float, raw.split(":"))
            tokens = min(float(burst), tokens + (now - ts) * rate_per_s)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / rate_per_s
            self._put(db, key, f"{tokens}:{now}", now + math.ceil(burst / rate_per_s) + 60)
            return wait

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        with self._tx() as db:
            current = self._live(db, key, now)
            if current is not None and current != owner:
                return False
            self._put(db, key, owner, now + ttl_s)
            return True

    def release_lease(self, key: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM esf_coord WHERE key = ? AND value = ?", (key, owner))
