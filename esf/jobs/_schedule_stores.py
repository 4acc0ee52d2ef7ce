"""Schedule stores: the interface, and its Redis and SQLite implementations.

Each schedule is stored as its definition (JSON text), a revision number and its
run state (last and next run). Every definition change takes a new revision, which
is globally unique in the store, so a fire recorded against an old revision fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._sqlite import SqliteFile
from ..errors import ServiceUnavailable

if TYPE_CHECKING:
    import redis

__all__ = ["ABSENT", "ANY", "RedisScheduleStore", "ScheduleStore", "SqliteScheduleStore", "StoredRecord"]


@dataclass(frozen=True)
class StoredRecord:
    """One schedule as stored: its definition (JSON text), revision and run state (epoch seconds)."""

    name: str
    definition: str
    revision: int
    last_run_at: float | None
    next_run_at: float | None


#: ``expected`` of :meth:`ScheduleStore.put`: the record must not exist / may be anything.
ABSENT: int = 0
ANY: int = -1


class ScheduleStore(Protocol):
    """Where schedules live. Every method is atomic across processes."""

    def put(self, name: str, definition: str, expected: int, run: tuple[float | None, float | None] | None) -> int:
        """Write a definition with a new revision if the current one is ``expected``
        (:data:`ABSENT`: must not exist; :data:`ANY`: whatever it is). ``run`` is ``(last, next)`` to
        write, or None to keep the stored run state. Returns the new revision, or 0 on a conflict."""

    def record_run(self, name: str, revision: int, last: float | None, next_: float | None) -> bool:
        """Write the run state if the revision is still ``revision``; False otherwise."""

    def delete(self, name: str) -> bool:
        """Remove a schedule; False when it did not exist."""

    def get(self, name: str) -> StoredRecord | None:
        """One schedule, or None."""

    def load(self) -> list[StoredRecord]:
        """Every schedule (one consistent snapshot)."""


_PUT_LUA = """
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[3] == '0' then
  if cur then return 0 end
elseif ARGV[3] ~= '-1' then
  if cur ~= ARGV[3] then return 0 end
end
local rev = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[2], ARGV[1], rev)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return rev
"""

_RUN_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  return 1
end
return 0
"""

_DEL_LUA = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return n
"""


class RedisScheduleStore:
    """Schedules in Redis: hashes ``esf:schedules:defs``, ``…:revs`` and ``…:runs``, keyed by name."""

    def __init__(self, client: redis.Redis[bytes] | Callable[[], redis.Redis[bytes]],
                 prefix: str = "esf:schedules:") -> None:
        # A callable is asked for the client on every call, so a forked process uses its own connection.
        self._client: Callable[[], redis.Redis[bytes]] = client if callable(client) else (lambda: client)
        self._keys = [prefix + "defs", prefix + "revs", prefix + "runs", prefix + "rev-seq"]
        self._scripts: dict[str, Any] = {}

    @property
    def _r(self) -> redis.Redis[bytes]:
        return self._client()

    def _script(self, text: str, keys: list[str], args: list[Any]) -> Any:
        client = self._r
        script = self._scripts.get(text)
        if script is None:
            script = self._scripts[text] = client.register_script(text)
        return self._call(script, keys=keys, args=args, client=client)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import redis as _redis

        try:
            return fn(*args, **kwargs)
        except _redis.RedisError as exc:
            raise ServiceUnavailable(f"the schedule store (Redis) failed: {type(exc).__name__}: {exc}") from exc

    def put(self, name: str, definition: str, expected: int, run: tuple[float | None, float | None] | None) -> int:
        run_text = "" if run is None else json.dumps(list(run))
        return int(self._script(_PUT_LUA, self._keys, [name, definition, expected, run_text]))

    def record_run(self, name: str, revision: int, last: float | None, next_: float | None) -> bool:
        return bool(self._script(_RUN_LUA, self._keys[1:3], [name, revision, json.dumps([last, next_])]))

    def delete(self, name: str) -> bool:
        return bool(self._script(_DEL_LUA, self._keys[:3], [name]))

    def _record(self, name: str, definition: bytes | None, rev: bytes | None, run: bytes | None) -> StoredRecord | None:
        if definition is None or rev is None:
            return None
        last, next_ = json.loads(run) if run else (None, None)
        return StoredRecord(name, definition.decode(), int(rev), last, next_)

    def get(self, name: str) -> StoredRecord | None:
        pipe = self._r.pipeline(transaction=True)
        for key in self._keys[:3]:
            pipe.hget(key, name)
        d, r, run = self._call(pipe.execute)
        return self._record(name, d, r, run)

    def load(self) -> list[StoredRecord]:
        pipe = self._r.pipeline(transaction=True)
        for key in self._keys[:3]:
            pipe.hgetall(key)
        defs, revs, runs = self._call(pipe.execute)
        out = []
        for raw_name, d in defs.items():
            rec = self._record(raw_name.decode(), d, revs.get(raw_name), runs.get(raw_name))
            if rec is not None:
                out.append(rec)
        return out


class SqliteScheduleStore(SqliteFile):
    """Schedules in one SQLite file (the embedded deployment: every process on one machine)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "the schedule store")
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS esf_schedules (name TEXT PRIMARY KEY, definition TEXT NOT NULL,"
                       " revision INTEGER NOT NULL, last_run_at REAL, next_run_at REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS esf_schedule_seq (id INTEGER PRIMARY KEY AUTOINCREMENT)")

    def put(self, name: str, definition: str, expected: int, run: tuple[float | None, float | None] | None) -> int:
        with self._tx() as db:
            row = db.execute("SELECT revision FROM esf_schedules WHERE name = ?", (name,)).fetchone()
            if (expected == ABSENT and row is not None) or (expected not in (ABSENT, ANY)
                                                             and (row is None or row[0] != expected)):
                return 0
            rev = int(db.execute("INSERT INTO esf_schedule_seq DEFAULT VALUES").lastrowid or 0)
            db.execute("DELETE FROM esf_schedule_seq WHERE id < ?", (rev,))
            if row is None:
                last, next_ = run or (None, None)
                db.execute("INSERT INTO esf_schedules VALUES (?, ?, ?, ?, ?)", (name, definition, rev, last, next_))
            elif run is None:
                db.execute("UPDATE esf_schedules SET definition = ?, revision = ? WHERE name = ?",
                           (definition, rev, name))
            else:
                db.execute("UPDATE esf_schedules SET definition = ?, revision = ?, last_run_at = ?, next_run_at = ?"
                           " WHERE name = ?", (definition, rev, run[0], run[1], name))
            return rev

    def record_run(self, name: str, revision: int, last: float | None, next_: float | None) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE esf_schedules SET last_run_at = ?, next_run_at = ? WHERE name = ? AND"
                             " revision = ?", (last, next_, name, revision))
            return cur.rowcount == 1

    def delete(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM esf_schedules WHERE name = ?", (name,)).rowcount == 1

    def get(self, name: str) -> StoredRecord | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT name, definition, revision, last_run_at, next_run_at FROM esf_schedules"
                             " WHERE name = ?", (name,)).fetchone()
        return None if row is None else StoredRecord(*row)

    def load(self) -> list[StoredRecord]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT name, definition, revision, last_run_at, next_run_at FROM esf_schedules"
                              " ORDER BY name").fetchall()
        return [StoredRecord(*row) for row in rows]
