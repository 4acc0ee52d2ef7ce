"""Process lifecycle: worker boot, start, fork and shutdown reach each service through its own hooks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from esf.lifecycle import ServiceLifecycle, dispatch


class Recorder(ServiceLifecycle):
    def __init__(self, name: str, calls: list[tuple[str, str]], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def on_worker_start(self, queues: tuple[str, ...]) -> None:
        self.calls.append((self.name, ",".join(queues)))
        if self.fail:
            raise RuntimeError("boom")


def test_dispatch_calls_each_service_in_order_and_a_failing_hook_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str]] = []
    services = [Recorder("a", calls, fail=True), object(), Recorder("b", calls)]
    with caplog.at_level(logging.ERROR, logger="esf"):
        dispatch(services, "on_worker_start", ("q1", "q2"))
    assert calls == [("a", "q1,q2"), ("b", "q1,q2")]
    assert "Recorder.on_worker_start failed" in caplog.text


def test_an_unknown_hook_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown lifecycle hook"):
        dispatch([], "before_everything")


def test_worker_start_and_stop_reach_the_outbox_relay_and_the_subscription_dispatcher(data_dir: Path) -> None:
    # Given an embedded Foundation whose jobs and subscriptions are built
    with Foundation(esf.Settings(data_dir=str(data_dir))) as fnd:
        subscriptions = fnd.subscriptions
        # When the worker starts; Then the services' threads run
        fnd.worker_started(queues=("default",))
        relay = fnd.jobs.outbox._thread
        assert relay is not None and relay.is_alive()
        assert subscriptions._dispatcher is not None
        # When it stops; Then they are stopped
        fnd.worker_stopped()
        assert not relay.is_alive() and fnd.jobs.outbox._thread is None
        assert subscriptions._dispatcher is None


def test_worker_boot_marks_the_outbox_relay_as_running_in_a_forking_process(data_dir: Path) -> None:
    with Foundation(esf.Settings(data_dir=str(data_dir))) as fnd:
        assert fnd.jobs.outbox.forking is False
        fnd.preload()
        assert fnd.jobs.outbox.forking is True


def test_after_fork_gives_the_jobs_service_a_new_coordinator_and_the_event_store_a_new_pool(data_dir: Path) -> None:
    with Foundation(esf.Settings(data_dir=str(data_dir))) as fnd:
        before = fnd.jobs.coordinator
        pool = fnd.events.engine.pool
        fnd.after_fork()
        assert fnd.jobs.coordinator is not before
        assert fnd.events.engine.pool is not pool  # the parent's connections are left to the parent
        before.close()
