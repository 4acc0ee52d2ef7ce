"""Read-through: one loader per key across processes (a leased lock), refresh-ahead, stale on error."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError

if TYPE_CHECKING:
    from ..telemetry import Telemetry
    from ._local import Entry
    from ._service import CacheCore
    from ._state import NsState

__all__ = ["Flight", "LoaderCall", "Refresher", "fetch", "run_loader"]

log = logging.getLogger("esf.cache")


@dataclass(frozen=True)
class LoaderCall:
    """How to produce a value: ``fn()``; ``name``/``args``/``kwargs`` let a worker make the same call
    (a registered loader, called as ``loader(*args, **kwargs)``). ``name`` None: not refreshable."""

    fn: Callable[[], Any]
    name: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


#: Starts a refresh-ahead of ``(namespace, key, call, ttl_s, refresh_after_s, claim_s)`` somewhere else, at most
#: once per ``claim_s`` seconds (the time the current value has left).
Refresher = Callable[["NsState", str, LoaderCall, float, float, float], None]


def run_loader(core: CacheCore, ns: NsState, call: LoaderCall,
               telemetry: Callable[[], Telemetry] | None = None) -> Any:
    """Call the loader, counting its calls, failures and time."""
    started = time.perf_counter()
    try:
        return call.fn()
    except Exception:
        ns.load_errors += 1
        raise
    finally:
        elapsed = time.perf_counter() - started
        ns.loads += 1
        ns.load_seconds += elapsed
        if telemetry is not None:
            try:
                telemetry().histogram("esf.cache.load_seconds", {"namespace": ns.name}).observe(elapsed)
            except Exception:
                log.debug("cache: could not record the loader time", exc_info=True)


def fetch(core: CacheCore, ns: NsState, key: str, call: LoaderCall, *, ttl_s: float | None,
          refresh_after_s: float | None, stale_on_error: bool, refresher: Refresher | None,
          telemetry: Callable[[], Telemetry] | None = None) -> Any:
    """The cached value of ``key``, else ``call``'s value, stored (see ``Namespace.fetch``)."""
    if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0):
        raise ValidationError(f"cache ttl: must be a number of seconds greater than zero, got {ttl_s!r}")
    if refresh_after_s is not None:
        if isinstance(refresh_after_s, bool) or not isinstance(refresh_after_s, int | float) or not refresh_after_s > 0:
            raise ValidationError(f"cache refresh_after: must be a number of seconds greater than zero, "
                                  f"got {refresh_after_s!r}")
        if call.name is None:
            raise ValidationError("cache refresh_after needs a registered loader (fnd.cache.loader(name)) or a "
                                  "@fnd.cached function: a worker must be able to call it again")
    ttl = float(ttl_s) if ttl_s is not None else ns.ttl_s
    entry = core.local_hit(ns, key)
    stale: Entry | None = None
    shared_ok = False
    if entry is None:
        entry, stale, shared_ok = core.read(ns, key)
    if entry is not None:
        if refresh_after_s is not None and entry.refresh_at and time.time() >= entry.refresh_at \
                and refresher is not None:
            refresher(ns, key, call, ttl, float(refresh_after_s), entry.expires_at - time.time())
        return entry.value
    if shared_ok and core.tier is not None:
        return _single_flight(core, ns, key, lambda: _coordinated(
            core, ns, key, call, ttl, refresh_after_s, stale, stale_on_error, telemetry))
    return _single_flight(core, ns, key, lambda: _load(
        core, ns, key, call, ttl, refresh_after_s, stale, stale_on_error, telemetry))


class Flight:
    """One load under way in this process; the other threads missing the same key wait for its outcome."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def _single_flight(core: CacheCore, ns: NsState, key: str, run: Callable[[], Any]) -> Any:
    """``run()`` once per key in this process at a time: the threads that miss the key meanwhile get its value
    (or its exception) instead of asking Redis or the loader themselves. Works without Redis too (embedded
    mode, or Redis down). A thread that waited ``stampede_wait_s + lock_lease_s`` runs ``run()`` itself."""
    mark = (ns.name, key)
    with core.flights_lock:
        flight = core.flights.get(mark)
        leader = flight is None
        if flight is None:
            flight = core.flights[mark] = Flight()
    if not leader:
        ns.stampede_waits += 1
        if flight.done.wait(core.settings.stampede_wait_s + core.settings.lock_lease_s):
            if flight.error is not None:
                raise flight.error
            return flight.value
        return run()
    try:
        flight.value = run()
        return flight.value
    except BaseException as exc:
        flight.error = exc
        raise
    finally:
        with core.flights_lock:
            core.flights.pop(mark, None)
        flight.done.set()


def _load(core: CacheCore, ns: NsState, key: str, call: LoaderCall, ttl: float, refresh_after_s: float | None,
          stale: Entry | None, stale_on_error: bool, telemetry: Callable[[], Telemetry] | None,
          lock: tuple[str, str] | None = None) -> Any:
    """Run the loader and store its value, unless the namespace was bumped (or, holding ``lock``, the key was
    deleted) while it ran: a value read before an invalidation is returned but not stored."""
    version = ns.version
    try:
        value = run_loader(core, ns, call, telemetry)
    except Exception:
        if stale_on_error and stale is not None:
            ns.stale_served += 1
            log.warning("cache: the loader of %s/%s failed; serving the last good value", ns.name, key,
                        exc_info=True)
            return stale.value
        raise
    core.put(ns, key, value, ttl_s=ttl, refresh_after_s=refresh_after_s, if_version=version, if_lock=lock)
    return value


def _coordinated(core: CacheCore, ns: NsState, key: str, call: LoaderCall, ttl: float,
                 refresh_after_s: float | None, stale: Entry | None, stale_on_error: bool,
                 telemetry: Callable[[], Telemetry] | None) -> Any:
    """One loader across processes: the holder of ``l:<ns>:<key>`` loads; the others wait for its value,
    take the lock when it is freed (or its lease ran out: a killed holder), or load themselves at the deadline."""
    settings = core.settings
    lock = f"l:{ns.name}:{key}"
    token = uuid.uuid4().hex
    got = core.acquire(lock, token, settings.lock_lease_s)
    if got is None:
        return _load(core, ns, key, call, ttl, refresh_after_s, stale, stale_on_error, telemetry)
    if not got:
        ns.stampede_waits += 1
        deadline = time.monotonic() + settings.stampede_wait_s
        while not got:
            time.sleep(settings.stampede_poll_s)
            entry, newer_stale, ok = core.read(ns, key, count=False)
            if entry is not None:
                return entry.value
            stale = newer_stale or stale
            if not ok or time.monotonic() >= deadline:
                log.debug("cache: %s/%s: no value from another process in time; loading here", ns.name, key)
                return _load(core, ns, key, call, ttl, refresh_after_s, stale, stale_on_error, telemetry)
            got = core.acquire(lock, token, settings.lock_lease_s)
            if got is None:
                return _load(core, ns, key, call, ttl, refresh_after_s, stale, stale_on_error, telemetry)
    try:
        # The previous holder may have stored the value just before freeing the lock.
        entry, newer_stale, _ = core.read(ns, key, count=False)
        if entry is not None:
            return entry.value
        return _load(core, ns, key, call, ttl, refresh_after_s, newer_stale or stale, stale_on_error, telemetry,
                     lock=(lock, token))
    finally:
        core.release(lock, token)
