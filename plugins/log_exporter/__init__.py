"""``telemetry.log``: writes each batch to a logger, one line per series."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from esf.errors import ValidationError
from esf.telemetry import MetricBatch, MetricSample

__all__ = ["LogExporter"]

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}


def format_sample(s: MetricSample) -> str:
    """``name{k=v,…} kind value`` (histograms: count, sum and quantiles)."""
    labels = ",".join(f"{k}={v}" for k, v in s.labels)
    head = f"{s.name}{{{labels}}}" if labels else s.name
    if s.kind == "histogram":
        qs = " ".join(f"{k}={v:.6g}" for k, v in s.quantiles.items() if v is not None)
        return f"{head} histogram count={s.count} sum={s.sum:.6g} {qs}".rstrip()
    rates = " ".join(f"rate_{k}={v:.6g}/s" for k, v in s.rates.items())
    return f"{head} {s.kind} value={s.value:.6g} {rates}".rstrip()


class LogExporter:
    """Logs every series of each batch.

    Options: ``level`` (``DEBUG``, ``INFO``, ``WARNING``; default ``INFO``),
    ``logger`` (default ``esf.telemetry.export``), ``prefix`` (only metrics
    whose names start with it).
    """

    scope = "local"

    def __init__(self) -> None:
        self._logger = logging.getLogger("esf.telemetry.export")
        self._level = logging.INFO
        self._prefix = ""

    def start(self, options: Mapping[str, Any]) -> None:
        level = str(options.get("level", "INFO")).upper()
        if level not in _LEVELS:
            raise ValidationError(f"telemetry.log: level {level!r} is not one of {sorted(_LEVELS)}")
        self._level = _LEVELS[level]
        self._logger = logging.getLogger(str(options.get("logger", "esf.telemetry.export")))
        self._prefix = str(options.get("prefix", ""))

    def export(self, batch: MetricBatch) -> None:
        if not self._logger.isEnabledFor(self._level):
            return
        for s in batch.samples:
            if s.name.startswith(self._prefix):
                self._logger.log(self._level, "telemetry %s %s", batch.scope, format_sample(s))

    def shutdown(self) -> None:
        pass
