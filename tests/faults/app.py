"""The application the fault scenarios run in worker subprocesses (settings from ESF_* variables).

Every handler records its effect in the ledger (``ESF_TEST_FAULTS_LEDGER_URL``, a Redis database
of the test's own that no scenario disturbs) after its work, so a handler killed mid-work leaves
no effect and one killed after it leaves one: the ledger sees what really happened.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

import esf
from esf import Q
from esf.foundation import Foundation

from .ledger import record_effect

_clients: dict[int, redis.Redis[bytes]] = {}


def ledger() -> redis.Redis[bytes]:
    """The ledger client of this process (made after fork: one per pid)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["ESF_TEST_FAULTS_LEDGER_URL"])
    return _clients[pid]


class AlwaysFails(Exception):
    pass


def build(settings: esf.Settings | None = None) -> Foundation:
    fnd = Foundation(settings or esf.Settings.from_env())

    @fnd.job(name="f.effect", retries=3, backoff=0.2, max_backoff=1.0, timeout=60)
    def effect(scenario: str, key: str, seconds: float = 0.0) -> None:
        if seconds:
            time.sleep(seconds)
        record_effect(ledger(), scenario, key)

    @fnd.job(name="f.fail", retries=2, backoff=0.1, max_backoff=0.2, timeout=30)
    def fail(scenario: str, key: str) -> None:
        ledger().hincrby(f"{scenario}:attempts", key, 1)
        raise AlwaysFails(f"handler for {key} always fails")

    if os.environ.get("ESF_TEST_FAULTS_SUBS"):
        @fnd.subscription("faults", filter=Q.type("fault.tick"), batch_size=10, retries=3, backoff=0.2,
                          max_backoff=1.0, timeout=60)
        def ticks(event: Any) -> None:
            if event.data.get("sleep"):
                time.sleep(float(event.data["sleep"]))
            record_effect(ledger(), str(event.data["scenario"]), str(event.data["key"]))

    return fnd


def make() -> Foundation:
    return build()
