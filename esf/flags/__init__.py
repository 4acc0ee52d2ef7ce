"""Feature flags: definitions in the configuration (``flags.*``), evaluated in memory on every process.

``fnd.flags`` is a :class:`FlagService`. A flag's definition is written through
the configuration service, so it is validated when written (an invalid rule is
refused with ``ValidationError``), versioned, audited, rolled back and
propagated like any configuration. Evaluation never does I/O and never raises:
an unknown flag, a missing attribute or a bad context gives the caller's
default with reason ``error``. See ``docs/flags.md``.
"""

from __future__ import annotations

from typing import Protocol

from ._conditions import COMPARISONS, OPERATORS, parse_semver
from ._service import FlagService, validate_flags
from ._values import (
    BUCKETS,
    FLAGS_PREFIX,
    REASON_DEFAULT,
    REASON_DISABLED,
    REASON_ERROR,
    REASON_KILL_SWITCH,
    REASON_PREREQUISITE_FAILED,
    REASON_ROLLOUT,
    REASON_RULE_MATCH,
    REASON_TARGET_MATCH,
    REASONS,
    SEGMENTS_PREFIX,
    Evaluation,
    bucket,
)

__all__ = [
    "BUCKETS",
    "COMPARISONS",
    "FLAGS_PREFIX",
    "OPERATORS",
    "REASONS",
    "REASON_DEFAULT",
    "REASON_DISABLED",
    "REASON_ERROR",
    "REASON_KILL_SWITCH",
    "REASON_PREREQUISITE_FAILED",
    "REASON_ROLLOUT",
    "REASON_RULE_MATCH",
    "REASON_TARGET_MATCH",
    "SEGMENTS_PREFIX",
    "Evaluation",
    "FlagEvaluator",
    "FlagService",
    "bucket",
    "parse_semver",
    "validate_flags",
]


class FlagEvaluator(Protocol):
    """What application code and the OpenFeature provider need from ``fnd.flags``."""

    def evaluate(self, name: str, context: dict[str, object] | None = None, default: object = None) -> Evaluation:
        """The answer for ``context``; never raises (reason ``error`` and ``default`` instead)."""
        ...
