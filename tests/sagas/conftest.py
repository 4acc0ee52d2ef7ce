"""Worker subprocesses, a PostgreSQL database and a Redis database for the saga tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.app_env import AppEnv, running

from . import apps


class Env(AppEnv):
    APP = "tests.sagas.apps:make"

    def build(self, settings: esf.Settings) -> Foundation:
        return apps.build(settings)

    def effects(self, order_id: str) -> list[tuple[str, str]]:
        """``(effect, run key)`` of an order's committed effects, in commit order."""
        return [(r[0], r[1]) for r in self.sql("SELECT effect, run_key FROM saga_effects WHERE order_id = :o "
                                                "ORDER BY id", o=order_id)]


@pytest.fixture
def saga_env(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Env]:
    with running(Env, pg_url, redis_url, tmp_path, ddl=apps.EFFECTS_DDL, poll_interval_s=0.3) as e:
        yield e
