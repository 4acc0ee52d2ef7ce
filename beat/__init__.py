"""``esf beat``: the scheduler that fires cron and interval schedules of jobs.

Schedules themselves live in ``esf.jobs`` (the value in ``_schedule_values``, the
stores in ``_schedule_stores``, the service in ``_schedules``, crontabs in ``_cron``);
this package holds the loop that fires them and its entry points.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

from ._scheduler import DEFAULT_LEASE_TTL_S, DEFAULT_TICK_S, LEADER_KEY, Beat, Fire, occurrence_id

if TYPE_CHECKING:
    from esf.foundation import Foundation

__all__ = [
    "DEFAULT_LEASE_TTL_S",
    "DEFAULT_TICK_S",
    "LEADER_KEY",
    "Beat",
    "Fire",
    "install_signal_handlers",
    "occurrence_id",
    "run_beat",
]


def run_beat(foundation: Foundation, *, tick_s: float = DEFAULT_TICK_S, stop: threading.Event | None = None,
             lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
    """Run the scheduler in this thread until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None
    and this is the main thread).

    Parameters:
        foundation: the Foundation whose schedules to fire.
        tick_s: seconds between ticks.
        stop: set it to stop the loop; the lease is released on the way out.
        lease_ttl_s: seconds the leadership lease lasts without renewal.

    Raises:
        ValidationError: ``tick_s``/``lease_ttl_s`` out of range, or an invalid code-declared schedule.
    """
    beat = Beat(foundation, tick_s=tick_s, lease_ttl_s=lease_ttl_s)
    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            install_signal_handlers(stop)
    beat.run(stop)


def install_signal_handlers(stop: threading.Event) -> None:
    """Make SIGTERM and SIGINT set ``stop`` (main thread only)."""

    def _handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
