"""Scatter-gather through a SIGKILLed worker, on Redis and RabbitMQ, and on the embedded default."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation

from . import apps
from .conftest import Broker
from .harness import Worker, settings_env, wait_for


def _runs(fnd: Foundation, key: str) -> int:
    return int(fnd.jobs.coordinator.get(key) or 0)


@pytest.mark.slow
def test_a_worker_sigkilled_during_a_gather_leaves_the_callback_to_run_exactly_once(
        broker: Broker, fnd: Foundation, tmp_path: Path) -> None:
    # Given a gather of four jobs held inside a worker with two processes
    key = uuid.uuid4().hex
    item = fnd.jobs.get("t.gather_item")
    first = Worker(broker.env, tmp_path / "first.log")
    try:
        first.wait_ready()
        g = fnd.gather([item.s(key, i, hold=True) for i in range(4)], then="t.gather_then", deadline=300)
        wait_for(lambda: sum(_runs(fnd, f"item-runs:{key}:{i}") for i in range(4)) >= 2, timeout=60,
                 message="two jobs of the gather running")
        # When the whole worker is SIGKILLed mid-gather, and another one takes over
        first.kill()
    finally:
        first.discard()
    fnd.jobs.coordinator.claim(f"release:{key}", "1", 600)
    second = Worker(broker.env, tmp_path / "second.log")
    try:
        second.wait_ready()
        outcome = g.wait(120)
        # Then every result arrived (the killed jobs ran again) and the callback ran once
        assert outcome["results"] == [0, 10, 20, 30] and outcome["reason"] == "complete"
        assert max(_runs(fnd, f"item-runs:{key}:{i}") for i in range(4)) >= 2, "no job was interrupted"
        assert _runs(fnd, f"then-runs:{g.id}") == 1
        assert g.status()["state"] == "done"
    finally:
        second.discard()


@pytest.mark.slow
def test_the_deadline_survives_a_sigkilled_worker_and_fires_on_the_next_one(
        broker: Broker, fnd: Foundation, tmp_path: Path) -> None:
    # Given a gather with one result in and a straggler, its deadline job held by the only worker
    key = uuid.uuid4().hex
    item = fnd.jobs.get("t.gather_item")
    first = Worker(broker.env, tmp_path / "first.log")
    try:
        first.wait_ready()
        g = fnd.gather([item.s(key, 0), item.s(key, 1, hold=True)], then="t.gather_then", deadline=12,
                       min_results=1, on_timeout="continue")
        wait_for(lambda: g.status()["arrived"] == [0] and _runs(fnd, f"item-runs:{key}:1") >= 1, timeout=60,
                 message="the first result stored and the straggler running")
        assert g.status()["state"] == "open"
        # When that worker is SIGKILLed before the deadline and another one starts
        first.kill()
    finally:
        first.discard()
    second = Worker(broker.env, tmp_path / "second.log")
    try:
        second.wait_ready()
        # Then the deadline still fires, once, with the partial results
        outcome = g.wait(120)
        assert outcome["reason"] == "deadline" and outcome["results"] == [0, None]
        assert _runs(fnd, f"then-runs:{g.id}") == 1
    finally:
        fnd.jobs.coordinator.claim(f"release:{key}", "1", 600)
        second.discard()


def test_a_gather_runs_on_the_embedded_default(tmp_path: Path) -> None:
    # Given the embedded default (SQLite broker, results and gather store) and a worker
    env = settings_env("", data_dir=str(tmp_path / ".esf"))
    worker = Worker(env, tmp_path / "w.log")
    fnd = apps.build(esf.Settings.from_env(env))
    try:
        worker.wait_ready()
        key = uuid.uuid4().hex
        item = fnd.jobs.get("t.gather_item")
        # When three jobs are gathered, one of them a straggler, with on_timeout="continue"
        g = fnd.gather([item.s(key, 0), item.s(key, 1), item.s(key, 2, hold=True)], then="t.gather_then",
                       deadline=8, min_results=2, on_timeout="continue")
        outcome = g.wait(120)
        # Then the callback got the two results; the straggler is recorded late once released
        assert outcome["results"] == [0, 10, None] and outcome["missing"] == [2]
        fnd.jobs.coordinator.claim(f"release:{key}", "1", 600)
        wait_for(lambda: g.status()["late"] == [2], timeout=60, message="the straggler recorded as late")
        assert _runs(fnd, f"then-runs:{g.id}") == 1
    finally:
        fnd.jobs.coordinator.claim(f"release:{key}", "1", 600)
        worker.discard()
        fnd.close()
