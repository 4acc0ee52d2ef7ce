"""``RedisConfigStore``: atomic batches in one Lua script, propagation by pub/sub plus reconciliation."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Any

import redis
from redis.exceptions import RedisError

from esf.backends._pubsub import listen
from esf.config import Commit, HistoryEntry, NodeStatus, NotifyCallback, StoredConfig
from esf.errors import ConcurrencyConflict, ServiceUnavailable
from esf.settings import strip_url_credentials

__all__ = ["BEAT_SCRIPT", "COMMIT_SCRIPT", "NODES_SCRIPT", "RedisConfigStore"]

log = logging.getLogger("esf.config.redis")

#: KEYS: state hash, history hash. ARGV: expected version, document, secrets, entry, history limit,
#: channel, time. Checks the version, writes document + version + history entry, trims the
#: history, publishes the new version: all or nothing, in one step.
COMMIT_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local new = current + 1
redis.call('HSET', KEYS[1], 'version', new, 'document', ARGV[2], 'secrets', ARGV[3], 'updated_at', ARGV[7])
redis.call('HSET', KEYS[2], tostring(new), ARGV[4])
local oldest = new - tonumber(ARGV[5])
if oldest > 0 then
  redis.call('HDEL', KEYS[2], tostring(oldest))
end
redis.call('PUBLISH', ARGV[6], tostring(new))
return {1, new}
"""


#: KEYS: the node's key, the nodes sorted set. ARGV: node id, status JSON, TTL (ms), TTL (s). Stamps the
#: heartbeat with the Redis server's clock (never the node's, which may be skewed), and forgets nodes
#: silent for ten TTLs. Returns the server time used.
BEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], string.format('%.6f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.6f', now - 10 * tonumber(ARGV[4])))
return string.format('%.6f', now)
"""

#: KEYS: the nodes sorted set. ARGV: TTL (s). The nodes whose last heartbeat, by the Redis server's
#: clock, is at most one TTL old, with that heartbeat's time: ``[id, time, id, time, …]``.
NODES_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.6f', now - tonumber(ARGV[1])), '+inf', 'WITHSCORES')
"""


class RedisConfigStore:
    """The configuration in Redis, under ``prefix``.

    Keys: ``<prefix>state`` (hash: version, document, secrets, updated_at),
    ``<prefix>history`` (hash: version -> entry), ``<prefix>node:<id>``
    (heartbeat, with a TTL) indexed by the sorted set ``<prefix>nodes``;
    channel ``<prefix>changes`` carries each new version.

    Liveness is decided by the Redis server's clock alone: a heartbeat is
    stamped with the server's ``TIME`` and read against it, so a node whose
    clock is behind or ahead is neither taken for dead nor kept alive.

    Parameters:
        url: ``redis://host:port/db``.
        prefix: prefix of every key and of the channel.
        history_limit: versions kept.
        timeout_s: socket timeout of every call.
    """

    kind = "redis"

    def __init__(
        self, url: str, *, prefix: str = "esf:config:", history_limit: int = 1000, timeout_s: float = 5.0
    ) -> None:
        self.prefix = prefix
        self.history_limit = history_limit
        self.identity = f"redis:{strip_url_credentials(url)}:{prefix}"
        self._url = url
        self._timeout_s = timeout_s
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=min(timeout_s, 2.0), health_check_interval=30
        )
        self._script = self._client.register_script(COMMIT_SCRIPT)
        self._beat_script = self._client.register_script(BEAT_SCRIPT)
        self._nodes_script = self._client.register_script(NODES_SCRIPT)
        self.k_state = f"{prefix}state"
        self.k_history = f"{prefix}history"
        self.k_nodes = f"{prefix}nodes"
        self.channel = f"{prefix}changes"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fail(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"Redis config store {strip_url_credentials(self._url)}: {exc}")

    # -- reading -------------------------------------------------------------

    def read(self) -> StoredConfig:
        try:
            version, document, secrets = self._client.hmget(self.k_state, ["version", "document", "secrets"])
        except RedisError as exc:
            raise self._fail(exc) from exc
        if version is None:
            return StoredConfig(0, {}, frozenset())
        return StoredConfig(int(version), json.loads(document or b"{}"), frozenset(json.loads(secrets or b"[]")))

    def version(self) -> int:
        try:
            raw = self._client.hget(self.k_state, "version")
        except RedisError as exc:
            raise self._fail(exc) from exc
        return int(raw) if raw is not None else 0

    def entry(self, version: int) -> HistoryEntry | None:
        try:
            raw = self._client.hget(self.k_history, str(version))
        except RedisError as exc:
            raise self._fail(exc) from exc
        return HistoryEntry.from_dict(json.loads(raw)) if raw is not None else None

    def history(self, limit: int) -> list[HistoryEntry]:
        try:
            current = self.version()
            first = max(1, current - limit + 1)
            wanted = [str(v) for v in range(current, first - 1, -1)]
            raws = self._client.hmget(self.k_history, wanted) if wanted else []
        except RedisError as exc:
            raise self._fail(exc) from exc
        return [HistoryEntry.from_dict(json.loads(r)) for r in raws if r is not None]

    # -- writing -------------------------------------------------------------

    def commit(self, commit: Commit) -> int:
        args = [
            commit.base_version,
            json.dumps(commit.document, separators=(",", ":")),
            json.dumps(sorted(commit.secrets)),
            json.dumps(commit.entry.to_dict(), separators=(",", ":")),
            self.history_limit,
            self.channel,
            repr(commit.entry.at),
        ]
        try:
            ok, version = self._script(keys=[self.k_state, self.k_history], args=args)
        except RedisError as exc:
            raise ServiceUnavailable(
                f"Redis config store {strip_url_credentials(self._url)}: {exc}; the batch may or may not be "
                "applied: read the version to know"
            ) from exc
        if not ok:
            raise ConcurrencyConflict(
                f"expected version {commit.base_version}, the store is at {version}",
                expected=commit.base_version,
                actual=int(version),
            )
        return int(version)

    # -- nodes ---------------------------------------------------------------

    def beat(self, node: NodeStatus, ttl_s: float) -> None:
        """Record ``node``'s heartbeat, stamped with the Redis server's clock (``node.last_seen`` is ignored)."""
        try:
            self._beat_script(
                keys=[f"{self.prefix}node:{node.node_id}", self.k_nodes],
                args=[node.node_id, json.dumps(node.to_dict()), max(1, int(ttl_s * 1000)), ttl_s],
            )
        except RedisError as exc:
            raise self._fail(exc) from exc

    def forget(self, node_id: str) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(f"{self.prefix}node:{node_id}")
            pipe.zrem(self.k_nodes, node_id)
            pipe.execute()
        except RedisError as exc:
            raise self._fail(exc) from exc

    def nodes(self, ttl_s: float) -> list[NodeStatus]:
        """Nodes whose last heartbeat is at most ``ttl_s`` old by the Redis server's clock; ``last_seen`` is
        that heartbeat's server time."""
        try:
            flat = self._nodes_script(keys=[self.k_nodes], args=[ttl_s])
            if not flat:
                return []
            seen = {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
            raws = self._client.mget([f"{self.prefix}node:{i}" for i in seen])
        except RedisError as exc:
            raise self._fail(exc) from exc
        out = [
            dataclasses.replace(status, last_seen=seen.get(status.node_id, status.last_seen))
            for status in (NodeStatus.from_dict(json.loads(r)) for r in raws if r is not None)
        ]
        return sorted(out, key=lambda n: n.node_id)

    def forget_gone(self, ttl_s: float) -> list[str]:
        try:
            # The Redis server's clock, as the heartbeats are stamped with it (never this node's).
            sec, usec = self._client.time()
            ids = self._client.zrangebyscore(self.k_nodes, "-inf", sec + usec / 1_000_000 - ttl_s)
            gone = [i.decode() for i in ids]
            if gone:
                pipe = self._client.pipeline(transaction=False)
                pipe.zrem(self.k_nodes, *gone)
                pipe.delete(*[f"{self.prefix}node:{g}" for g in gone])
                pipe.execute()
        except RedisError as exc:
            raise self._fail(exc) from exc
        return sorted(gone)

    def notify(self, version: int) -> None:
        try:
            self._client.publish(self.channel, str(int(version)))
        except RedisError as exc:
            raise self._fail(exc) from exc

    # -- notifications ---------------------------------------------------------

    def watch(self, callback: NotifyCallback) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._listen, args=(callback,), name="esf-config-redis", daemon=True)
        self._thread.start()

    def _listen(self, callback: NotifyCallback) -> None:
        """Subscriber loop: reconnects with backoff; after each (re)subscription asks for a full resync."""
        def on_message(data: Any) -> None:
            if data is None:
                callback(None)  # messages sent while we were away are lost: resync
                return
            try:
                version = int(data)
            except (TypeError, ValueError):
                return
            callback(version)

        listen(self._client, self.channel, on_message, self._stop, log=log, what="config: notification",
               first_delay_s=0.1, max_delay_s=2.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisConfigStore({strip_url_credentials(self._url)!r}, prefix={self.prefix!r})"

