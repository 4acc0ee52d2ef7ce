"""The ``eventsourcing`` library's own recorder test suites, run on ESF's event store (PostgreSQL and SQLite)."""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import psycopg
from esf.plugins.eventsourcing_esf import (
    EsfAggregateRecorder,
    EsfApplicationRecorder,
    EsfFactory,
    EsfProcessRecorder,
    EsfTrackingRecorder,
)
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.tests import persistence as suites

from tests.conftest import PG_ADMIN_URL, require_port


class _Database:
    """A fresh database per test (the suites count notification ids from 1)."""

    backend = "sqlite"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        if self.backend == "postgresql":
            require_port(5432, "PostgreSQL")
            self._dbname = f"esf_test_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self._dbname}"')
            url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{self._dbname}"
        else:
            self._tmp = tempfile.TemporaryDirectory()
            url = f"sqlite:///{os.path.join(self._tmp.name, 'events.sqlite')}"
        self.factory = EsfFactory({"ESF_DATABASE_URL": url})

    def tearDown(self) -> None:
        self.factory.close()
        if self.backend == "postgresql":
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._dbname}" WITH (FORCE)')
        else:
            self._tmp.cleanup()
        super().tearDown()  # type: ignore[misc]


class _Aggregate(_Database, suites.AggregateRecorderTestCase):
    def create_recorder(self) -> EsfAggregateRecorder:
        return self.factory.aggregate_recorder()


class _Application(_Database, suites.ApplicationRecorderTestCase[Any]):
    def create_recorder(self) -> EsfApplicationRecorder:
        return self.factory.application_recorder()


class _Tracking(_Database, suites.TrackingRecorderTestCase):
    def create_recorder(self) -> EsfTrackingRecorder:
        return self.factory.tracking_recorder()  # type: ignore[return-value]


class _Process(_Database, suites.ProcessRecorderTestCase):
    def create_recorder(self) -> EsfProcessRecorder:
        return self.factory.process_recorder()


class _NonInterleaving(_Database, suites.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> EsfApplicationRecorder:
        return self.factory.application_recorder()


class TestAggregateRecorderOnSqlite(_Aggregate):
    backend = "sqlite"


class TestAggregateRecorderOnPostgres(_Aggregate):
    backend = "postgresql"


class TestApplicationRecorderOnSqlite(_Application):
    backend = "sqlite"


class TestApplicationRecorderOnPostgres(_Application):
    backend = "postgresql"


class TestTrackingRecorderOnSqlite(_Tracking):
    backend = "sqlite"


class TestTrackingRecorderOnPostgres(_Tracking):
    backend = "postgresql"


class TestProcessRecorderOnSqlite(_Process):
    backend = "sqlite"


class TestProcessRecorderOnPostgres(_Process):
    backend = "postgresql"


class TestNonInterleavingNotificationIdsOnSqlite(_NonInterleaving):
    backend = "sqlite"


class TestNonInterleavingNotificationIdsOnPostgres(_NonInterleaving):
    backend = "postgresql"


# The suite bases are unittest cases: without this, each would also run once on its own.
del _Aggregate, _Application, _Tracking, _Process, _NonInterleaving


def test_the_library_selects_this_module_with_persistence_module() -> None:
    # Given the library's PERSISTENCE_MODULE naming this module
    factory = InfrastructureFactory.construct({"PERSISTENCE_MODULE": "esf.plugins.eventsourcing_esf"})
    # Then it builds ESF's factory
    assert isinstance(factory, EsfFactory)
