"""``telemetry.statsd``: sends each batch's increments as StatsD lines over UDP.

Counters are sent as the increase since the previous batch (``name:3|c``),
gauges as values (``name:7|g``; a negative gauge is sent as ``name:0|g``
then ``name:-7|g``, since a signed value alone means "add"), and histograms
as one line per bucket that received observations, carrying a value inside
the bucket and the sample rate ``1/n`` for its ``n`` new observations
(``name:0.25|h|@0.01`` for 100 observations near 0.25). The agent therefore
counts every observation; values are exact to within the bucket width. (The
``statsd`` client package samples randomly when given a rate below 1, which
would make counts inexact, so the lines are written here.)

Names: ``<prefix>.<metric name>.<label values…>`` with unsafe characters
replaced by ``_``. Lines are packed into datagrams of at most
``max_packet_bytes`` (default 1432, safe for Ethernet MTUs).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from typing import Any

from esf.errors import ValidationError
from esf.telemetry import MetricBatch
from esf.telemetry._names import statsd_name

__all__ = ["StatsdExporter"]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.9g}"


def bucket_value(lower: float, upper: float) -> float:
    """A value that stands for a bucket: the harmonic mean of its bounds (the quantile estimate of exponential
    buckets), its lower bound when open-ended, 0 for the zero bucket."""
    if math.isinf(upper):
        return lower
    if lower <= 0:
        return 0.0 if upper <= 1e-9 else upper / 2
    return 2 * lower * upper / (lower + upper)


class StatsdExporter:
    """Options: ``host`` (127.0.0.1), ``port`` (8125), ``prefix`` (``esf``; ``""`` for none),
    ``histogram_type`` (``h`` default, or ``ms``: values are taken as seconds and sent in milliseconds),
    ``max_packet_bytes`` (1432)."""

    scope = "local"
    #: Push-style: ``esf.telemetry.export`` can push the cluster-wide view through it
    #: (``services.telemetry_push_exporters``).
    push = True

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._addr: tuple[str, int] = ("127.0.0.1", 8125)
        self._prefix = "esf."
        self._hist_type = "h"
        self._max_packet = 1432
        self._last_counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._last_buckets: dict[tuple[str, tuple[tuple[str, str], ...], float, float], int] = {}

    def start(self, options: Mapping[str, Any]) -> None:
        host = str(options.get("host", "127.0.0.1"))
        try:
            port = int(options.get("port", 8125))
            max_packet = int(options.get("max_packet_bytes", 1432))
        except (TypeError, ValueError):
            raise ValidationError("telemetry.statsd: port and max_packet_bytes must be integers") from None
        if not 0 < port < 65536 or max_packet < 64:
            raise ValidationError("telemetry.statsd: port must be 1-65535 and max_packet_bytes at least 64")
        hist_type = str(options.get("histogram_type", "h"))
        if hist_type not in ("h", "ms"):
            raise ValidationError("telemetry.statsd: histogram_type must be 'h' or 'ms'")
        prefix = str(options.get("prefix", "esf"))
        self._prefix = prefix.rstrip(".") + "." if prefix else ""
        self._hist_type = hist_type
        self._max_packet = max_packet
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ValidationError(f"telemetry.statsd: cannot resolve {host!r}: {exc}") from None
        family, _, _, _, addr = infos[0]
        self._addr = (str(addr[0]), int(addr[1]))
        self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def lines(self, batch: MetricBatch) -> list[str]:
        """The StatsD lines for ``batch`` (and remember what was sent)."""
        out: list[str] = []
        for s in batch.samples:
            base = self._prefix + statsd_name(s.name, s.labels)
            if s.kind == "counter":
                key = (s.name, s.labels)
                value = s.value or 0.0
                delta = value - self._last_counters.get(key, 0.0)
                self._last_counters[key] = value
                if delta > 0:
                    out.append(f"{base}:{_fmt(delta)}|c")
            elif s.kind == "gauge":
                value = s.value or 0.0
                if value < 0:
                    out.append(f"{base}:0|g")
                out.append(f"{base}:{_fmt(value)}|g")
            else:
                for lower, upper, count in s.buckets:
                    bkey = (s.name, s.labels, lower, upper)
                    new = count - self._last_buckets.get(bkey, 0)
                    self._last_buckets[bkey] = count
                    if new <= 0:
                        continue
                    v = bucket_value(lower, upper)
                    if self._hist_type == "ms":
                        v *= 1000.0
                    rate = "" if new == 1 else f"|@{1 / new:.9g}"
                    out.append(f"{base}:{_fmt(v)}|{self._hist_type}{rate}")
        return out

    def export(self, batch: MetricBatch) -> None:
        if self._sock is None:
            raise ValidationError("telemetry.statsd: export before start")
        packet: list[str] = []
        size = 0
        for line in self.lines(batch):
            n = len(line.encode()) + 1
            if packet and size + n > self._max_packet:
                self._sock.sendto("\n".join(packet).encode(), self._addr)
                packet, size = [], 0
            packet.append(line)
            size += n
        if packet:
            self._sock.sendto("\n".join(packet).encode(), self._addr)

    def export_state(self) -> dict[str, Any]:
        """What was sent so far (JSON): the cumulative values the next batch's increases are taken from."""
        return {"counters": [[n, [list(p) for p in labels], v] for (n, labels), v in self._last_counters.items()],
                "buckets": [[n, [list(p) for p in labels], lo, up, c]
                            for (n, labels, lo, up), c in self._last_buckets.items()]}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`export_state` of another instance (another process, an earlier run)."""
        self._last_counters = {(str(n), tuple((str(k), str(v)) for k, v in labels)): float(value)
                               for n, labels, value in state.get("counters", ())}
        self._last_buckets = {(str(n), tuple((str(k), str(v)) for k, v in labels), float(lo), float(up)): int(c)
                              for n, labels, lo, up, c in state.get("buckets", ())}

    def shutdown(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
