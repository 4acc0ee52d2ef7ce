"""Exporters: Prometheus (basic auth, promtool), StatsD (real UDP), log; isolation of slow and failing ones."""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from esf import Secret
from esf.errors import CircuitOpen, ValidationError
from esf.resilience import CircuitBreaker
from esf.settings import TelemetrySettings
from esf.telemetry import DROPPED_METRIC, MetricBatch, Telemetry
from tests.servers import unavailable

USER, PASSWORD = "prom", "s3cret-Pa55"


def wait_until(predicate, what, timeout_s=30.0):
    """Poll for a condition (a deadline against hangs, not a speed assertion)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for: {what}")
        time.sleep(0.01)


@pytest.fixture
def tel():
    t = Telemetry(TelemetrySettings(export_interval_s=3600, exporter_buffer=2, breaker_failures=3), store=None,
                  stuck_after_s=0.0)
    yield t
    t.close()


def emit_some(t):
    t.counter("shop.orders", {"region": "eu"}).inc(3)
    t.counter("shop.orders", {"region": "us"}).inc(2)
    t.gauge("shop.spool_depth").set(-4)
    h = t.histogram("shop.checkout_seconds", {"region": "eu"})
    for v in (0.01, 0.02, 0.02, 0.5, 3.0):
        h.observe(v)


def scrape(port, auth=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start_prometheus(t, **opts):
    t.configure_exporters({"prometheus": {"port": 0, "user": USER, "password": Secret(PASSWORD), **opts}})
    exporter = t.exporter("prometheus")
    t.export_now()
    wait_until(lambda: exporter.latest is not None, "the exporter received a batch")
    return exporter


def test_prometheus_refuses_to_start_without_credentials(tel):
    with pytest.raises(ValidationError, match="basic auth is required"):
        tel.configure_exporters({"prometheus": {"port": 0}})
    assert tel.exporter("prometheus") is None


def test_prometheus_answers_401_without_or_with_wrong_credentials_and_200_with_them(tel):
    emit_some(tel)
    exporter = start_prometheus(tel)
    status, body = scrape(exporter.port)
    assert status == 401
    assert PASSWORD not in body
    assert scrape(exporter.port, (USER, "wrong"))[0] == 401
    status, body = scrape(exporter.port, (USER, PASSWORD))
    assert status == 200
    assert 'shop_orders_total{region="eu"} 3.0' in body
    assert 'shop_checkout_seconds_count{region="eu"} 5.0' in body
    assert 'shop_checkout_seconds_bucket{le="+Inf",region="eu"} 5.0' in body


def test_prometheus_without_auth_when_explicitly_asked(tel):
    emit_some(tel)
    tel.configure_exporters({"prometheus": {"port": 0, "auth": False}})
    exporter = tel.exporter("prometheus")
    tel.export_now()
    wait_until(lambda: exporter.latest is not None, "a batch")
    assert scrape(exporter.port)[0] == 200


def test_a_real_scrape_passes_promtool_check_metrics(tel):
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (scripts/ci-packages.sh installs it)")
    emit_some(tel)
    tel.counter("esf.jobs.enqueued", {"job": "charge", "queue": "billing"}).inc()
    tel.histogram("esf.jobs.runtime_seconds", {"job": "charge", "queue": "billing"}, buckets=[0.1, 1]).observe(0.3)
    exporter = start_prometheus(tel)
    status, body = scrape(exporter.port, (USER, PASSWORD))
    assert status == 200
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_statsd_lines_reach_a_real_udp_listener(tel):
    # Given a UDP socket standing in for the StatsD agent
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    try:
        tel.configure_exporters({"statsd": {"port": sock.getsockname()[1], "prefix": "app"}})
        emit_some(tel)
        # When a batch is exported
        tel.export_now()
        lines = sock.recv(65536).decode().splitlines()
        # Then counters, gauges and histograms arrive as StatsD lines
        assert "app.shop.orders.eu:3|c" in lines
        assert "app.shop.orders.us:2|c" in lines
        assert lines.index("app.shop.spool_depth:0|g") + 1 == lines.index("app.shop.spool_depth:-4|g")
        hist = [ln for ln in lines if ln.startswith("app.shop.checkout_seconds.eu:")]
        counted = sum(round(1 / float(ln.split("@")[1])) if "@" in ln else 1 for ln in hist)
        assert counted == 5 and all("|h" in ln for ln in hist)
        # And the next batch carries only the increase
        tel.counter("shop.orders", {"region": "eu"}).inc(4)
        tel.export_now()
        lines = sock.recv(65536).decode().splitlines()
        assert "app.shop.orders.eu:4|c" in lines
        assert not any(ln.startswith("app.shop.orders.us:") for ln in lines)
    finally:
        sock.close()


def test_the_log_exporter_writes_one_line_per_series(tel, caplog):
    caplog.set_level(logging.INFO, logger="esf.telemetry.export")
    tel.configure_exporters({"telemetry.log": {"prefix": "shop."}})
    emit_some(tel)
    tel.export_now()
    wait_until(lambda: len(caplog.records) >= 4, "log lines")
    text = caplog.text
    assert "shop.orders{region=eu} counter value=3" in text
    assert "shop.checkout_seconds{region=eu} histogram count=5" in text


class HangingExporter:
    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def start(self, options):
        pass

    def export(self, batch):
        self.entered.set()
        self.release.wait()

    def shutdown(self):
        self.release.set()


class RaisingExporter:
    def start(self, options):
        pass

    def export(self, batch):
        raise ConnectionError("collector down")

    def shutdown(self):
        pass


class RecordingExporter:
    def __init__(self):
        self.batches: list[MetricBatch] = []

    def start(self, options):
        pass

    def export(self, batch):
        self.batches.append(batch)

    def shutdown(self):
        pass


def test_a_hanging_and_a_raising_exporter_neither_block_emitters_nor_the_other_exporters():
    # Given a hanging, a raising and a healthy exporter, each with a 2-batch buffer
    hanging, recording = HangingExporter(), RecordingExporter()
    t = Telemetry(
        TelemetrySettings(export_interval_s=3600, exporter_buffer=2, breaker_failures=3),
        store=None,
        stuck_after_s=0.0,
        exporter_factories={"hang": lambda: hanging, "raise": RaisingExporter, "record": lambda: recording},
    )
    try:
        t.configure_exporters({"hang": {}, "raise": {}, "record": {}})
        counter = t.counter("hot.path")
        hist = t.histogram("hot.seconds")
        t.export_now()
        wait_until(hanging.entered.is_set, "the hanging exporter is blocked")
        # When 100k metrics are emitted while batches keep being offered to the exporters
        stop = threading.Event()
        offers = []

        def offer_batches():
            while not stop.is_set():
                offers.append(t.export_now())

        feeder = threading.Thread(target=offer_batches)
        feeder.start()
        for i in range(100_000):
            counter.inc()
            hist.observe(i * 1e-6)
        wait_until(lambda: len(offers) >= 20, "20 offers")
        stop.set()
        feeder.join()
        # Then every emission was recorded (the hanging exporter held nothing back) ...
        assert counter.value == 100_000
        # ... the hanging exporter's overflow was dropped and counted ...
        runners = t._exporters.runners
        assert runners["telemetry.hang"].dropped > 0
        # ... the raising one opened its breaker ...
        wait_until(lambda: runners["telemetry.raise"].breaker.state == "open", "the breaker opens")
        assert runners["telemetry.raise"].failures == 3
        # ... the healthy one kept receiving batches ...
        assert len(recording.batches) > 1
        # ... and all of it is in health and in the metrics
        health = t.health()
        assert health["ok"] is False and health["status"] == "degraded"
        assert health["exporters"]["telemetry.hang"]["stuck"] is True
        assert health["exporters"]["telemetry.raise"]["breaker"] == "open"
        assert health["exporters"]["telemetry.record"]["ok"] is True
        snap = t.snapshot(cluster=False)
        dropped = {s["labels"]["exporter"]: s["value"] for s in snap["metrics"][DROPPED_METRIC]["series"]}
        assert dropped["telemetry.hang"] > 0
        states = {s["labels"]["breaker"]: s["value"] for s in snap["metrics"]["esf.breaker.state"]["series"]}
        assert states["telemetry.raise"] == 1
    finally:
        hanging.release.set()
        t.close()


class NeverReturningExporter:
    """``start`` (when asked), ``export`` and ``shutdown`` block until the test releases them."""

    def __init__(self, block_start: bool = False):
        self.block_start = block_start
        self.release = threading.Event()
        self.exporting = threading.Event()
        self.shutdowns = 0

    def start(self, options):
        if self.block_start:
            self.release.wait()

    def export(self, batch):
        self.exporting.set()
        self.release.wait()

    def shutdown(self):
        self.shutdowns += 1
        self.release.wait()


def returns_within(call, timeout_s: float = 30.0) -> bool:
    """Run ``call`` on a thread; whether it returned before the deadline (a guard against a hang, not a timing)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def test_reconfiguring_and_closing_return_behind_an_exporter_whose_export_and_shutdown_never_return():
    # Given an exporter blocked inside export(), whose shutdown() never returns either
    stuck = NeverReturningExporter()
    t = Telemetry(TelemetrySettings(export_interval_s=3600), store=None, exporter_call_timeout_s=0.5,
                  exporter_factories={"stuck": lambda: stuck, "record": RecordingExporter})
    try:
        t.configure_exporters({"stuck": {}, "record": {}})
        t.export_now()
        wait_until(stuck.exporting.is_set, "the exporter is blocked in export()")
        # When it is disabled, then configure_exporters returns and the other exporter keeps running
        assert returns_within(lambda: t.configure_exporters({"record": {}}))
        assert t.exporter("stuck") is None and t.exporter("record") is not None
        assert stuck.shutdowns == 1
        # And close() returns too
        assert returns_within(lambda: t.close(timeout_s=0.5))
    finally:
        stuck.release.set()
        t.close()


def test_an_exporter_whose_start_never_returns_is_reported_and_left_behind():
    # Given an exporter whose start() never returns
    stuck = NeverReturningExporter(block_start=True)
    t = Telemetry(TelemetrySettings(export_interval_s=3600), store=None, exporter_call_timeout_s=0.5,
                  exporter_factories={"stuck": lambda: stuck, "record": RecordingExporter})
    errors: list[Exception] = []

    def configure():
        try:
            t.configure_exporters({"stuck": {}, "record": {}})
        except ValidationError as exc:
            errors.append(exc)

    try:
        # When it is configured, then configure_exporters returns with an error naming it, and the other runs
        assert returns_within(configure)
        assert len(errors) == 1 and "telemetry.stuck: start did not return" in str(errors[0])
        assert t.exporter("stuck") is None and t.exporter("record") is not None
        # And once its start() finally returns, the abandoned exporter is shut down
        stuck.release.set()
        wait_until(lambda: stuck.shutdowns == 1, "the late exporter is shut down")
    finally:
        stuck.release.set()
        t.close()


def test_exporters_are_enabled_reconfigured_and_disabled_at_run_time(tel):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        port = sock.getsockname()[1]
        tel.apply_config({"telemetry.exporters": {"statsd": {"port": port}, "log": True}})
        first = tel.exporter("statsd")
        assert first is not None and tel.exporter("log") is not None
        # Unchanged options keep the running exporter; changed options restart it
        tel.configure_exporters({"statsd": {"port": port}, "log": True})
        assert tel.exporter("statsd") is first
        tel.configure_exporters({"statsd": {"port": port, "prefix": "x"}})
        assert tel.exporter("statsd") is not first
        assert tel.exporter("log") is None
        tel.configure_exporters({"statsd": {"port": port, "enabled": False}})
        assert tel.exporter("statsd") is None
        with pytest.raises(ValidationError, match="unknown exporter"):
            tel.configure_exporters({"nope": {}})
    finally:
        sock.close()


def test_the_circuit_breaker_opens_half_opens_and_closes():
    now = [0.0]
    changes = []
    b = CircuitBreaker("db", failure_threshold=2, reset_timeout_s=10, clock=lambda: now[0],
                       on_state_change=lambda n, s: changes.append(s))

    def fail():
        raise OSError("down")

    for _ in range(2):
        with pytest.raises(OSError):
            b.call(fail)
    assert b.state == "open"
    with pytest.raises(CircuitOpen):
        b.call(lambda: 1)
    now[0] = 10.0
    assert b.state == "half_open"
    with pytest.raises(OSError):
        b.call(fail)
    assert b.state == "open"
    now[0] = 20.0
    assert b.call(lambda: 42) == 42
    assert b.state == "closed"
    assert changes == ["open", "half_open", "open", "half_open", "closed"]
    assert b.rejected == 1
