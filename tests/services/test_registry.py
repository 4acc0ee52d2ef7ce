"""The service-task registry: declarations, `esf services --json`, settings switches, worker profiles."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from esf.workers import get_profile, worker_argv

import esf
from esf.errors import NotFound, SettingsError, ValidationError
from esf.foundation import Foundation
from esf.services import DefaultSchedule
from tests.jobs.harness import ROOT

from . import apps

DEFAULT_TASKS = {"esf.events.append", "esf.events.prune", "esf.events.outbox_sweep", "esf.config.reconcile",
                 "esf.config.apply_batch", "esf.telemetry.export", "esf.telemetry.rollup"}


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    return {"ESF_DATA_DIR": str(data_dir), "ESF_JOBS_SERVICE_NAMESPACE": "acme", **extra}


@pytest.fixture
def fnd(data_dir: Path) -> Iterator[Foundation]:
    f = Foundation(esf.Settings.from_env(env_for(data_dir)))
    try:
        yield f
    finally:
        f.close()


def test_every_foundation_service_task_is_a_job_on_its_routed_queue_with_its_dead_letter_queue(
        fnd: Foundation) -> None:
    # Given a Foundation whose service queues live under the namespace "acme"
    # When the registry lists the service tasks
    tasks = {t.name: t for t in fnd.services.tasks()}
    # Then every default task is there, on acme.<service> with acme.<service>.dlq, and is the declared job
    assert DEFAULT_TASKS <= set(tasks)
    for name in DEFAULT_TASKS:
        service = name.split(".")[1]
        t = tasks[name]
        assert (t.service, t.queue, t.dlq, t.declared) == (service, f"acme.{service}", f"acme.{service}.dlq", True)
        assert fnd.jobs.get(name).options.queue == t.queue
        assert t.idempotency and t.description
    # And the scheduled ones carry the setting that switches them
    assert tasks["esf.events.prune"].schedule == DefaultSchedule(every_s=3600.0, enabled=False,
                                                                 setting="services.events_prune")
    assert tasks["esf.config.reconcile"].schedule == DefaultSchedule(every_s=30.0, enabled=True,
                                                                     setting="services.config_reconcile")


def test_a_job_declared_the_plain_way_on_a_service_queue_is_listed_and_an_application_job_is_not(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an application that declares esf.flags.report with @fnd.job on the flags queue, and app.hello
    for k, v in env_for(data_dir).items():
        monkeypatch.setenv(k, v)
    fnd = apps.make()
    try:
        tasks = {t.name: t for t in fnd.services.tasks()}
    finally:
        fnd.close()
    # Then the registry lists the first as an undeclared task of the flags service, and not the second
    report = tasks["esf.flags.report"]
    assert (report.service, report.queue, report.declared, report.retries, report.description) == (
        "flags", "acme.flags", False, 1, "Report which flags were evaluated.")
    assert "app.hello" not in tasks


def test_esf_services_json_matches_the_registry_and_the_schedule_store(data_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the application's default schedules written to the store (as beat does when it starts)
    env = env_for(data_dir)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fnd = apps.make()
    try:
        fnd.jobs.schedules.sync_declared()
        expected = [{**dataclasses.asdict(t), "retry_on": list(t.retry_on)} for t in fnd.services.tasks()]
    finally:
        fnd.close()
    # When `esf services --json` runs in another process
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ESF_")}
    full_env.update(env, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "esf.cli", "--app", "tests.services.apps:make", "services",
                           "--json"], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    # Then it lists exactly the registry's tasks, field for field
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    # And says which schedules beat fires: the enabled defaults, not the one switched off
    scheduled = {r["name"]: r["scheduled"] for r in rows}
    assert scheduled["esf.config.reconcile"] and scheduled["esf.events.outbox_sweep"]
    assert not scheduled["esf.events.prune"] and not scheduled["esf.events.append"]
    assert all(r["next_run_at"] for r in rows if scheduled[r["name"]])
    assert all(r["last_run"] is None and r["problems"] == [] for r in rows)


def test_a_default_schedule_switched_off_in_settings_leaves_the_store_when_beat_starts(data_dir: Path) -> None:
    # Given beat ran once with the default settings: reconcile and outbox_sweep are stored
    on = Foundation(esf.Settings.from_env(env_for(data_dir)))
    on.jobs.schedules.sync_declared()
    assert on.jobs.schedules.get("esf.config.reconcile").every == 30.0
    on.close()
    # When beat starts again with reconcile switched off and prune switched on at 120 s
    off = Foundation(esf.Settings.from_env(env_for(data_dir, ESF_SERVICES_CONFIG_RECONCILE="false",
                                                   ESF_SERVICES_EVENTS_PRUNE="true",
                                                   ESF_SERVICES_EVENTS_PRUNE_EVERY_S="120")))
    try:
        off.jobs.schedules.sync_declared()
        # Then reconcile is gone from the store, prune is there at its interval, the sweep stays
        with pytest.raises(NotFound):
            off.jobs.schedules.get("esf.config.reconcile")
        assert off.jobs.schedules.get("esf.events.prune").every == 120.0
        assert off.jobs.schedules.get("esf.events.outbox_sweep").enabled
    finally:
        off.close()
    # And the master switch takes every default schedule out
    none = Foundation(esf.Settings.from_env(env_for(data_dir, ESF_SERVICES_SCHEDULES="false")))
    try:
        none.jobs.schedules.sync_declared()
        assert [s.name for s in none.jobs.schedules.list()] == []
    finally:
        none.close()


def test_a_schedule_added_at_run_time_under_a_service_task_s_name_is_left_alone(data_dir: Path) -> None:
    # Given an operator's own schedule named like a default one, with the default switched off
    fnd = Foundation(esf.Settings.from_env(env_for(data_dir, ESF_SERVICES_CONFIG_RECONCILE="false")))
    try:
        from esf.jobs._schedules import Schedule

        fnd.jobs.schedules.add(Schedule(name="esf.config.reconcile", job="esf.config.reconcile", every=5))
        # When beat starts
        fnd.jobs.schedules.sync_declared()
        # Then it is kept: only what the code declared is retired
        assert fnd.jobs.schedules.get("esf.config.reconcile").every == 5.0
    finally:
        fnd.close()


def test_a_bad_service_task_declaration_is_refused_and_declares_nothing(fnd: Foundation) -> None:
    before = fnd.jobs.names()
    cases = [
        dict(service="billing", verb="run", idempotency="x"),
        dict(service="cache", verb="WarmUp", idempotency="x"),
        dict(service="cache", verb="warm", idempotency=" "),
        dict(service="cache", verb="warm", idempotency="x", schedule=DefaultSchedule(cron="61 * * * *")),
        dict(service="events", verb="prune", idempotency="x"),
    ]
    for case in cases:
        # When a declaration has an unknown service, a bad verb, no idempotency note, a bad cron or a taken name
        with pytest.raises(ValidationError):
            fnd.services.task(retries=1, backoff=1.0, timeout=10, **case)(lambda: None)  # type: ignore[arg-type]
    # Then no job (and no schedule) was declared
    assert fnd.jobs.names() == before
    assert "esf.cache.warm" not in {s.name for s in fnd.jobs.schedules.declared()}
    with pytest.raises(ValidationError):
        DefaultSchedule(every_s=0)
    with pytest.raises(ValidationError):
        DefaultSchedule(every_s=1, cron="* * * * *")


def test_services_max_backoff_caps_every_service_task_s_retry_delays(data_dir: Path) -> None:
    fnd = Foundation(esf.Settings.from_env(env_for(data_dir, ESF_SERVICES_MAX_BACKOFF_S="0.5")))
    try:
        prune = fnd.jobs.get("esf.events.prune").options
        assert (prune.backoff_s, prune.max_backoff_s, prune.retries) == (0.5, 0.5, 3)
    finally:
        fnd.close()
    with pytest.raises(SettingsError):
        esf.Settings.from_env({"ESF_SERVICES_MAX_BACKOFF_S": "0"})


def test_the_services_profile_consumes_only_the_service_queues_and_the_application_profile_none_of_them(
        fnd: Foundation) -> None:
    jobs = fnd.settings.jobs

    def queues(profile: str) -> set[str]:
        argv = worker_argv(fnd, get_profile(profile))
        return set(next(a for a in argv if a.startswith("--queues=")).removeprefix("--queues=").split(","))

    assert queues("services") == {f"acme.{s}" for s in ("events", "config", "telemetry", "cache", "flags",
                                                       "secrets", "jobs", "sagas")}
    assert queues("application") == set(jobs.queues)
    assert queues("default") == set(jobs.all_queues)


def test_the_readme_and_docs_tables_list_every_declared_service_task_as_declared(data_dir: Path) -> None:
    # Given the registry of a Foundation with the default namespace and settings
    fnd = Foundation(esf.Settings(data_dir=str(data_dir)))
    try:
        declared = {t.name: t for t in fnd.services.tasks() if t.declared}
    finally:
        fnd.close()
    for doc in (ROOT / "README.md", ROOT / "docs" / "services.md"):
        # When the service-task table of the document is read
        rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
                for line in doc.read_text().splitlines() if line.startswith("| `esf.")]
        table = {r[0]: r for r in rows}
        # Then it has one row per declared task, with its queue, retries and time limit
        assert set(table) == set(declared), doc
        for name, t in declared.items():
            row = table[name]
            assert row[1] == t.queue, (doc, row)
            assert row[2].split()[0] == str(t.retries), (doc, row)
            assert row[3] == f"{t.timeout_s:g} s", (doc, row)
            assert (t.schedule is None) == (row[4] in ("—", "-")), (doc, row)


def test_esf_services_prints_one_line_per_task_with_its_queue_dlq_and_schedule_state(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from esf.cli import main

    # Given the application's schedules in the store, and prune switched off
    for k, v in env_for(data_dir).items():
        monkeypatch.setenv(k, v)
    fnd = apps.make()
    try:
        fnd.jobs.schedules.sync_declared()
    finally:
        fnd.close()
    # When `esf services` prints its table
    assert main(["--app", "tests.services.apps:make", "services"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    # Then each task has its line: queue, DLQ, and whether beat fires it
    assert lines["esf.config.reconcile"].split()[1:5] == ["acme.config", "acme.config.dlq", "3", "120s"]
    assert "every 30s (on; services.config_reconcile)" in lines["esf.config.reconcile"]
    assert "every 3600s (off; services.events_prune)" in lines["esf.events.prune"]
    assert "(plain job)" in lines["esf.flags.report"] and lines["esf.flags.report"].rstrip().endswith("-")
    assert "app.hello" not in lines
