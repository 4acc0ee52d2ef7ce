"""Worker subprocesses, a PostgreSQL database and a Redis database for the subscription tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation
from tests.app_env import AppEnv, running

from . import apps


class Env(AppEnv):
    APP = "tests.subscriptions.apps:make"

    def build(self, settings: esf.Settings) -> Foundation:
        return apps.build(settings)

    def seen(self) -> list[int]:
        return [int(p) for p in self.redis.lrange("seen", 0, -1)]

    def key(self, stream: str) -> list[int]:
        return [int(p) for p in self.redis.lrange(f"key:{stream}", 0, -1)]


@pytest.fixture
def subs_env(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Env]:
    with running(Env, pg_url, redis_url, tmp_path, ddl=apps.PROJECTION_DDL, poll_interval_s=0.5) as e:
        yield e
