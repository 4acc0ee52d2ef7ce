"""Interpreter exit of the Telemetry objects alive in a process: each one is closed, so its last increments
reach the store. (A forked child is reset by ``Telemetry.after_fork``, through ``esf.lifecycle.track_fork``.)
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._service import Telemetry

log = logging.getLogger("esf.telemetry")

__all__ = ["track"]

_INSTANCES: weakref.WeakSet[Telemetry] = weakref.WeakSet()


def track(telemetry: Telemetry) -> None:
    """Close ``telemetry`` at interpreter exit (while it is alive)."""
    _INSTANCES.add(telemetry)
    atexit.register(_close_at_exit, weakref.ref(telemetry))


def _close_at_exit(ref: weakref.ref[Telemetry]) -> None:
    tel = ref()
    if tel is not None and not tel.closed:
        try:
            tel.close(timeout_s=1.0)
        except Exception:
            log.exception("telemetry: close at exit failed")
