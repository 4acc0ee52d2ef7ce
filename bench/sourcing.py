"""Event-sourcing benchmark: aggregate load and save, ESF vs the eventsourcing library, same PostgreSQL.

Side by side in one run, each contender on a fresh database:

- load time of an aggregate with ``-n`` events (10,000 by default) without and
  with a snapshot at its latest version: ESF's ``fnd.aggregates``, the
  ``eventsourcing`` library on its own PostgreSQL persistence, and the library
  on ESF's store (``esf.plugins.eventsourcing_esf``);
- saves per second of new aggregates with 1 and with 10 new events each.

    .venv/bin/python bench/sourcing.py            # full: 10,000 events, 3 runs
    .venv/bin/python bench/sourcing.py --quick    # under a minute: 2,000 events, 1 run
    .venv/bin/python bench/sourcing.py --json

The last line is the headline: the library's load time of the 10,000-event
aggregate without snapshot divided by ESF's (above 1: ESF loads faster).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, parse_args, pg_database

from esf.events import create_event_store
from esf.settings import Settings
from esf.sourcing import Aggregate, AggregateRepository, applies

#: Loads timed per contender and run (the median is kept).
LOADS = 5


# ------------------------------------------------------------------ ESF


class Counter(Aggregate):
    stream_prefix = "counter"

    def increment(self, by: int) -> None:
        self.record("counter.incremented", {"by": by})

    @applies("counter.incremented")
    def _incremented(self, data: Mapping[str, Any]) -> None:
        self.total = getattr(self, "total", 0) + data["by"]


def _timed(fn: Callable[[], Any], times: int) -> float:
    samples = []
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return sorted(samples)[len(samples) // 2]


def esf_loads(url: str, n: int) -> tuple[float, float]:
    """Seconds to load an n-event ESF aggregate: without snapshot, with one at its last version."""
    store = create_event_store(Settings.from_env({"ESF_DATABASE_URL": url, "ESF_TELEMETRY_ENABLED": "false"}),
                               spool_path=None)
    try:
        repo = AggregateRepository(store)
        agg = Counter("c1")
        for _ in range(n):
            agg.increment(1)
        repo.save(agg)
        plain = _timed(lambda: repo.load(Counter, "c1"), LOADS)
        repo.snapshot(agg)
        Counter.snapshot_every = 100
        try:
            assert repo.load(Counter, "c1").total == n
            snap = _timed(lambda: repo.load(Counter, "c1"), LOADS)
        finally:
            Counter.snapshot_every = None
        return plain, snap
    finally:
        store.close()


def esf_saves(url: str, saves: int, per_save: int) -> float:
    """Saves per second of new ESF aggregates with ``per_save`` events each."""
    store = create_event_store(Settings.from_env({"ESF_DATABASE_URL": url, "ESF_TELEMETRY_ENABLED": "false"}),
                               spool_path=None)
    try:
        repo = AggregateRepository(store)
        t0 = time.perf_counter()
        for i in range(saves):
            agg = Counter(f"s{i}")
            for _ in range(per_save):
                agg.increment(1)
            repo.save(agg)
        return saves / (time.perf_counter() - t0)
    finally:
        store.close()


# ------------------------------------------------------------------ the eventsourcing library


def _es_app(url: str, module: str) -> Any:
    from eventsourcing.application import Application

    info = psycopg.conninfo.conninfo_to_dict(url)
    env = {"PERSISTENCE_MODULE": module, "IS_SNAPSHOTTING_ENABLED": "y", "ESF_DATABASE_URL": url,
           "POSTGRES_DBNAME": str(info["dbname"]), "POSTGRES_HOST": str(info.get("host", "127.0.0.1")),
           "POSTGRES_PORT": str(info.get("port", 5432)), "POSTGRES_USER": str(info.get("user", "postgres")),
           "POSTGRES_PASSWORD": str(info.get("password", "")), "CREATE_TABLE": "y"}
    return Application(env=env)


def _es_counter_class() -> Any:
    from eventsourcing.domain import Aggregate as EsAggregate
    from eventsourcing.domain import event

    class EsCounter(EsAggregate):
        def __init__(self) -> None:
            self.total = 0

        @event("Incremented")
        def increment(self, by: int) -> None:
            self.total += by

    return EsCounter


ES_COUNTER = _es_counter_class()


def es_loads(url: str, n: int, module: str) -> tuple[float, float]:
    """Seconds to load an n-event library aggregate: without snapshot, with one at its last version."""
    app = _es_app(url, module)
    try:
        agg = ES_COUNTER()
        for _ in range(n):
            agg.increment(1)
        app.save(agg)
        plain = _timed(lambda: app.repository.get(agg.id), LOADS)
        app.take_snapshot(agg.id)
        assert app.repository.get(agg.id).total == n
        snap = _timed(lambda: app.repository.get(agg.id), LOADS)
        return plain, snap
    finally:
        app.close()


def es_saves(url: str, saves: int, per_save: int, module: str) -> float:
    """Saves per second of new library aggregates with ``per_save`` events each (the first is its creation)."""
    app = _es_app(url, module)
    try:
        t0 = time.perf_counter()
        for _ in range(saves):
            agg = ES_COUNTER()
            for _ in range(per_save - 1):
                agg.increment(1)
            app.save(agg)
        return saves / (time.perf_counter() - t0)
    finally:
        app.close()


ES_PG = "eventsourcing.postgres"
ES_ON_ESF = "esf.plugins.eventsourcing_esf"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", full_n=10_000, quick_n=2_000, argv=argv,
                      extra=[(["--saves"], {"type": int, "default": None, "help": "saves per contender"})])
    saves = args.saves or (100 if args.quick else 500)
    report = Report("sourcing", args, saves=saves, loads_per_run=LOADS)
    loads: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}

    def add_load(name: str, pair: tuple[float, float]) -> None:
        loads.setdefault(f"{name}.load_ms", []).append(pair[0] * 1000)
        loads.setdefault(f"{name}.load_snapshot_ms", []).append(pair[1] * 1000)

    for run in range(args.runs):
        report.log(f"run {run + 1}/{args.runs}")
        # Interleaved, each on a fresh database, so drifts in machine load hit every contender.
        with pg_database() as url:
            add_load("esf", esf_loads(url, args.n))
        with pg_database() as url:
            add_load("eventsourcing", es_loads(url, args.n, ES_PG))
        with pg_database() as url:
            add_load("eventsourcing_on_esf", es_loads(url, args.n, ES_ON_ESF))
        for per_save in (1, 10):
            with pg_database() as url:
                rates.setdefault(f"esf.saves_{per_save}_per_s", []).append(esf_saves(url, saves, per_save))
            with pg_database() as url:
                rates.setdefault(f"eventsourcing.saves_{per_save}_per_s", []).append(
                    es_saves(url, saves, per_save, ES_PG))
            with pg_database() as url:
                rates.setdefault(f"eventsourcing_on_esf.saves_{per_save}_per_s", []).append(
                    es_saves(url, saves, per_save, ES_ON_ESF))
    for key, values in loads.items():
        report.add(key, values, "ms")
    for key, values in rates.items():
        report.add(key, values, "/s")
    report.paired_ratio("load_speed.esf_vs_eventsourcing.snapshot", loads["eventsourcing.load_snapshot_ms"],
                        loads["esf.load_snapshot_ms"])
    report.paired_ratio("load_speed.esf_snapshot_vs_esf_no_snapshot", loads["esf.load_ms"],
                        loads["esf.load_snapshot_ms"])
    for per_save in (1, 10):
        report.paired_ratio(f"saves_{per_save}.esf_vs_eventsourcing", rates[f"esf.saves_{per_save}_per_s"],
                            rates[f"eventsourcing.saves_{per_save}_per_s"])
        report.paired_ratio(f"saves_{per_save}.eventsourcing_on_esf_vs_eventsourcing",
                            rates[f"eventsourcing_on_esf.saves_{per_save}_per_s"],
                            rates[f"eventsourcing.saves_{per_save}_per_s"])
    report.paired_ratio("load_speed.eventsourcing_on_esf_vs_eventsourcing", loads["eventsourcing.load_ms"],
                        loads["eventsourcing_on_esf.load_ms"])
    headline = report.paired_ratio("load_speed.esf_vs_eventsourcing.no_snapshot", loads["eventsourcing.load_ms"],
                                   loads["esf.load_ms"])
    report.finish(headline="esf_vs_eventsourcing_load_speed_no_snapshot", value=headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
