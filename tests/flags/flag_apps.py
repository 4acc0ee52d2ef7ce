"""The application of the flag job tests, run in worker subprocesses (settings from ESF_* variables)."""

from __future__ import annotations

from typing import Any

import esf
from esf.foundation import Foundation


def build(settings: esf.Settings | None = None) -> Foundation:
    fnd = Foundation(settings or esf.Settings.from_env())

    @fnd.job(name="flags.seen", retries=0)
    def seen(enqueue_child: bool) -> dict[str, Any]:
        """What this job sees of flags "checkout" (evaluated by the request) and "other" (not evaluated)."""
        checkout = fnd.flags.evaluate("checkout")
        other = fnd.flags.evaluate("other")
        out: dict[str, Any] = {"variant": checkout.variant, "reason": checkout.reason, "value": checkout.value,
                               "other": other.variant}
        if enqueue_child:
            out["child"] = seen.enqueue(False).id
        return out

    return fnd


def make() -> Foundation:
    return build()
