"""Saga state without workers: compare-and-set under concurrent events, and bad input (PostgreSQL, SQLite)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import esf
from esf import Event
from esf.errors import ConcurrencyConflict, SagaNotActive, SerializationError, UnknownSaga, ValidationError
from esf.foundation import Foundation
from esf.sagas import Saga, reacts, step

from . import apps


def _foundation(database_url: str | None, data_dir: Path) -> Foundation:
    env = {"ESF_DATA_DIR": str(data_dir), "ESF_TELEMETRY_ENABLED": "false",
           "ESF_EVENTS_RECORD_JOB_EVENTS": "false"}
    if database_url:
        env["ESF_DATABASE_URL"] = database_url
    fnd = apps.build(esf.Settings.from_env(env))
    if database_url:
        with fnd.events.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(sa.text(apps.EFFECTS_DDL))
    return fnd


def test_concurrent_events_for_one_instance_lose_no_transition(pg_url: str, tmp_path: Path) -> None:
    # Given a started instance
    fnd = _foundation(pg_url, tmp_path)
    try:
        placed = fnd.events.append(Event("order.placed", {"order_id": "c-1"}))[0]
        assert fnd.sagas.on_event("fulfilment", placed) is not None
        notes = fnd.events.append([Event("order.noted", {"order_id": "c-1", "n": i}) for i in range(24)])
        # When 8 threads deliver 24 correlated events to it at once
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def deliver(chunk: list[Any]) -> None:
            barrier.wait()
            try:
                for event in chunk:
                    for _ in range(5):  # a cause that lost every attempt is delivered again, as its job would be
                        try:
                            fnd.sagas.on_event("fulfilment", event)
                            break
                        except ConcurrencyConflict:
                            continue
                    else:
                        raise AssertionError(f"event {event.event_id} was never applied")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=deliver, args=(list(notes)[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        # Then every reaction took effect once, each on the version before it
        saga = fnd.sagas.get("fulfilment", "c-1")
        assert saga.state["notes"] == 24
        assert saga.version == 25
        stream = fnd.events.read_stream("saga-fulfilment-c-1")
        assert [e.data["version"] for e in stream] == list(range(1, 26))
        # And an event delivered again (at-least-once) changes nothing
        assert fnd.sagas.on_event("fulfilment", notes[0]) is None
        assert fnd.sagas.on_event("fulfilment", placed) is None
        assert fnd.sagas.get("fulfilment", "c-1").version == 25
    finally:
        fnd.close()


def _saga(**attrs: Any) -> type[Saga]:
    def start(self: Saga, event: Any) -> None:
        self.state["x"] = 1

    body: dict[str, Any] = {"name": "ok", "starts_on": "a.b", "on_start": start, **attrs}
    return type("Bad", (Saga,), body)


@pytest.mark.parametrize(("attrs", "field"), [
    ({"name": "Bad-Name"}, "name"),
    ({"starts_on": ""}, "starts_on"),
    ({"on_start": Saga.on_start}, "on_start"),
    ({"start": "yesterday"}, "start"),
    ({"correlate_by": ""}, "correlate_by"),
    ({"also": reacts("a.b")(lambda self, e: None)}, "reactions.also"),
    ({"oops": step("not a function")}, "steps.oops"),  # type: ignore[arg-type]
])
def test_a_bad_saga_definition_is_refused_naming_the_problem(tmp_path: Path, attrs: dict[str, Any],
                                                             field: str) -> None:
    fnd = _foundation(None, tmp_path)
    try:
        with pytest.raises(ValidationError) as info:
            fnd.saga(_saga(**attrs))
        assert info.value.code == "validation_failed"
        assert field in info.value.errors
        with pytest.raises(ValidationError):
            fnd.saga(int)  # type: ignore[type-var]
        with pytest.raises(ValidationError, match="already declared"):
            fnd.saga(_saga(name="fulfilment"))
        assert [c.name for c in fnd.sagas.declared()] == ["fulfilment"]
    finally:
        fnd.close()


def test_bad_input_at_run_time_raises_specific_errors_and_writes_nothing(tmp_path: Path) -> None:
    # Given the embedded store (SQLite) and a saga whose start stores a non-JSON state on demand
    fnd = _foundation(None, tmp_path)
    try:
        @fnd.saga
        class Picky(Saga):
            name = "picky"
            starts_on = "picky.started"
            correlate_by = "id"

            def on_start(self, event: Any) -> None:
                if event.data.get("bad_state"):
                    self.state["when"] = object()
                if event.data.get("bad_step"):
                    self.run("nope")
                if event.data.get("bad_timeout"):
                    self.set_timeout("t", -1)

        for flag, error, code in (("bad_state", SerializationError, "not_json"),
                                  ("bad_step", ValidationError, "validation_failed"),
                                  ("bad_timeout", ValidationError, "validation_failed")):
            event = fnd.events.append(Event("picky.started", {"id": flag, flag: True}))[0]
            with pytest.raises(error) as info:
                fnd.sagas.on_event("picky", event)
            assert info.value.code == code
            with pytest.raises(UnknownSaga) as unknown:
                fnd.sagas.get("picky", flag)
            assert unknown.value.code == "unknown_saga"
        assert fnd.events.read_stream("saga-picky-bad_state") == []
        with pytest.raises(UnknownSaga):
            fnd.sagas.get_class("nope")
        with pytest.raises(UnknownSaga):
            fnd.sagas.abort("picky", "missing")
        with pytest.raises(ValidationError):
            fnd.sagas.list(status="sleeping")
        # And an ended saga cannot be aborted or retried
        done = fnd.events.append(Event("picky.started", {"id": "fine"}))[0]
        fnd.sagas.on_event("picky", done)
        fnd.sagas.abort("picky", "fine")
        assert fnd.sagas.get("picky", "fine").status == "aborted"
        for verb in (fnd.sagas.abort, fnd.sagas.retry):
            with pytest.raises(SagaNotActive) as ended:
                verb("picky", "fine")
            assert ended.value.code == "saga_not_active"
    finally:
        fnd.close()


def test_the_command_line_lists_shows_and_aborts_an_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from esf.cli import main

    # Given an embedded deployment with one running order whose reservation is in flight (no worker)
    monkeypatch.setenv("ESF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ESF_TELEMETRY_ENABLED", "false")
    fnd = _foundation(None, tmp_path)
    try:
        placed = fnd.events.append(Event("order.placed", {"order_id": "cli-1"}))[0]
        fnd.sagas.on_event("fulfilment", placed)
        app = ["--app", "tests.sagas.apps:make"]
        # When it is listed and shown
        assert main([*app, "sagas", "list", "--json"]) == 0
        (listed,) = json.loads(capsys.readouterr().out)
        assert (listed["stream_id"], listed["status"], listed["pending"]) == (
            "saga-fulfilment-cli-1", "running", {"reserve_stock:1": "reserve_stock"})
        assert main([*app, "sagas", "show", "saga-fulfilment-cli-1"]) == 0
        assert "saga-fulfilment-cli-1  running  v1" in capsys.readouterr().out
        # Then retrying a saga that is not stuck is refused, and abort compensates once the step in flight ends
        assert main([*app, "sagas", "retry", "fulfilment/cli-1"]) != 0
        assert "not stuck" in capsys.readouterr().err
        assert main([*app, "sagas", "abort", "fulfilment/cli-1"]) == 0
        assert "saga-fulfilment-cli-1: compensating" in capsys.readouterr().out
        assert main([*app, "sagas", "show", "nonsense"]) != 0
        assert "saga-<name>-<id>" in capsys.readouterr().err
    finally:
        fnd.close()


def test_saga_settings_are_checked_at_start() -> None:
    from esf.errors import SettingsError

    assert esf.Settings.from_env({"ESF_SAGAS_CAS_ATTEMPTS": "5"}).sagas.cas_attempts == 5
    for env in ({"ESF_SAGAS_CAS_ATTEMPTS": "0"}, {"ESF_SAGAS_STEP_QUEUE": "no spaces"}):
        with pytest.raises(SettingsError):
            esf.Settings.from_env(env)
