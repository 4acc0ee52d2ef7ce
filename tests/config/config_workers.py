"""Child-process bodies for the multi-process configuration tests (started with spawn)."""

from __future__ import annotations

import time
from typing import Any

from esf.plugins.redis_config import RedisConfigStore
from esf.plugins.sqlite_config import SqliteConfigStore

from esf.config import ConfigService
from esf.config._paths import thaw_plain
from esf.errors import ConcurrencyConflict
from esf.settings import ConfigSettings

SETTINGS = ConfigSettings(
    poll_interval_s=0.05, reconcile_interval_s=0.3, heartbeat_interval_s=0.2, node_ttl_s=3.0, store_timeout_s=5.0
)


def build(kind: str, location: str, prefix: str, node_id: str, data_dir: str | None = None) -> ConfigService:
    if kind == "redis":
        store: Any = RedisConfigStore(location, prefix=prefix)
    else:
        store = SqliteConfigStore(location, poll_interval_s=SETTINGS.poll_interval_s)
    return ConfigService(store, settings=SETTINGS, node_id=node_id, data_dir=data_dir)


def wait_for(condition: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def updater(kind: str, location: str, prefix: str, index: int, count: int, results: Any, final: Any) -> None:
    """Increment an own counter (plain batches) and a shared counter (CAS with retries), ``count`` times each."""
    svc = build(kind, location, prefix, f"updater-{index}")
    seen: list[int] = []
    svc.subscribe("", lambda event: seen.append(event.version))
    conflicts = 0
    try:
        for i in range(count):
            svc.update(f"own.p{index}", i + 1, actor=f"p{index}")
            while True:
                version = svc.version
                current = svc.get("shared", 0)
                try:
                    svc.update("shared", current + 1, expected_version=version, actor=f"p{index}")
                    break
                except ConcurrencyConflict as exc:
                    conflicts += 1
                    actual = exc.actual
                    wait_for(lambda actual=actual: svc.version >= actual)
        results.put(("done", index, conflicts))
        target = final.get(timeout=120)
        wait_for(lambda: svc.version >= target)
        results.put(("final", index, svc.version, thaw_plain(svc.get()), seen))
    finally:
        svc.close()


def idler(kind: str, location: str, prefix: str, node_id: str, frozen: bool, ready: Any, stop: Any) -> None:
    """A live process that applies versions (or, ``frozen``, keeps its old one) until told to stop."""
    svc = build(kind, location, prefix, node_id)
    svc.test_hooks.freeze = frozen
    try:
        ready.put(node_id)
        stop.wait(120)
    finally:
        svc.close()


def watcher(kind: str, location: str, prefix: str, node_id: str, path: str, ready: Any, out: Any, stop: Any) -> None:
    """Report ``(version, time.monotonic())`` each time a new version is visible (bench of propagation)."""
    svc = build(kind, location, prefix, node_id)
    svc.subscribe(path, lambda event: out.put((node_id, event.version, time.monotonic())))
    try:
        ready.put(node_id)
        stop.wait(600)
    finally:
        svc.close()
