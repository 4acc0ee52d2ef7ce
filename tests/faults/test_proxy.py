"""A slow and a black-holed dependency (Redis, PostgreSQL, the Vault-compatible server) behind the suite's proxy.

For each dependency the same four phases: ``pass`` (it works), ``delay`` (every chunk held 300 ms: calls
succeed, slower), ``blackhole`` (connections accepted, nothing answered: each call returns within its
timeout, degraded or with a specific error, and never hangs; the dependency's breaker is open after
them), ``pass`` again (calls work again: the time until the first success is the recovery time, and the
breaker is closed after it).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import esf
from esf import Event
from esf.errors import EsfError
from esf.foundation import Foundation
from tests.conftest import REDIS_HOST, REDIS_PORT
from tests.secrets.conftest import Bao

from .ledger import SUMMARIES, Counts, Ledger, write_record
from .proxy import FaultProxy

pytestmark = pytest.mark.slow

#: Per-chunk delay of the slow phase: each round trip takes twice this, under the dependency's timeout
#: (the cache's Redis calls time out after 0.5 s, secrets after the 1 s set here, PostgreSQL after its read timeout).
DELAY_MS = {"redis": 100, "postgresql": 300, "vault": 300}
#: Longest a call may take while its dependency is black-holed: its timeout plus scheduling slack
#: (PostgreSQL: the read timeout on the pooled connection, then the connect timeout of a new one).
BLACKHOLE_BOUND_S = {"redis": 5.0, "postgresql": 20.0, "vault": 10.0}
#: PostgreSQL's read timeout in these tests (the default, 30 s, is above the bound).
PG_READ_TIMEOUT_S = "2"


@dataclass
class Outcome:
    ok: bool
    seconds: float
    error: str | None = None


def timed(op: Callable[[], Any], bound_s: float) -> Outcome:
    """Run ``op`` in a thread; fail the test if it has not returned after ``bound_s`` seconds (a hang)."""
    box: list[Outcome] = []

    def run() -> None:
        start = time.monotonic()
        try:
            op()
        except EsfError as exc:
            box.append(Outcome(False, time.monotonic() - start, f"{type(exc).__name__}"))
        else:
            box.append(Outcome(True, time.monotonic() - start))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound_s)
    assert box, f"the call did not return within {bound_s} s with its dependency black-holed (a hang)"
    return box[0]


#: The breaker that guards each dependency's calls (listed in ``fnd.breakers`` once the service is built).
BREAKERS = {"redis": "cache.redis", "postgresql": "events.database", "vault": "secrets.vault"}


def breaker_state(fnd: Foundation, dependency: str) -> str:
    """The state of ``dependency``'s breaker as ``fnd.health()`` reports it: closed, open or half-open."""
    name = BREAKERS[dependency]
    breakers = fnd.breakers.health()["breakers"]
    assert name in breakers, f"{dependency}: no breaker {name!r} among {sorted(breakers)}"
    return str(breakers[name]["state"])


def run_phases(name: str, proxy: FaultProxy, fnd: Foundation, op: Callable[[], Any],
               before_blackhole: Callable[[], None] | None = None) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    # pass
    first = timed(op, 30)
    assert first.ok, f"{name} does not work through the proxy: {first.error}"
    # delay: slower, still working
    proxy.set("delay", DELAY_MS[name])
    slow = timed(op, 30)
    assert slow.ok, f"{name} failed when slow ({DELAY_MS[name]} ms per chunk): {slow.error}"
    figures["delay_call_s"] = round(slow.seconds, 2)
    # blackhole: every call returns within its bound, never hangs
    if before_blackhole is not None:
        before_blackhole()
    proxy.set("blackhole")
    calls = [timed(op, BLACKHOLE_BOUND_S[name]) for _ in range(3)]
    figures["blackhole_call_s"] = round(max(c.seconds for c in calls), 2)
    figures["blackhole_outcomes"] = sorted({"ok" if c.ok else str(c.error) for c in calls})
    # the breaker opens on the calls' failures, or on those of the background work they handed over to
    # (the event store's spool flusher): within one more timeout
    deadline = time.monotonic() + BLACKHOLE_BOUND_S[name]
    while breaker_state(fnd, name) == "closed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert breaker_state(fnd, name) != "closed", f"{name}: the breaker did not open while black-holed"
    # pass again: the first success after the proxy passes is the recovery
    proxy.set("reset")  # the black-holed connections are gone, as after a partition heals
    proxy.set("pass")
    healed = time.monotonic()
    deadline = healed + 60
    recovered: float | None = None
    while True:
        outcome = timed(op, BLACKHOLE_BOUND_S[name])
        if outcome.ok and recovered is None:
            recovered = time.monotonic()
        # a success served without the dependency (a cached secret) leaves the breaker open: the next
        # calls make the trial that closes it
        if outcome.ok and breaker_state(fnd, name) == "closed":
            break
        assert time.monotonic() < deadline, (f"{name} did not work again with its breaker closed within 60 s "
                                             f"of the proxy passing (breaker {breaker_state(fnd, name)})")
        time.sleep(0.2)
    assert recovered is not None
    figures["recover_s"] = round(recovered - healed, 2)
    figures["breaker_closed_s"] = round(time.monotonic() - healed, 2)
    return figures


def report(name: str, figures: dict[str, Any], sent: int = 0, done: int = 0) -> None:
    counts = Counts(f"proxy-{name}", sent, done, 0, sent - done, 0, figures.pop("recover_s"), figures)
    SUMMARIES.append(counts.line())
    print(counts.line())
    write_record(counts)
    assert counts.lost == 0, counts.line()


@pytest.fixture
def settings_dir(tmp_path: Path) -> str:
    return str(tmp_path / "data")


def test_redis_slow_then_black_holed_the_cache_answers_within_its_timeout_and_recovers(
        redis_db: int, settings_dir: str) -> None:
    proxy = FaultProxy(REDIS_PORT, REDIS_HOST)
    fnd = Foundation(esf.Settings.from_env({
        "ESF_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/{redis_db}", "ESF_DATA_DIR": settings_dir,
        "ESF_TELEMETRY_ENABLED": "false", "ESF_CACHE_BACKEND": "redis", "ESF_CACHE_LOCAL_MAX_ENTRIES": "0"}))
    written: list[str] = []

    def op() -> None:
        key = f"k-{uuid.uuid4().hex[:8]}"
        if fnd.cache.put(key, {"v": 1}, ttl=60):
            written.append(key)
        else:
            raise esf.errors.ServiceUnavailable("stored in this process only")

    try:
        figures = run_phases("redis", proxy, fnd, op)
    finally:
        fnd.close()
        proxy.close()
    # every put that reported the shared tier stored is in Redis
    direct = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db)
    present = sum(1 for k in written if direct.exists(f"esf:cache:default:{k}") or any(direct.scan_iter(f"*{k}*")))
    report("redis", figures, sent=len(written), done=present)


def test_postgresql_slow_then_black_holed_appends_spool_within_their_timeout_and_are_stored_after(
        pg_url: str, settings_dir: str, ledger_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    proxy = FaultProxy(parts.port or 5432)
    url = pg_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    fnd = Foundation(esf.Settings.from_env({"ESF_DATABASE_URL": url, "ESF_DATA_DIR": settings_dir,
                                            "ESF_TELEMETRY_ENABLED": "false",
                                            "ESF_EVENTS_RECORD_JOB_EVENTS": "false",
                                            "ESF_RESILIENCE_DATABASE_READ_TIMEOUT_S": PG_READ_TIMEOUT_S}))
    ledger = Ledger(redis.Redis.from_url(ledger_url), "proxy-postgresql")

    def op() -> None:
        key = uuid.uuid4().hex[:12]
        result = fnd.events.append(Event("fault.tick", {"key": key}))
        ledger.sent(key)
        if result.is_pending:
            raise esf.errors.ServiceUnavailable("spooled")

    try:
        # The pooled connections stay open through the black hole: the read timeout breaks them.
        figures = run_phases("postgresql", proxy, fnd, op)
        assert fnd.events.flush_spool(timeout=60)  # type: ignore[attr-defined]
        stored = {e.data["key"] for e in fnd.events.read_all(limit=10_000) if e.event_type == "fault.tick"}
    finally:
        fnd.close()
        proxy.close()
    sent = ledger.sent_keys()
    report("postgresql", figures, sent=len(sent), done=len(sent & stored))


def test_vault_slow_then_black_holed_secret_reads_time_out_serve_the_cached_value_and_recover(
        tmp_path: Path, settings_dir: str) -> None:
    bao = Bao(tmp_path / "bao")
    bao.start()
    proxy = FaultProxy(bao.port)
    try:
        bao.client().secrets.kv.v2.create_or_update_secret(path="db", secret={"password": "s3cret"})
        fnd = Foundation(esf.Settings.from_env({
            "ESF_DATA_DIR": settings_dir, "ESF_TELEMETRY_ENABLED": "false", "ESF_SECRETS_BACKEND": "vault",
            "ESF_SECRETS_VAULT_URL": f"http://127.0.0.1:{proxy.port}", "ESF_SECRETS_VAULT_TOKEN": bao.root_token,
            "ESF_SECRETS_TIMEOUT_S": "1", "ESF_SECRETS_CACHE_TTL_S": "0", "ESF_SECRETS_REFRESH_THREAD": "false"}))

        def op() -> None:
            assert fnd.secrets.get("db", "password").reveal() == "s3cret"

        try:
            figures = run_phases("vault", proxy, fnd, op)
        finally:
            fnd.close()
    finally:
        proxy.close()
        bao.stop()
    report("vault", figures)


def test_an_append_on_an_open_connection_to_a_black_holed_postgresql_returns_within_a_bound(
        pg_url: str, settings_dir: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    proxy = FaultProxy(parts.port or 5432)
    url = pg_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    fnd = Foundation(esf.Settings.from_env({"ESF_DATABASE_URL": url, "ESF_DATA_DIR": settings_dir,
                                            "ESF_TELEMETRY_ENABLED": "false",
                                            "ESF_EVENTS_RECORD_JOB_EVENTS": "false",
                                            "ESF_RESILIENCE_DATABASE_READ_TIMEOUT_S": PG_READ_TIMEOUT_S}))
    try:
        # Given an append that went through, leaving its connection open in the pool
        fnd.events.append(Event("fault.tick", {"key": "warm"}))
        # When the server goes silent on that open connection and another event is appended
        proxy.set("blackhole")
        results = []
        outcome = timed(lambda: results.append(fnd.events.append(Event("fault.tick", {"key": "cold"}))),
                        BLACKHOLE_BOUND_S["postgresql"])
        # Then the append returns within the bound, spooled (the database counts as unavailable)
        assert outcome.ok and results[0].is_pending, outcome
        # And once the server answers again, the spooled event is stored
        proxy.set("reset")
        proxy.set("pass")
        assert fnd.events.flush_spool(timeout=60)  # type: ignore[attr-defined]
        assert [e.data["key"] for e in fnd.events.read_all() if e.event_type == "fault.tick"] == ["warm", "cold"]
    finally:
        proxy.close()  # resets the silent connection: the blocked call returns
        fnd.close()
