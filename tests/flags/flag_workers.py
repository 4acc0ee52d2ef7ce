"""Child-process bodies of the multi-process flag tests (started with spawn)."""

from __future__ import annotations

import time
from typing import Any


def watcher(redis_url: str, prefix: str, data_dir: str, index: int, reports: Any, stop: Any) -> None:
    """Evaluate flag ``launch`` for one key every 10 ms; report each new answer with the config version."""
    from esf import Foundation, Settings
    from esf.settings import ConfigSettings, TelemetrySettings

    settings = Settings(redis_url=redis_url, data_dir=data_dir,
                        config=ConfigSettings(redis_prefix=prefix, reconcile_interval_s=1.0),
                        telemetry=TelemetrySettings(enabled=False))
    fnd = Foundation(settings)
    last = None
    try:
        while not stop.is_set():
            answer = fnd.flags.evaluate("launch", {"key": "user-1", "plan": "pro"})
            seen = (answer.variant, answer.reason)
            if seen != last:
                reports.put((index, answer.variant, answer.reason, fnd.config.version))
                last = seen
            time.sleep(0.01)
    finally:
        fnd.close()
