"""The ledger of a fault scenario: what was sent, what was done, what was done twice, what was lost.

Handlers record their own effects in Redis (``HINCRBY <scenario>:done <key> 1``), in the test's
own database and on a server no scenario disturbs, so a count survives the process that made it.
The test records what it sent in the same place. ``Ledger.settle`` waits until every sent key
is done (or the deadline passes), then ``Ledger.report`` prints one summary line and writes a
JSON record under ``$ESF_FAULTS_REPORT`` (or the session's temporary directory) for
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

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

    def line(self) -> str:
        recover = "-" if self.recover_s is None else f"{self.recover_s:.1f}"
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (f"FAULTS {self.scenario}: sent={self.sent} done={self.done} duplicated={self.duplicated} "
                f"lost={self.lost} recover_s={recover}{extra}")


def record_effect(client: redis.Redis[bytes], scenario: str, key: str) -> int:
    """Count one effect of ``key`` (called by handlers, in the worker). Returns how many so far."""
    return int(client.hincrby(f"{scenario}:done", key, 1))


class Ledger:
    """Sent keys and the effects handlers recorded, for one scenario."""

    def __init__(self, client: redis.Redis[bytes], scenario: str) -> None:
        self.client = client
        self.scenario = scenario
        self.recovered_at: float | None = None
        self._fault_ended_at: float | None = None

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

    def settle(self, timeout: float, interval: float = 0.5) -> None:
        """Wait until every sent key has an effect, at most ``timeout`` seconds (never fails by itself)."""
        settle(self, timeout=timeout, interval=interval)

    def complete(self) -> bool:
        return self.sent_keys() <= set(self.effects())

    def counts(self, **extra: Any) -> Counts:
        sent = self.sent_keys()
        effects = self.effects()
        done = {k for k in effects if k in sent}
        recover = None
        if self._fault_ended_at is not None and self.recovered_at is not None:
            recover = round(self.recovered_at - self._fault_ended_at, 2)
        return Counts(self.scenario, len(sent), len(done), sum(effects[k] - 1 for k in done),
                      len(sent - done), len(set(effects) - sent), recover, dict(extra))

    def report(self, *, allow_duplicates: bool, **extra: Any) -> Counts:
        """Print the summary line, write the JSON record, and check the scenario's promise.

        Nothing sent may be lost, nothing unsent may be done; duplicates only where at-least-once
        admits them (``allow_duplicates``).
        """
        counts = self.counts(**extra)
        line = counts.line()
        SUMMARIES.append(line)
        print(line)
        write_record(counts)
        assert counts.lost == 0, f"{counts.lost} sent items were never done: {line}"
        assert counts.unexpected == 0, f"{counts.unexpected} effects of items never sent: {line}"
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
