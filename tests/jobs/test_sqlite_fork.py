"""A worker's main process forks pool processes while its outbox relay uses the embedded SQLite store."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from esf.plugins.sqlalchemy_events import outbox_put
from sqlalchemy.orm import Session

import esf
from esf.foundation import Foundation


@pytest.fixture
def main_process(tmp_path: Path) -> Iterator[Foundation]:
    """A Foundation on the embedded default, prepared as a worker's main process is before its pool starts."""
    fnd = Foundation(esf.Settings(data_dir=str(tmp_path)))
    fnd._runtime.boot()
    try:
        yield fnd
    finally:
        fnd.close()


def _child_can_write(db_path: Path) -> bool:
    """Fork; the child takes the write lock of ``db_path`` on a connection of its own."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            db = sqlite3.connect(db_path, timeout=2, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            db.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_a_pool_process_forked_while_the_outbox_relay_drains_can_write_to_the_event_store(
    main_process: Foundation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fnd = main_process
    outbox = fnd.jobs.outbox
    # Given a message in the outbox, and a relay that is dispatching it (inside its write transaction)
    with Session(fnd.events.engine) as s:
        outbox_put(s, "job", {"n": 1})
        s.commit()
    dispatching, release = threading.Event(), threading.Event()

    def dispatch(kind: str, payload: dict[str, Any]) -> None:
        dispatching.set()
        release.wait(10)

    monkeypatch.setattr(outbox, "dispatch", dispatch)
    relay = threading.Thread(target=outbox.drain)
    relay.start()
    assert dispatching.wait(10)
    armed = [True]

    def at_fork() -> None:
        # Runs when fork() starts (registered after ESF's guard, so called before it): the relay is still
        # inside its transaction here, and is let go only now, so the fork always starts inside it.
        if armed[0]:
            armed[0] = False
            release.set()

    os.register_at_fork(before=at_fork)
    # When the process forks a pool process
    child_wrote = _child_can_write(tmp_path / "esf.sqlite")
    relay.join(10)
    assert not armed[0]
    # Then that pool process can write (SQLite's lock records of the relay did not follow it)
    assert child_wrote
    # And the message was relayed
    assert fnd.events.outbox_relay(dispatch, kind="job").pending() == 0
