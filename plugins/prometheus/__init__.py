"""``telemetry.prometheus``: an HTTP ``/metrics`` endpoint with basic auth.

The exposition is produced by ``prometheus_client`` (``generate_latest``)
from a custom collector over the latest batch, which is the cluster-wide
merged view when a shared store is configured: enable this exporter in one
process (per cluster, or per host) rather than in every prefork child.
Names are converted with ``.`` → ``_``; counters get the ``_total`` suffix.
Histogram buckets are the non-empty buckets of the mergeable layout (plus
``+Inf``), so the set of ``le`` values grows as new buckets fill.

Options: ``address`` (127.0.0.1), ``port`` (9464; 0 picks a free port, see
:attr:`PrometheusExporter.port`), ``user`` and ``password`` (a
:class:`esf.Secret` or a string) — both required unless ``auth`` is
``False`` — and ``path`` (``/metrics``).
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from esf.errors import ValidationError
from esf.secrets import Secret
from esf.telemetry import MetricBatch, MetricSample, prometheus_name

__all__ = ["PrometheusExporter"]

log = logging.getLogger("esf.telemetry")


class _BatchCollector:
    """A prometheus_client collector over the exporter's latest batch."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        batch = self._exporter.latest
        if batch is None:
            return
        groups: dict[str, list[MetricSample]] = {}
        for s in batch.samples:
            groups.setdefault(s.name, []).append(s)
        for name, samples in groups.items():
            yield from _family(name, samples)
        yield GaugeMetricFamily(
            "esf_telemetry_processes", "Processes whose figures are merged in this exposition.", value=batch.processes
        )


def _family(name: str, samples: list[MetricSample]) -> Iterator[Metric]:
    pname = prometheus_name(name)
    kind = samples[0].kind
    label_names = [k for k, _ in samples[0].labels]
    doc = f"ESF {kind} {name}"
    fam: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if kind == "counter":
        fam = CounterMetricFamily(pname, doc, labels=label_names)
    elif kind == "gauge":
        fam = GaugeMetricFamily(pname, doc, labels=label_names)
    else:
        fam = HistogramMetricFamily(pname, doc, labels=label_names)
    for s in samples:
        if s.kind != kind or [k for k, _ in s.labels] != label_names:
            log.warning("prometheus: series of %s with other labels or kind skipped: %s", name, dict(s.labels))
            continue
        values = [v for _, v in s.labels]
        if isinstance(fam, HistogramMetricFamily):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for _lower, upper, count in s.buckets:
                cumulative += count
                le: str = floatToGoString(upper)  # type: ignore[no-untyped-call]
                if buckets and buckets[-1][0] == le:
                    buckets[-1] = (le, cumulative)
                else:
                    buckets.append((le, cumulative))
            if not buckets or buckets[-1][0] != "+Inf":
                buckets.append(("+Inf", s.count))
            fam.add_metric(values, buckets, s.sum)
        else:
            fam.add_metric(values, s.value or 0.0)
    yield fam


class PrometheusExporter:
    """Serves the latest batch on ``http://address:port/metrics`` (basic auth unless ``auth=False``)."""

    scope = "cluster"

    def __init__(self) -> None:
        self.latest: MetricBatch | None = None
        self.port: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, options: Mapping[str, Any]) -> None:
        address = str(options.get("address", "127.0.0.1"))
        try:
            port = int(options.get("port", 9464))
        except (TypeError, ValueError):
            raise ValidationError("telemetry.prometheus: port must be an integer") from None
        auth = options.get("auth", True)
        user = options.get("user")
        password = options.get("password")
        if isinstance(password, str):
            password = Secret(password)
        expected: bytes | None = None
        if auth is not False:
            if not user or not isinstance(password, Secret) or not password:
                raise ValidationError(
                    "telemetry.prometheus: basic auth is required: set telemetry.prometheus_user and "
                    "telemetry.prometheus_password (ESF_TELEMETRY_PROMETHEUS_USER/_PASSWORD), "
                    "or auth=False to serve /metrics without credentials"
                )
            expected = b"Basic " + base64.b64encode(f"{user}:{password.reveal()}".encode())
        path = str(options.get("path", "/metrics"))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_BatchCollector(self))  # type: ignore[arg-type]
        handler = _make_handler(registry, expected, path)
        try:
            self._server = ThreadingHTTPServer((address, port), handler)
        except OSError as exc:
            raise ValidationError(f"telemetry.prometheus: cannot listen on {address}:{port}: {exc}") from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="esf-prometheus", daemon=True)
        self._thread.start()

    def export(self, batch: MetricBatch) -> None:
        self.latest = batch

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _make_handler(registry: CollectorRegistry, expected: bytes | None, path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if expected is not None:
                given = self.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    self._reply(401, b"authentication required\n", "text/plain; charset=utf-8",
                                {"WWW-Authenticate": 'Basic realm="esf metrics"'})
                    return
            if self.path.split("?", 1)[0] != path:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8")
                return
            try:
                body = generate_latest(registry)
            except Exception:
                log.exception("prometheus: rendering /metrics failed")
                self._reply(500, b"internal error\n", "text/plain; charset=utf-8")
                return
            self._reply(200, body, CONTENT_TYPE_LATEST)

        def _reply(self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log (it would be noise on every scrape)

    return Handler
