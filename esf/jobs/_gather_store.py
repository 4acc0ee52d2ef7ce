"""Where a scatter-gather keeps its results: one record per gather, shared by every worker.

Redis in production (a hash per gather, changed by Lua scripts), SQLite under
``data_dir`` on one machine (``BEGIN IMMEDIATE``). Both make the same decisions:

- ``record`` stores a member's outcome once (a redelivered member changes
  nothing), and the member whose outcome settles the gather becomes its
  *closer*: the gather moves from ``open`` to ``closing`` (enough results: the
  callback is to be sent) or ``failing`` (too few: the callback is to be
  dead-lettered). Only the closer is told to act, and it is told again when its
  own message is redelivered, until it marks the gather ``done`` or ``failed``.
- ``expire`` (the deadline job) closes a gather still open: ``closing`` when
  ``on_timeout`` is ``continue`` and at least ``min_results`` arrived, else
  ``failing`` (reason ``deadline``, or ``min_results`` when it was to continue).
- An outcome arriving after the gather closed is kept as *late* and changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._sqlite import SqliteFile
from ..errors import ServiceUnavailable

if TYPE_CHECKING:
    import redis

#: What ``record`` and ``expire`` tell their caller to do.
Verdict = Literal["recorded", "duplicate", "late", "unknown", "closing", "failing", "settled"]

#: The closer name of the deadline job (members are closers by their index).
DEADLINE = "deadline"


@dataclass(frozen=True)
class GatherState:
    """A gather as stored: its spec, its state and every outcome that arrived."""

    id: str
    spec: Mapping[str, Any]
    #: ``open``, ``closing``, ``failing``, ``done`` or ``failed``.
    state: str
    #: Why it closed: ``complete``, ``deadline``, ``min_results`` (empty while open).
    reason: str
    #: index -> the member's result (JSON value).
    results: dict[int, Any] = field(default_factory=dict)
    #: index -> ``"Type: message"`` of a member that failed for good.
    failed: dict[int, str] = field(default_factory=dict)
    #: indexes whose outcome arrived after the gather closed.
    late: list[int] = field(default_factory=list)


class GatherStore(Protocol):
    """The durable record of every gather (see the module docstring for the decisions)."""

    def create(self, gather_id: str, spec: Mapping[str, Any], ttl_s: float) -> None:
        """Store a new open gather. ``spec`` has ``n`` and ``min_results`` (ints) and ``on_timeout``."""

    def record(self, gather_id: str, index: int, ok: bool, value: str) -> Verdict:
        """Store member ``index``'s outcome (``value``: its JSON result, or its error text)."""

    def expire(self, gather_id: str) -> Verdict:
        """The deadline passed: close the gather if it is still open."""

    def finish(self, gather_id: str, closed_as: str) -> None:
        """Mark a ``closing`` or ``failing`` gather ``closed_as`` (``done``: the callback was sent; ``failed``:
        it was dead-lettered)."""

    def read(self, gather_id: str) -> GatherState | None:
        """The stored gather, or None when unknown (or expired)."""

    def close(self) -> None:
        """Release connections."""


_RECORD_LUA = """
local k = KEYS[1]
local idx = ARGV[1]
local kind = ARGV[2]
local state = redis.call('HGET', k, 'state')
if not state then return 'unknown' end
local have = redis.call('HEXISTS', k, 'r:' .. idx) == 1 or redis.call('HEXISTS', k, 'f:' .. idx) == 1
if state ~= 'open' then
  if have then
    if redis.call('HGET', k, 'closer') == idx and (state == 'closing' or state == 'failing') then return state end
    return 'duplicate'
  end
  redis.call('HSETNX', k, 'late:' .. idx, ARGV[3])
  return 'late'
end
if have then return 'duplicate' end
redis.call('HSET', k, kind .. ':' .. idx, ARGV[3])
local settled = redis.call('HINCRBY', k, 'settled', 1)
local ok = tonumber(redis.call('HGET', k, 'ok') or '0')
if kind == 'r' then ok = redis.call('HINCRBY', k, 'ok', 1) end
local n = tonumber(redis.call('HGET', k, 'n'))
local min = tonumber(redis.call('HGET', k, 'min'))
local verdict = 'recorded'
local reason = ''
if settled >= n and ok >= min then verdict = 'closing'; reason = 'complete'
elseif ok + (n - settled) < min then verdict = 'failing'; reason = 'min_results' end
if verdict ~= 'recorded' then
  redis.call('HSET', k, 'state', verdict, 'reason', reason, 'closer', idx)
end
return verdict
"""

_EXPIRE_LUA = """
local k = KEYS[1]
local state = redis.call('HGET', k, 'state')
if not state then return 'unknown' end
if state ~= 'open' then
  if redis.call('HGET', k, 'closer') == 'deadline' and (state == 'closing' or state == 'failing') then
    return state
  end
  return 'settled'
end
local ok = tonumber(redis.call('HGET', k, 'ok') or '0')
local min = tonumber(redis.call('HGET', k, 'min'))
local verdict = 'failing'
local reason = 'deadline'
if redis.call('HGET', k, 'on_timeout') == 'continue' then
  if ok >= min then verdict = 'closing' else reason = 'min_results' end
end
redis.call('HSET', k, 'state', verdict, 'reason', reason, 'closer', 'deadline')
return verdict
"""

_FINISH_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'closing' or state == 'failing' then
  redis.call('HSET', KEYS[1], 'state', ARGV[1])
end
return 0
"""


class RedisGatherStore:
    """Gathers on Redis: hash ``<prefix>gather:<id>`` with the spec, counters and one field per outcome."""

    def __init__(self, client: redis.Redis[bytes], prefix: str = "esf:") -> None:
        self._r = client
        self._prefix = prefix
        self._record = client.register_script(_RECORD_LUA)
        self._expire = client.register_script(_EXPIRE_LUA)
        self._finish = client.register_script(_FINISH_LUA)

    def _k(self, gather_id: str) -> str:
        return f"{self._prefix}gather:{gather_id}"

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import redis as _redis

        try:
            return fn(*args, **kwargs)
        except _redis.RedisError as exc:
            raise ServiceUnavailable(f"the Redis gather store failed: {type(exc).__name__}: {exc}") from exc

    def create(self, gather_id: str, spec: Mapping[str, Any], ttl_s: float) -> None:
        pipe = self._r.pipeline()
        pipe.hset(self._k(gather_id), mapping={
            "spec": json.dumps(dict(spec)), "state": "open", "reason": "", "n": spec["n"],
            "min": spec["min_results"], "on_timeout": spec["on_timeout"], "ok": 0, "settled": 0,
        })
        pipe.pexpire(self._k(gather_id), max(1, int(ttl_s * 1000)))
        self._call(pipe.execute)

    def record(self, gather_id: str, index: int, ok: bool, value: str) -> Verdict:
        out = self._call(self._record, keys=[self._k(gather_id)], args=[str(index), "r" if ok else "f", value])
        return _text(out)  # type: ignore[return-value]

    def expire(self, gather_id: str) -> Verdict:
        return _text(self._call(self._expire, keys=[self._k(gather_id)]))  # type: ignore[return-value]

    def finish(self, gather_id: str, closed_as: str) -> None:
        self._call(self._finish, keys=[self._k(gather_id)], args=[closed_as])

    def read(self, gather_id: str) -> GatherState | None:
        raw = self._call(self._r.hgetall, self._k(gather_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        results: dict[int, Any] = {}
        failed: dict[int, str] = {}
        late: list[int] = []
        for name, value in fields.items():
            kind, _, idx = name.partition(":")
            if kind == "r" and idx:
                results[int(idx)] = json.loads(value)
            elif kind == "f" and idx:
                failed[int(idx)] = value
            elif kind == "late" and idx:
                late.append(int(idx))
        return GatherState(id=gather_id, spec=json.loads(fields["spec"]), state=fields["state"],
                           reason=fields.get("reason", ""), results=results, failed=failed, late=sorted(late))

    def close(self) -> None:
        self._r.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SqliteGatherStore(SqliteFile):
    """Gathers in one SQLite file, for the embedded deployment (one machine)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "the SQLite gather store")
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS esf_gather (id TEXT PRIMARY KEY, spec TEXT NOT NULL,"
                       " state TEXT NOT NULL, reason TEXT NOT NULL, closer TEXT, n INTEGER NOT NULL,"
                       " min_results INTEGER NOT NULL, on_timeout TEXT NOT NULL, ok INTEGER NOT NULL,"
                       " settled INTEGER NOT NULL, expires REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS esf_gather_outcome (gather_id TEXT NOT NULL,"
                       " idx INTEGER NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL,"
                       " PRIMARY KEY (gather_id, idx, kind))")

    def _row(self, db: sqlite3.Connection, gather_id: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = db.execute(
            "SELECT state, closer, n, min_results, on_timeout, ok, settled FROM esf_gather"
            " WHERE id = ? AND expires > ?", (gather_id, time.time())).fetchone()
        return row

    def create(self, gather_id: str, spec: Mapping[str, Any], ttl_s: float) -> None:
        now = time.time()
        with self._tx() as db:
            expired = [r[0] for r in db.execute("SELECT id FROM esf_gather WHERE expires <= ?", (now,))]
            for old in expired:
                db.execute("DELETE FROM esf_gather_outcome WHERE gather_id = ?", (old,))
                db.execute("DELETE FROM esf_gather WHERE id = ?", (old,))
            db.execute("INSERT INTO esf_gather (id, spec, state, reason, closer, n, min_results, on_timeout, ok,"
                       " settled, expires) VALUES (?, ?, 'open', '', NULL, ?, ?, ?, 0, 0, ?)",
                       (gather_id, json.dumps(dict(spec)), spec["n"], spec["min_results"], spec["on_timeout"],
                        now + ttl_s))

    def record(self, gather_id: str, index: int, ok: bool, value: str) -> Verdict:
        with self._tx() as db:
            row = self._row(db, gather_id)
            if row is None:
                return "unknown"
            state, closer, n, min_results, _, ok_count, settled = row
            have = db.execute("SELECT 1 FROM esf_gather_outcome WHERE gather_id = ? AND idx = ? AND kind IN"
                              " ('r', 'f')", (gather_id, index)).fetchone() is not None
            if state != "open":
                if have:
                    return state if closer == str(index) and state in ("closing", "failing") else "duplicate"
                db.execute("INSERT OR IGNORE INTO esf_gather_outcome VALUES (?, ?, 'late', ?)",
                           (gather_id, index, value))
                return "late"
            if have:
                return "duplicate"
            db.execute("INSERT INTO esf_gather_outcome VALUES (?, ?, ?, ?)",
                       (gather_id, index, "r" if ok else "f", value))
            settled += 1
            ok_count += 1 if ok else 0
            verdict: Verdict = "recorded"
            reason = ""
            if settled >= n and ok_count >= min_results:
                verdict, reason = "closing", "complete"
            elif ok_count + (n - settled) < min_results:
                verdict, reason = "failing", "min_results"
            db.execute("UPDATE esf_gather SET ok = ?, settled = ? WHERE id = ?", (ok_count, settled, gather_id))
            if verdict != "recorded":
                db.execute("UPDATE esf_gather SET state = ?, reason = ?, closer = ? WHERE id = ?",
                           (verdict, reason, str(index), gather_id))
            return verdict

    def expire(self, gather_id: str) -> Verdict:
        with self._tx() as db:
            row = self._row(db, gather_id)
            if row is None:
                return "unknown"
            state, closer, _, min_results, on_timeout, ok_count, _ = row
            if state != "open":
                return state if closer == DEADLINE and state in ("closing", "failing") else "settled"
            verdict: Verdict = "failing"
            reason = "deadline"
            if on_timeout == "continue":
                verdict, reason = ("closing", "deadline") if ok_count >= min_results else ("failing", "min_results")
            db.execute("UPDATE esf_gather SET state = ?, reason = ?, closer = ? WHERE id = ?",
                       (verdict, reason, DEADLINE, gather_id))
            return verdict

    def finish(self, gather_id: str, closed_as: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE esf_gather SET state = ? WHERE id = ? AND state IN ('closing', 'failing')",
                       (closed_as, gather_id))

    def read(self, gather_id: str) -> GatherState | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT spec, state, reason FROM esf_gather WHERE id = ? AND expires > ?",
                             (gather_id, time.time())).fetchone()
            if row is None:
                return None
            outcomes = db.execute("SELECT idx, kind, value FROM esf_gather_outcome WHERE gather_id = ?",
                                  (gather_id,)).fetchall()
        results = {int(i): json.loads(v) for i, k, v in outcomes if k == "r"}
        failed = {int(i): str(v) for i, k, v in outcomes if k == "f"}
        late = sorted(int(i) for i, k, _ in outcomes if k == "late")
        return GatherState(id=gather_id, spec=json.loads(row[0]), state=str(row[1]), reason=str(row[2]),
                           results=results, failed=failed, late=late)
