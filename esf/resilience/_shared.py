"""Breaker state shared by every process through Redis.

One hash per breaker, ``<prefix><name>``: ``state`` (``open`` or ``closed``)
and ``until`` (Redis server time in milliseconds). Once ``until`` has passed,
the first process to ask takes the trial slot ``<prefix><name>:probe`` (a key
with a time to live, so a process that dies while probing frees it) and makes
the one trial call; the others keep failing fast until it closes or reopens
the breaker. Times are the Redis server's, so hosts need no common clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..errors import ServiceUnavailable
from ._breaker import Verdict

if TYPE_CHECKING:
    import redis

_CHECK = """
local st = redis.call('HMGET', KEYS[1], 'state', 'until')
if st[1] ~= 'open' then return {'closed', 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilms = tonumber(st[2]) or 0
if now < untilms then return {'open', untilms - now} end
if ARGV[1] == '1' and redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return {'probe', 0} end
return {'half_open', 0}
"""

_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 86400000)
redis.call('DEL', KEYS[2])
return 1
"""

_CLOSE = """
redis.call('HSET', KEYS[1], 'state', 'closed', 'until', 0)
redis.call('PEXPIRE', KEYS[1], 86400000)
redis.call('DEL', KEYS[2])
return 1
"""


class RedisSharedState:
    """:class:`~esf.resilience.SharedState` in Redis (one hash and one trial key per breaker).

    Parameters:
        client: returns the Redis client to use (called on each operation, so a forked process
            gets its own).
        prefix: prefix of every key.
        retry_after_s: after a failed call, calls fail at once (without touching Redis) for this
            many seconds, so an unreachable Redis costs one timeout, not one per breaker check.
    """

    def __init__(self, client: Callable[[], redis.Redis[bytes]], prefix: str = "esf:breaker:",
                 retry_after_s: float = 2.0) -> None:
        self._client = client
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self._scripts: dict[str, tuple[Any, Any]] = {}
        self._down_until = 0.0
        self._lock = threading.Lock()
        #: Calls that failed (Redis unreachable or refusing).
        self.failures = 0

    def _run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        if time.monotonic() < self._down_until:
            raise ServiceUnavailable("shared breaker state: Redis was unreachable moments ago")
        try:
            return self._script(source)(keys=keys, args=args)
        except Exception:
            with self._lock:
                self.failures += 1
                self._down_until = time.monotonic() + self.retry_after_s
            raise

    def _script(self, source: str) -> Any:
        client = self._client()
        cached = self._scripts.get(source)
        if cached is None or cached[0] is not client:
            cached = (client, client.register_script(source))
            self._scripts[source] = cached
        return cached[1]

    def _keys(self, name: str) -> list[str]:
        return [self.prefix + name, f"{self.prefix}{name}:probe"]

    def check(self, name: str, *, probe: bool, probe_ttl_s: float) -> tuple[Verdict, float]:
        raw = self._run(_CHECK, self._keys(name), ["1" if probe else "0", max(1, int(probe_ttl_s * 1000))])
        verdict = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        return cast(Verdict, verdict), int(raw[1]) / 1000.0

    def open(self, name: str, reset_timeout_s: float) -> None:
        self._run(_OPEN, self._keys(name), [max(1, int(reset_timeout_s * 1000))])

    def close(self, name: str) -> None:
        self._run(_CLOSE, self._keys(name), [])
