"""Configuration: one versioned document, atomic batch updates, the same snapshot on every process.

``ConfigService`` (``fnd.config``) serves reads from an immutable per-process
snapshot and writes through a :class:`ConfigStore` (Redis or SQLite) in one
atomic compare-and-set step per batch. See ``docs/config.md``.
Path syntax: dotted segments, see :mod:`esf.config._paths`.
"""

from __future__ import annotations

from ._factory import create_config_service, esf_defaults
from ._paths import DELETE, MAX_PATH_CHARS, MAX_SEGMENTS, parse_path, path_error
from ._replica import MISSING, Subscription, TestHooks
from ._service import AuditSink, ConfigService
from ._types import (
    REDACTED,
    Change,
    ChangeEvent,
    Commit,
    ConfigHealth,
    ConfigStore,
    HistoryEntry,
    NodeStatus,
    NotifyCallback,
    StoredConfig,
)

__all__ = [
    "DELETE",
    "MAX_PATH_CHARS",
    "MAX_SEGMENTS",
    "MISSING",
    "REDACTED",
    "AuditSink",
    "Change",
    "ChangeEvent",
    "Commit",
    "ConfigHealth",
    "ConfigService",
    "ConfigStore",
    "HistoryEntry",
    "NodeStatus",
    "NotifyCallback",
    "StoredConfig",
    "Subscription",
    "TestHooks",
    "create_config_service",
    "esf_defaults",
    "parse_path",
    "path_error",
]
