"""Value types of the flags: the evaluation answer, its reasons, and the rollout bucket."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ..events._model import thaw_json

__all__ = [
    "BUCKETS",
    "FLAGS_PREFIX",
    "MAX_VARIANT_CHARS",
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
    "bucket",
]

#: Configuration subtree of flag definitions.
FLAGS_PREFIX = "flags"
#: Configuration subtree of segment definitions.
SEGMENTS_PREFIX = "flag_segments"
#: Rollout buckets: weights are percentages with two decimals (0.01 % = one bucket).
BUCKETS = 10_000
#: Longest variant name (characters).
MAX_VARIANT_CHARS = 64

REASON_DEFAULT = "default"
REASON_DISABLED = "disabled"
REASON_KILL_SWITCH = "kill_switch"
REASON_PREREQUISITE_FAILED = "prerequisite_failed"
REASON_TARGET_MATCH = "target_match"
REASON_RULE_MATCH = "rule_match"
REASON_ROLLOUT = "rollout"
REASON_ERROR = "error"
#: Every reason an evaluation can give.
REASONS = (REASON_DEFAULT, REASON_DISABLED, REASON_KILL_SWITCH, REASON_PREREQUISITE_FAILED, REASON_TARGET_MATCH,
           REASON_RULE_MATCH, REASON_ROLLOUT, REASON_ERROR)


@dataclass(frozen=True)
class Evaluation:
    """The answer for one flag and one context.

    ``value`` is the served variant's value (the caller's default when ``reason`` is
    ``error``); ``variant`` its name (``None`` on error); ``rule`` the index of the
    matching rule (``rule_match``, or ``rollout`` inside a rule); ``error`` what went
    wrong (``reason == "error"`` only).
    """

    flag: str
    value: Any
    variant: str | None
    reason: str
    rule: int | None = None
    error: str | None = None

    def to_wire(self) -> list[Any]:
        """``[value, variant, reason, rule]``: the JSON form carried in job headers."""
        return [thaw_json(self.value), self.variant, self.reason, self.rule]


def bucket(salt: str, key: str) -> int:
    """The rollout bucket (0..9999) of ``key``: a stable hash of the salt (the flag name by default) and the key.

    sha1 spreads keys evenly and is in every Python; it is not used for security (FIPS builds accept it so).
    """
    digest = hashlib.sha1(f"{salt}:{key}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS
