"""Shared stores of the cluster-wide view: Redis (servers) and SQLite (embedded).

Every process pushes *deltas* since its last push, tagged with a per-process
sequence number; a store applies a batch atomically and only once (a retried
batch whose sequence number was already applied is ignored), so counter and
histogram totals are exact, and those of processes that have exited stay in
the totals. Gauges are per-process values that expire with the process
(``proc_ttl_s`` after its last push, or at once when it closes).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._sqlite import enable_wal, fork_guard
from ..errors import ServiceUnavailable
from ._aggregate import PushBatch, batch_payload, window_start
from ._model import MAX_WINDOW_S, WINDOW_BUCKET_S, SeriesState

#: Seconds a finished process's sequence number is remembered (a retried final batch is still ignored).
SEQ_TTL_S = 86_400


@dataclass
class ClusterView:
    """Everything the store holds, merged: totals by series, window buckets, live processes."""

    states: dict[str, SeriesState] = field(default_factory=dict)
    windows: dict[int, dict[str, float]] = field(default_factory=dict)
    processes: list[str] = field(default_factory=list)


class SnapshotStore(Protocol):
    """Where processes push their deltas and read the merged view."""

    #: Seconds after its last push when a silent process's gauges stop counting.
    proc_ttl_s: float

    def push(self, batch: PushBatch) -> None:
        """Apply ``batch`` atomically, once per ``(proc, seq)``.

        Raises
        ------
        ServiceUnavailable
            When the store cannot be reached (the caller retries the same batch).
        """

    def read(self, window_span_s: int) -> ClusterView:
        """The merged view, with window buckets of the last ``window_span_s`` seconds.

        Raises
        ------
        ServiceUnavailable
            When the store cannot be reached.
        """

    def reset_after_fork(self) -> None:
        """Drop connections inherited from the parent process."""

    def close(self) -> None:
        """Release connections."""


def _view(
    meta: dict[str, str],
    counters: Iterable[tuple[str, float]],
    hist: Iterable[tuple[str, float]],
    gauges: Iterable[tuple[str, float]],
    windows: dict[int, dict[str, float]],
    processes: list[str],
) -> ClusterView:
    view = ClusterView(windows=windows, processes=processes)

    def state(sid: str) -> SeriesState | None:
        st = view.states.get(sid)
        if st is None:
            raw = meta.get(sid)
            if raw is None:
                return None
            m = json.loads(raw)
            st = SeriesState(m["k"], m["n"], tuple((k, v) for k, v in m["l"]))
            view.states[sid] = st
        return st

    for sid, value in counters:
        st = state(sid)
        if st is not None:
            st.value += value
    for fld, value in hist:
        sid, spec, idx = fld.split("|", 2)
        st = state(sid)
        if st is None:
            continue
        if idx == "sum":
            st.add_hist(spec, {}, value)
        else:
            st.add_hist(spec, {int(idx): int(value)}, 0.0)
    for sid, value in gauges:
        st = state(sid)
        if st is not None:
            st.gauge_values.append(value)
    return view


_PUSH_LUA = """
local p = ARGV[1]
local proc = ARGV[2]
local seq = tonumber(ARGV[3])
local seqkey = p .. 'seq:' .. proc
local last = tonumber(redis.call('GET', seqkey) or '0')
if seq <= last then return 0 end
local data = cjson.decode(ARGV[9])
for id, m in pairs(data.meta) do redis.call('HSETNX', p .. 'meta', id, m) end
local wkey = p .. 'w:' .. ARGV[5]
local wrote = false
for id, d in pairs(data.counters) do
  redis.call('HINCRBYFLOAT', p .. 'counters', id, d)
  redis.call('HINCRBYFLOAT', wkey, id, d)
  wrote = true
end
if wrote then redis.call('EXPIRE', wkey, ARGV[6]) end
for f, d in pairs(data.hist) do
  if string.sub(f, -4) == '|sum' then
    redis.call('HINCRBYFLOAT', p .. 'hist', f, d)
  else
    redis.call('HINCRBY', p .. 'hist', f, d)
  end
end
redis.call('SET', seqkey, seq, 'EX', ARGV[10])
local gkey = p .. 'g:' .. proc
redis.call('DEL', gkey)
if ARGV[8] == '1' then
  redis.call('ZREM', p .. 'procs', proc)
  return 1
end
for id, v in pairs(data.gauges) do redis.call('HSET', gkey, id, v) end
redis.call('EXPIRE', gkey, ARGV[7])
redis.call('ZADD', p .. 'procs', ARGV[4], proc)
redis.call('ZREMRANGEBYSCORE', p .. 'procs', '-inf', tonumber(ARGV[4]) - 10 * tonumber(ARGV[7]))
return 1
"""


class RedisSnapshotStore:
    """The shared view in Redis under ``key_prefix`` (one Lua script per push)."""

    def __init__(self, url: str, *, key_prefix: str = "esf:telemetry:", proc_ttl_s: float = 30.0,
                 timeout_s: float = 2.0) -> None:
        import redis

        self.url = url
        self.key_prefix = key_prefix
        self.proc_ttl_s = proc_ttl_s
        self._timeout_s = timeout_s
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._client.register_script(_PUSH_LUA)

    def push(self, batch: PushBatch) -> None:
        ttl = max(1, int(self.proc_ttl_s))
        args = [
            self.key_prefix,
            batch.proc,
            batch.seq,
            repr(batch.time),
            batch.window_start,
            MAX_WINDOW_S + 3 * WINDOW_BUCKET_S,
            ttl,
            "1" if batch.final else "0",
            batch_payload(batch),
            SEQ_TTL_S,
        ]
        try:
            self._script(keys=[], args=args)
        except self._redis_errors as exc:
            raise ServiceUnavailable(f"telemetry store (Redis) unavailable: {type(exc).__name__}: {exc}") from None

    def read(self, window_span_s: int) -> ClusterView:
        p = self.key_prefix
        now = time.time()
        current = window_start(now)
        starts = list(range(current - window_span_s, current + 1, WINDOW_BUCKET_S))
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(p + "meta")
            pipe.hgetall(p + "counters")
            pipe.hgetall(p + "hist")
            pipe.zrangebyscore(p + "procs", now - self.proc_ttl_s, "+inf")
            for s in starts:
                pipe.hgetall(f"{p}w:{s}")
            res: list[Any] = pipe.execute()
            procs = [x.decode() for x in res[3]]
            pipe = self._client.pipeline(transaction=False)
            for proc in procs:
                pipe.hgetall(f"{p}g:{proc}")
            gres: list[Any] = pipe.execute()
        except self._redis_errors as exc:
            raise ServiceUnavailable(f"telemetry store (Redis) unavailable: {type(exc).__name__}: {exc}") from None

        def dec(h: dict[bytes, bytes]) -> list[tuple[str, float]]:
            return [(k.decode(), float(v)) for k, v in h.items()]

        meta = {k.decode(): v.decode() for k, v in res[0].items()}
        windows = {s: dict(dec(h)) for s, h in zip(starts, res[4:], strict=True) if h}
        gauges = [pair for h in gres for pair in dec(h)]
        return _view(meta, dec(res[1]), dec(res[2]), gauges, windows, procs)

    def reset_after_fork(self) -> None:
        # redis-py's pool notices the new pid and reconnects; nothing to do.
        pass

    def close(self) -> None:
        self._client.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tm_meta (sid TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tm_counters (sid TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tm_hist (field TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tm_windows (start INTEGER NOT NULL, sid TEXT NOT NULL, value REAL NOT NULL,
                                       PRIMARY KEY (start, sid));
CREATE TABLE IF NOT EXISTS tm_gauges (proc TEXT NOT NULL, sid TEXT NOT NULL, value REAL NOT NULL,
                                      PRIMARY KEY (proc, sid));
CREATE TABLE IF NOT EXISTS tm_procs (proc TEXT PRIMARY KEY, seq INTEGER NOT NULL, seen REAL NOT NULL,
                                     live INTEGER NOT NULL);
"""


class SQLiteSnapshotStore:
    """The shared view in a SQLite file (embedded mode: processes on one host)."""

    def __init__(self, path: str | Path, *, proc_ttl_s: float = 30.0, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.proc_ttl_s = proc_ttl_s
        self._timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False)
        enable_wal(conn, self._timeout_s)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return conn

    def push(self, batch: PushBatch) -> None:
        try:
            with fork_guard, self._lock:
                self._push(batch)
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"telemetry store (SQLite {self.path}) unavailable: {exc}") from None

    def _push(self, batch: PushBatch) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT seq FROM tm_procs WHERE proc = ?", (batch.proc,)).fetchone()
            if row is not None and row[0] >= batch.seq:
                c.execute("ROLLBACK")
                return
            c.executemany("INSERT OR IGNORE INTO tm_meta VALUES (?, ?)", batch.meta.items())
            c.executemany(
                "INSERT INTO tm_counters VALUES (?, ?) ON CONFLICT(sid) DO UPDATE SET value = value + excluded.value",
                batch.counters.items(),
            )
            c.executemany(
                "INSERT INTO tm_windows VALUES (?, ?, ?) "
                "ON CONFLICT(start, sid) DO UPDATE SET value = value + excluded.value",
                [(batch.window_start, sid, d) for sid, d in batch.counters.items()],
            )
            rows: list[tuple[str, float]] = []
            for sid, parts in batch.hist.items():
                for spec, (counts, total) in parts.items():
                    rows.extend((f"{sid}|{spec}|{idx}", n) for idx, n in counts.items())
                    rows.append((f"{sid}|{spec}|sum", total))
            c.executemany(
                "INSERT INTO tm_hist VALUES (?, ?) ON CONFLICT(field) DO UPDATE SET value = value + excluded.value",
                rows,
            )
            c.execute("DELETE FROM tm_gauges WHERE proc = ?", (batch.proc,))
            if not batch.final:
                c.executemany(
                    "INSERT INTO tm_gauges VALUES (?, ?, ?)", [(batch.proc, s, v) for s, v in batch.gauges.items()]
                )
            c.execute(
                "INSERT INTO tm_procs VALUES (?, ?, ?, ?) ON CONFLICT(proc) DO UPDATE "
                "SET seq = excluded.seq, seen = excluded.seen, live = excluded.live",
                (batch.proc, batch.seq, batch.time, 0 if batch.final else 1),
            )
            oldest = batch.window_start - MAX_WINDOW_S - 3 * WINDOW_BUCKET_S
            c.execute("DELETE FROM tm_windows WHERE start < ?", (oldest,))
            c.execute("DELETE FROM tm_procs WHERE seen < ?", (batch.time - SEQ_TTL_S,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def read(self, window_span_s: int) -> ClusterView:
        now = time.time()
        try:
            with self._lock:
                c = self._conn
                c.execute("BEGIN")
                try:
                    meta = dict(c.execute("SELECT sid, json FROM tm_meta").fetchall())
                    counters = c.execute("SELECT sid, value FROM tm_counters").fetchall()
                    hist = c.execute("SELECT field, value FROM tm_hist").fetchall()
                    procs = [
                        r[0]
                        for r in c.execute(
                            "SELECT proc FROM tm_procs WHERE live = 1 AND seen >= ? ORDER BY proc",
                            (now - self.proc_ttl_s,),
                        )
                    ]
                    gauges = c.execute(
                        "SELECT g.sid, g.value FROM tm_gauges g JOIN tm_procs p ON p.proc = g.proc "
                        "WHERE p.live = 1 AND p.seen >= ?",
                        (now - self.proc_ttl_s,),
                    ).fetchall()
                    wrows = c.execute(
                        "SELECT start, sid, value FROM tm_windows WHERE start >= ?",
                        (window_start(now) - window_span_s,),
                    ).fetchall()
                finally:
                    c.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"telemetry store (SQLite {self.path}) unavailable: {exc}") from None
        windows: dict[int, dict[str, float]] = {}
        for start, sid, value in wrows:
            windows.setdefault(start, {})[sid] = value
        return _view(meta, counters, hist, gauges, windows, procs)

    def reset_after_fork(self) -> None:
        # A SQLite connection must not cross a fork: open a new one (the inherited one is left alone).
        self._lock = threading.Lock()
        self._conn = self._connect()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
