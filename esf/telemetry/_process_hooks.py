"""Process events of the Telemetry objects alive in a process: fork (the child starts from zero) and exit.

A forked child must not push its parent's totals again, so every Telemetry is
reset in the child (``Telemetry._after_fork``); at interpreter exit each one is
closed, so its last increments reach the store. The weak set exists only so that
``os.register_at_fork`` and ``atexit`` can find them.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._service import Telemetry

log = logging.getLogger("esf.telemetry")

__all__ = ["track"]

_INSTANCES: weakref.WeakSet[Telemetry] = weakref.WeakSet()


def track(telemetry: Telemetry) -> None:
    """Reset ``telemetry`` in every forked child and close it at interpreter exit (while it is alive)."""
    _INSTANCES.add(telemetry)
    atexit.register(_close_at_exit, weakref.ref(telemetry))


def _reset_in_child() -> None:
    for tel in list(_INSTANCES):
        tel._after_fork()


def _close_at_exit(ref: weakref.ref[Telemetry]) -> None:
    tel = ref()
    if tel is not None and not tel.closed:
        try:
            tel.close(timeout_s=1.0)
        except Exception:
            log.exception("telemetry: close at exit failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
