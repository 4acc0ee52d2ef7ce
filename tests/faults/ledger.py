"""The ledger of a fault scenario: what was sent, done, done twice, dead-lettered and lost.

Handlers record their own effects in Redis (``HINCRBY <scenario>:done <key> 1``), in the test's
own database and on a server no scenario disturbs, so a count survives the process that made it.
The test records what it sent in the same place. A ledger given a Foundation also reads the
DLQs of its queues (``fnd.jobs.dlq``, which never moves an entry it reads): a sent key whose
job, or whose event's subscription batch, is held there is **dead-lettered**, kept and
replayable, not lost. ``Ledger.settle`` waits until every sent key is done or dead-lettered
(or the deadline passes), then ``Ledger.report`` prints one summary line and writes a JSON
record under ``$ESF_FAULTS_REPORT`` (or the session's temporary directory) for
docs/reliability.md. Lost is what was sent and is neither done nor in a DLQ.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from esf import DeadLetter
    from esf.foundation import Foundation

#: Summary lines of this session, printed again at the end of the run (tests/faults/conftest.py).
SUMMARIES: list[str] = []
#: Read at import: the tests' autouse fixture clears ``ESF_*`` variables before each test runs.
REPORT_DIR = os.environ.get("ESF_FAULTS_REPORT")


@dataclass
class Counts:
    scenario: str
    sent: int
    done: int
    duplicated: int
    lost: int
    unexpected: int
    recover_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Sent keys seen in a DLQ (kept and replayable): those replayed since may be done now. None: the
    #: scenario's ledger reads no DLQ.
    dead_lettered: int | None = None

    def line(self) -> str:
        recover = "-" if self.recover_s is None else f"{self.recover_s:.1f}"
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        dead = "-" if self.dead_lettered is None else self.dead_lettered
        return (f"FAULTS {self.scenario}: sent={self.sent} done={self.done} duplicated={self.duplicated} "
                f"dead_lettered={dead} lost={self.lost} recover_s={recover}{extra}")


def record_effect(client: redis.Redis[bytes], scenario: str, key: str) -> int:
    """Count one effect of ``key`` (called by handlers, in the worker). Returns how many so far."""
    return int(client.hincrby(f"{scenario}:done", key, 1))


#: Jobs of tests.faults.app whose arguments are ``(scenario, key, …)``.
EFFECT_JOBS = ("f.effect",)
#: Prefix of a subscription's handler job name (docs/subscriptions.md); its arguments are
#: ``(batch id, positions)`` and each event's data names its ``scenario`` and ``key``.
SUBSCRIPTION_JOB_PREFIX = "esf.subscription."


class DeadLetters:
    """Scenario keys held by the DLQs of a Foundation's queues, read through ``fnd.jobs.dlq``."""

    def __init__(self, fnd: Foundation) -> None:
        self.fnd = fnd

    def entries(self, scenario: str) -> dict[str, list[DeadLetter]]:
        """Every DLQ entry holding a key of ``scenario``: ``{key: [entries]}``."""
        found: dict[str, list[DeadLetter]] = {}
        for entry in self.fnd.jobs.dlq.entries():
            for key in self._keys(entry, scenario):
                found.setdefault(key, []).append(entry)
        return found

    def _keys(self, entry: DeadLetter, scenario: str) -> list[str]:
        if entry.job in EFFECT_JOBS and len(entry.args) >= 2 and entry.args[0] == scenario:
            return [str(entry.args[1])]
        if entry.job.startswith(SUBSCRIPTION_JOB_PREFIX) and len(entry.args) >= 2 and entry.args[1]:
            positions = sorted(int(p) for p in entry.args[1])
            events = self.fnd.events.read_all(after_position=positions[0] - 1,
                                              limit=positions[-1] - positions[0] + 1)
            return [str(e.data["key"]) for e in events
                    if e.position in positions and e.data.get("scenario") == scenario and "key" in e.data]
        return []

    def replay(self, scenario: str) -> list[str]:
        """Replay every entry holding a key of ``scenario``; returns the keys they hold."""
        held = self.entries(scenario)
        ids = {e.id for entries in held.values() for e in entries}
        if ids:
            self.fnd.jobs.dlq.replay(sorted(ids))
        return sorted(held)


class Ledger:
    """Sent keys, the effects handlers recorded and the keys held by DLQs, for one scenario."""

    def __init__(self, client: redis.Redis[bytes], scenario: str, dead_letters: DeadLetters | None = None) -> None:
        self.client = client
        self.scenario = scenario
        self.dead_letters = dead_letters
        self.recovered_at: float | None = None
        #: Keys replayed from a DLQ (None: no replay was asked for).
        self.replayed: set[str] | None = None
        self._fault_ended_at: float | None = None
        self._dead_seen: set[str] = set()

    def sent(self, *keys: str) -> None:
        if keys:
            self.client.sadd(f"{self.scenario}:sent", *keys)

    def sent_keys(self) -> set[str]:
        return {k.decode() for k in self.client.smembers(f"{self.scenario}:sent")}

    def effects(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(f"{self.scenario}:done").items()}

    def done_count(self) -> int:
        sent = self.sent_keys()
        return sum(1 for k in self.effects() if k in sent)

    def fault_ended(self) -> None:
        """Mark the moment the last fault was lifted: recovery time is measured from here."""
        self._fault_ended_at = time.monotonic()

    def dead_lettered(self) -> set[str]:
        """Sent keys held by a DLQ now (remembered: :meth:`counts` reports every key ever seen there)."""
        if self.dead_letters is None:
            return set()
        dead = set(self.dead_letters.entries(self.scenario)) & self.sent_keys()
        self._dead_seen |= dead
        return dead

    def replay_dead_letters(self) -> list[str]:
        """Replay the DLQ entries holding this scenario's keys (``fnd.jobs.dlq.replay``); returns the keys."""
        assert self.dead_letters is not None, "a ledger without a Foundation reads no DLQ"
        self.dead_lettered()
        keys = self.dead_letters.replay(self.scenario)
        self.replayed = (self.replayed or set()) | set(keys)
        return keys

    def settle(self, timeout: float, interval: float = 0.5) -> None:
        """Wait until every sent key is done or dead-lettered, at most ``timeout`` seconds (never fails by itself)."""
        settle(self, timeout=timeout, interval=interval)

    def complete(self) -> bool:
        """Every sent key is done, or held by a DLQ (read only while some key is not done)."""
        missing = self.sent_keys() - set(self.effects())
        return not missing or not missing - self.dead_lettered()

    def counts(self, **extra: Any) -> Counts:
        sent = self.sent_keys()
        effects = self.effects()
        done = {k for k in effects if k in sent}
        dead = self.dead_lettered()
        recover = None
        if self._fault_ended_at is not None and self.recovered_at is not None:
            recover = round(self.recovered_at - self._fault_ended_at, 2)
        return Counts(self.scenario, len(sent), len(done), sum(effects[k] - 1 for k in done),
                      len(sent - done - dead), len(set(effects) - sent), recover, dict(extra),
                      dead_lettered=None if self.dead_letters is None else len(self._dead_seen))

    def report(self, *, allow_duplicates: bool, all_done: bool = False, **extra: Any) -> Counts:
        """Print the summary line, write the JSON record, and check the scenario's promise.

        Nothing sent may be lost (neither done nor in a DLQ), nothing unsent may be done; duplicates
        only where at-least-once admits them (``allow_duplicates``). ``all_done``: every sent key
        must be done, none left in a DLQ (a scenario that replayed its dead letters).
        """
        if self.replayed is not None:
            extra = {"replayed": len(self.replayed), **extra}
        counts = self.counts(**extra)
        line = counts.line()
        SUMMARIES.append(line)
        print(line)
        write_record(counts)
        assert counts.lost == 0, f"{counts.lost} sent items were never done nor dead-lettered: {line}"
        assert counts.unexpected == 0, f"{counts.unexpected} effects of items never sent: {line}"
        if all_done:
            assert counts.done == counts.sent, f"{counts.sent - counts.done} sent items not done: {line}"
        if not allow_duplicates:
            assert counts.duplicated == 0, f"effects applied twice where exactly once is promised: {line}"
        return counts


def settle(*ledgers: Ledger, timeout: float, interval: float = 0.5) -> None:
    """Wait until every ledger is complete, at most ``timeout`` seconds; each notes when it became so."""
    deadline = time.monotonic() + timeout
    waiting = list(ledgers)
    while waiting and time.monotonic() < deadline:
        for ledger in list(waiting):
            if ledger.complete():
                ledger.recovered_at = time.monotonic()
                waiting.remove(ledger)
        if waiting:
            time.sleep(interval)


def report_dir() -> Path:
    if REPORT_DIR:
        path = Path(REPORT_DIR)
    else:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / "esf-faults-report"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_record(counts: Counts) -> Path:
    record = {**asdict(counts), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = report_dir() / f"{counts.scenario}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
