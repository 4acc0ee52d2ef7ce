"""Fixtures of the tests of the foundation's own tasks: a `services`-profile worker and a Foundation, on one test's
Redis and PostgreSQL. A test module takes them by name (``env, worker, fnd = fixtures.env, fixtures.worker,
fixtures.fnd``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.jobs.harness import Worker, settings_env


@pytest.fixture
def env(redis_url: str, pg_url: str, data_dir: Path, unique: str) -> dict[str, str]:
    return settings_env(redis_url, data_dir=str(data_dir), extra={
        "ESF_DATABASE_URL": pg_url, "ESF_WORKERS_PROFILE": "services", "ESF_SERVICES_SCHEDULES": "false",
        "ESF_CONFIG_REDIS_PREFIX": f"esf-test-{unique}:"})  # pub/sub channels are global: a prefix of its own


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    with Worker(env, tmp_path / "worker.log", concurrency=2, app="tests.services.apps:make") as w:
        yield w


@pytest.fixture
def fnd(env: dict[str, str]) -> Iterator[Foundation]:
    with Foundation(esf.Settings.from_env(env)) as f:
        yield f
