"""``RedisCacheTier``: every operation one round trip (a Lua script where a write needs the namespace version)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from esf.backends._pubsub import listen
from esf.cache import Invalidation, InvalidationCallback
from esf.errors import ServiceUnavailable, ValidationError
from esf.settings import strip_url_credentials

__all__ = ["RedisCacheTier"]

log = logging.getLogger("esf.cache.redis")

# Keys (ARGV[1] is the prefix): v:<ns> the namespace version, d:<ns>:<version>:<key> an entry,
# namespaces (set) every namespace written to. The data key depends on the version read in the same
# script, so the tier needs one Redis server (not Redis Cluster).
#: ARGV: prefix, namespace, key, data, ttl ms, channel, message, expected version ('' any), lock name ('' none),
#: token. Refused (-1) when the namespace moved past the expected version or the lock is no longer the token's
#: (a loader's value read before a bump or a delete is not stored).
WRITE = """
local v = redis.call('GET', ARGV[1] .. 'v:' .. ARGV[2]) or '0'
if ARGV[8] ~= '' and v ~= ARGV[8] then
  return -1
end
if ARGV[9] ~= '' and redis.call('GET', ARGV[1] .. ARGV[9]) ~= ARGV[10] then
  return -1
end
redis.call('SET', ARGV[1] .. 'd:' .. ARGV[2] .. ':' .. v .. ':' .. ARGV[3], ARGV[4], 'PX', ARGV[5])
redis.call('SADD', ARGV[1] .. 'namespaces', ARGV[2])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return tonumber(v)
"""
#: ARGV: prefix, namespace, key, channel, message. Also frees the key's loader lock (l:<ns>:<key>), so that a
#: load under way cannot store the value it read before the delete.
DELETE = """
local v = redis.call('GET', ARGV[1] .. 'v:' .. ARGV[2]) or '0'
local n = redis.call('DEL', ARGV[1] .. 'd:' .. ARGV[2] .. ':' .. v .. ':' .. ARGV[3])
redis.call('DEL', ARGV[1] .. 'l:' .. ARGV[2] .. ':' .. ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return n
"""
#: ARGV: prefix, namespace, channel, origin.
BUMP = """
local v = redis.call('INCR', ARGV[1] .. 'v:' .. ARGV[2])
redis.call('SADD', ARGV[1] .. 'namespaces', ARGV[2])
redis.call('PUBLISH', ARGV[3], cjson.encode({op = 'bump', n = ARGV[2], o = ARGV[4], v = v}))
return v
"""
#: KEYS: the lock. ARGV: token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisCacheTier:
    """The shared tier in Redis under ``prefix``; invalidations on the channel ``<prefix>invalidate``.

    Every call has a socket timeout of ``timeout_s`` and raises :class:`~esf.errors.ServiceUnavailable`
    when Redis does not answer (the cache's circuit breaker then keeps calls away for a while).

    Parameters:
        url: ``redis://host:port/db``.
        prefix: prefix of every key and of the channel.
        timeout_s: socket timeout of every call (seconds).
    """

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "esf:cache:", timeout_s: float = 0.5) -> None:
        if not prefix:
            raise ValidationError("redis cache tier: prefix must not be empty")
        self.prefix = prefix
        self.channel = f"{prefix}invalidate"
        self._url = url
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )
        self._write = self._client.register_script(WRITE)
        self._delete = self._client.register_script(DELETE)
        self._bump = self._client.register_script(BUMP)
        self._release = self._client.register_script(RELEASE)

    def _fail(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"Redis cache tier {strip_url_credentials(self._url)}: {type(exc).__name__}: {exc}")

    def version(self, namespace: str) -> int:
        try:
            raw = self._client.get(f"{self.prefix}v:{namespace}")
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc
        return int(raw) if raw is not None else 0

    def get(self, namespace: str, version: int, key: str) -> bytes | None:
        try:
            data: bytes | None = self._client.get(f"{self.prefix}d:{namespace}:{version}:{key}")
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc
        return data

    def write(self, namespace: str, key: str, data: bytes, ttl_s: float, message: Invalidation, *,
              if_version: int | None = None, if_lock: tuple[str, str] | None = None) -> int | None:
        lock, token = if_lock if if_lock is not None else ("", "")
        try:
            stored = int(self._write(args=[
                self.prefix, namespace, key, data, max(1, int(ttl_s * 1000)), self.channel, message.to_json(),
                "" if if_version is None else str(if_version), lock, token]))
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc
        return None if stored < 0 else stored

    def delete(self, namespace: str, key: str, message: Invalidation) -> None:
        try:
            self._delete(args=[self.prefix, namespace, key, self.channel, message.to_json()])
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc

    def bump(self, namespace: str, origin: str) -> int:
        try:
            return int(self._bump(args=[self.prefix, namespace, self.channel, origin]))
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc

    def acquire(self, name: str, token: str, lease_s: float) -> bool:
        try:
            return bool(self._client.set(f"{self.prefix}{name}", token, nx=True, px=max(1, int(lease_s * 1000))))
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc

    def release(self, name: str, token: str) -> None:
        try:
            self._release(keys=[f"{self.prefix}{name}"], args=[token])
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc

    def namespaces(self) -> dict[str, int]:
        try:
            names = sorted(n.decode() for n in self._client.smembers(f"{self.prefix}namespaces"))
            versions = self._client.mget([f"{self.prefix}v:{n}" for n in names]) if names else []
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from exc
        return {n: int(v or 0) for n, v in zip(names, versions, strict=True)}

    def watch(self, callback: InvalidationCallback, stop: threading.Event, tick: Callable[[], None]) -> None:
        """Subscriber loop: reconnects with backoff; after each (re)subscription calls ``callback(None)``."""
        def on_message(data: Any) -> None:
            if data is None:
                callback(None)
                return
            try:
                parsed = Invalidation.from_json(data)
            except ValidationError:
                log.warning("cache: ignored a malformed invalidation message")
                return
            callback(parsed)

        listen(self._client, self.channel, on_message, stop, log=log, what="cache: invalidation", first_delay_s=0.05,
               max_delay_s=1.0, tick=tick)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisCacheTier({strip_url_credentials(self._url)!r}, prefix={self.prefix!r})"

