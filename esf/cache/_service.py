"""``CacheCore``: the in-process tier in front of the shared tier, kept coherent by invalidation messages."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CircuitOpen, PayloadTooLarge, ServiceUnavailable
from ..lifecycle import track_fork
from ..resilience import BreakerState, CircuitBreaker
from ._local import ENTRY_OVERHEAD_BYTES, Entry, LocalTier
from ._state import CounterExport, NsState, PendingInvalidations, check_seconds, freeze
from ._types import (
    DEFAULT_NAMESPACE,
    CacheHealth,
    CacheStats,
    Codec,
    Invalidation,
    JsonCodec,
    SharedTier,
    check_key,
    check_namespace,
)

if TYPE_CHECKING:
    from ..settings import CacheSettings
    from ..telemetry import Telemetry

__all__ = ["CacheCore"]

log = logging.getLogger("esf.cache")

class CacheCore:
    """Reads, writes, invalidation and coherence of both tiers (``fnd.cache`` adds fetch and bindings).

    Parameters:
        settings: the ``cache`` settings section.
        tier: the shared tier, or None for the in-process tier alone (embedded mode).
        node: this host's name (part of this process's origin id in messages).
        telemetry: returns the Telemetry that counters are exported to, or None.
    """

    def __init__(self, settings: CacheSettings, tier: SharedTier | None, *, node: str = "",
                 telemetry: Callable[[], Telemetry] | None = None) -> None:
        self.settings = settings
        self.tier = tier
        self.node = node
        self._telemetry = telemetry
        self.local = LocalTier(settings.local_policy, settings.local_max_entries, settings.local_max_bytes)
        self.breaker = CircuitBreaker("cache.redis", failure_threshold=settings.breaker_failures,
                                      reset_timeout_s=settings.breaker_reset_s, on_state_change=self._breaker_changed)
        self._namespaces: dict[str, NsState] = {}
        self._ns_lock = threading.Lock()
        self.pending = PendingInvalidations(settings.max_pending_invalidations)
        #: Loads under way in this process, by ``(namespace, key)`` (see ``_fetch.Flight``).
        self.flights: dict[tuple[str, str], Any] = {}
        self.flights_lock = threading.Lock()
        #: Incremented by every invalidation received: a read that saw it change must not fill the local tier.
        self.generation = 0
        self.invalidations_received = 0
        self._export = CounterExport(telemetry)
        #: Set once the listener is subscribed (the in-process tier is then kept coherent by messages).
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.origin = self._new_origin()
        self.namespace_state(DEFAULT_NAMESPACE)
        track_fork(self)

    def _breaker_changed(self, name: str, state: BreakerState) -> None:
        """The shared tier's breaker changed state: the ``esf.breaker.state{breaker="cache.redis"}`` gauge."""
        log.info("cache: the shared tier's circuit breaker is %s", state.replace("_", "-"))
        if self._telemetry is None:
            return
        try:
            self._telemetry().instruments.record_breaker_state(name, state)
        except Exception:  # telemetry never fails the cache
            log.debug("cache: could not record the breaker state", exc_info=True)

    def _new_origin(self) -> str:
        return f"{self.node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def backend(self) -> str:
        return "redis" if self.tier is not None else "local"

    # -- namespaces ------------------------------------------------------------

    def namespace_state(self, name: str, *, codec: Codec | None = None, ttl_s: float | None = None) -> NsState:
        """The state of namespace ``name``, created on first use (``codec``/``ttl_s`` apply then only).

        Raises:
            ValidationError: ``name`` is not a valid namespace name.
        """
        state = self._namespaces.get(name)
        if state is not None:
            if codec is not None:
                state.codec = codec
            if ttl_s is not None:
                state.ttl_s = ttl_s
            return state
        check_namespace(name)
        with self._ns_lock:
            state = self._namespaces.get(name)
            if state is None:
                state = NsState(name, codec or JsonCodec(), ttl_s if ttl_s is not None else self.settings.default_ttl_s)
                self._namespaces[name] = state
        return state

    # -- reading ---------------------------------------------------------------

    def local_hit(self, ns: NsState, key: str) -> Entry | None:
        """The in-process copy of ``key`` when it may be served without asking the shared tier (no lock)."""
        nk = (ns.name, key)
        try:
            entry = self.local.mirror.get(nk)
        except TypeError:  # an unhashable key
            check_key(key)
            raise
        if entry is not None and time.monotonic() < entry.checked_until:
            self.local.reads.append(nk)
            ns.local_hits += 1
            return entry
        return None

    def read(self, ns: NsState, key: str, *, count: bool = True) -> tuple[Entry | None, Entry | None, bool]:
        """Look ``key`` up past the in-process fast path (``count``: add to the hit and miss counters).

        Returns ``(fresh, stale, shared_ok)``: the entry to serve (or None: a miss), the last expired
        value still kept (for ``stale_on_error``), and whether the shared tier answered.
        """
        c = 1 if count else 0
        check_key(key)
        self.ensure_started()
        nk = (ns.name, key)
        now, wall = time.monotonic(), time.time()
        local = self.local.mirror.get(nk)
        if local is not None and now < local.checked_until:
            ns.local_hits += c
            return local, None, True
        tier = self.tier
        if tier is not None and self.breaker.allow():
            generation = self.generation
            try:
                version = ns.version
                if version is None or now >= ns.version_until:
                    # Bumps arrive as messages; a lost one is caught here, within coherence_s.
                    version = tier.version(ns.name)
                    ns.version, ns.version_until = version, now + self.settings.coherence_s
                raw = tier.get(ns.name, version, key)
            except ServiceUnavailable as exc:
                self.breaker.record_failure()
                log.debug("cache: shared tier unavailable on read (%s)", exc)
            else:
                self.breaker.record_success()
                if raw is None:
                    self.local.pop(nk)
                    ns.misses += c
                    return None, local if local is not None and now < local.drop_at else None, True
                try:
                    entry = self.decode(ns, raw, version, now, wall)
                except Exception:
                    # Bytes this codec cannot read (another codec, or a foreign writer): a miss; the
                    # loader's value replaces them.
                    log.warning("cache: %s/%s holds an entry that cannot be decoded; treating it as a miss",
                                ns.name, key, exc_info=True)
                    ns.misses += c
                    return None, None, True
                if wall >= entry.expires_at:
                    ns.misses += c
                    return None, entry, True
                if generation == self.generation:
                    self.local.set(nk, entry)
                ns.shared_hits += c
                return entry, None, True
        # The in-process tier alone (embedded), or degraded: the in-process copy until its own expiry.
        if tier is not None:
            ns.degraded += c
        if local is not None:
            if wall < local.expires_at:
                ns.local_hits += c
                return local, None, False
            ns.misses += c
            return None, local if now < local.drop_at else None, False
        ns.misses += c
        return None, None, False

    def decode(self, ns: NsState, raw: bytes, version: int, now: float, wall: float) -> Entry:
        """An entry from the shared tier's bytes ``<expires_ms>:<refresh_ms>:<payload>``."""
        expires_ms, _, rest = raw.partition(b":")
        refresh_ms, _, payload = rest.partition(b":")
        expires_at = int(expires_ms) / 1000.0
        refresh_at = int(refresh_ms) / 1000.0
        value = freeze(ns.codec.decode(payload))
        left = expires_at - wall
        checked = now + max(0.0, min(self.settings.coherence_s, left))
        return Entry(value, version, len(payload) + ENTRY_OVERHEAD_BYTES, expires_at, refresh_at, checked,
                     now + max(0.0, left) + self.settings.stale_grace_s)

    # -- writing ---------------------------------------------------------------

    def encode(self, ns: NsState, value: Any) -> bytes:
        """The codec's bytes of ``value``.

        Raises:
            SerializationError: the codec cannot encode it.
            PayloadTooLarge: over ``cache.max_value_bytes``.
        """
        data = ns.codec.encode(value)
        limit = self.settings.max_value_bytes
        if len(data) > limit:
            raise PayloadTooLarge(
                f"cache value of {len(data)} bytes is over the limit of {limit} bytes (cache.max_value_bytes); "
                "cache smaller parts of it", size=len(data), limit=limit)
        return data

    def put(self, ns: NsState, key: str, value: Any, *, ttl_s: float | None = None,
            refresh_after_s: float | None = None, if_version: int | None = None,
            if_lock: tuple[str, str] | None = None) -> bool:
        """Store ``value`` in both tiers and evict the in-process copies of every other process.

        Returns False when the shared tier was unreachable (the value is then in this process only,
        and the other processes' copies are evicted once it is back), or when ``if_version``/``if_lock``
        did not hold (nothing stored: a loaded value read before an invalidation is not kept).

        Raises:
            ValidationError: a bad key, a non-positive ``ttl_s``/``refresh_after_s``, or a value that cannot
                be encoded or is too large (nothing is stored).
        """
        check_key(key)
        ttl = check_seconds("ttl", ttl_s if ttl_s is not None else ns.ttl_s)
        if refresh_after_s is not None:
            check_seconds("refresh_after", refresh_after_s)
        payload = self.encode(ns, value)
        self.ensure_started()
        now, wall = time.monotonic(), time.time()
        expires_at = wall + ttl
        refresh_at = wall + refresh_after_s if refresh_after_s is not None and refresh_after_s < ttl else 0.0
        shared = self._write_shared(ns, key, payload, ttl, expires_at, refresh_at, if_version, if_lock)
        if shared is None:
            return False  # an invalidation came first: the value is not stored
        bound = min(self.settings.coherence_s, ttl) if shared and self.tier is not None else ttl
        # What every process decodes from the shared tier, so this process serves the same value.
        entry = Entry(freeze(ns.codec.decode(payload)), ns.version or 0,
                      len(payload) + ENTRY_OVERHEAD_BYTES, expires_at, refresh_at, now + bound,
                      now + ttl + self.settings.stale_grace_s)
        self.local.set((ns.name, key), entry)
        return shared

    def _write_shared(self, ns: NsState, key: str, payload: bytes, ttl: float, expires_at: float,
                      refresh_at: float, if_version: int | None, if_lock: tuple[str, str] | None) -> bool | None:
        tier = self.tier
        if tier is None:
            return True
        message = Invalidation("delete", ns.name, self.origin, key=key)
        if self.breaker.allow():
            raw = b"%d:%d:" % (int(expires_at * 1000), int(refresh_at * 1000)) + payload
            try:
                version = tier.write(ns.name, key, raw, ttl + self.settings.stale_grace_s, message,
                                     if_version=if_version, if_lock=if_lock)
                if version is None:
                    self.breaker.record_success()
                    ns.version_until = 0.0  # read the version again before the next read
                    return None
                if version != ns.version:
                    ns.version, ns.version_until = version, time.monotonic() + self.settings.coherence_s
            except ServiceUnavailable as exc:
                self.breaker.record_failure()
                log.debug("cache: shared tier unavailable on write (%s)", exc)
            else:
                self.breaker.record_success()
                return True
        ns.degraded += 1
        self._remember(message)
        return False

    def delete(self, ns: NsState, key: str) -> bool:
        """Remove ``key`` from both tiers and from every process; False when only from this one (for now)."""
        check_key(key)
        self.ensure_started()
        self.local.pop((ns.name, key))
        message = Invalidation("delete", ns.name, self.origin, key=key)
        if self.tier is None:
            return True
        if self.breaker.allow():
            try:
                self.tier.delete(ns.name, key, message)
            except ServiceUnavailable:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
                return True
        ns.degraded += 1
        self._remember(message)
        return False

    def bump(self, ns: NsState) -> int | None:
        """Invalidate the whole namespace everywhere; returns its new version (None: shared tier down,
        the bump is replayed when it is back)."""
        self.ensure_started()
        self.local.drop_namespace(ns.name)
        if self.tier is None:
            ns.version = (ns.version or 0) + 1
            return ns.version
        if self.breaker.allow():
            try:
                version = self.tier.bump(ns.name, self.origin)
            except ServiceUnavailable:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
                ns.version, ns.version_until = version, time.monotonic() + self.settings.coherence_s
                return version
        ns.degraded += 1
        self._remember(Invalidation("bump", ns.name, self.origin))
        return None

    def _remember(self, message: Invalidation) -> None:
        self.pending.add(message, self.origin)

    def acquire(self, name: str, token: str, lease_s: float) -> bool | None:
        """Take a shared lock; None when the shared tier cannot be asked."""
        if self.tier is None or not self.breaker.allow():
            return None
        try:
            ok = self.tier.acquire(name, token, lease_s)
        except ServiceUnavailable:
            self.breaker.record_failure()
            return None
        self.breaker.record_success()
        return ok

    def release(self, name: str, token: str) -> None:
        if self.tier is None:
            return
        try:
            self.tier.release(name, token)
        except ServiceUnavailable:
            self.breaker.record_failure()  # the lease frees it

    # -- coherence -------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the listener thread of this process (after a fork too)."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="esf-cache", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        if self.tier is None:
            while not self._stop.wait(1.0):
                self.export()
            return
        self.tier.watch(self._on_message, self._stop, self._tick)

    def _tick(self) -> None:
        self.local.drain()
        now = time.monotonic()
        if now - getattr(self, "_last_export", 0.0) >= 1.0:
            self._last_export = now
            self.export()

    def _on_message(self, message: Invalidation | None) -> None:
        self.generation += 1
        if message is None:
            # (Re)subscribed: messages sent meanwhile are lost, so every copy held here is checked with
            # the shared tier before it is served again. They are not dropped: until the breaker lets
            # reads through, a dropped copy would read as a miss instead of the degraded in-process value.
            self.local.expire_checks()
            for known in list(self._namespaces.values()):
                known.version_until = 0.0
            self.breaker.record_success()
            self._replay()
            self.subscribed.set()
            return
        self.invalidations_received += 1
        if message.origin == self.origin:
            return
        if message.op == "bump":
            self.local.drop_namespace(message.namespace)
            state = self._namespaces.get(message.namespace)
            if state is not None and message.version is not None:
                state.version, state.version_until = message.version, time.monotonic() + self.settings.coherence_s
        elif message.key is not None:
            self.local.pop((message.namespace, message.key))

    def _replay(self) -> None:
        """Send the invalidations made while the shared tier was down (oldest first)."""
        assert self.tier is not None
        while (message := self.pending.first()) is not None:
            try:
                if message.op == "bump":
                    self.tier.bump(message.namespace, self.origin)
                else:
                    assert message.key is not None
                    self.tier.delete(message.namespace, message.key, message)
            except (ServiceUnavailable, CircuitOpen):
                return
            self.pending.done(message)

    # -- telemetry, health -------------------------------------------------------

    def export(self) -> None:
        """Add the counters' increments since the last export to telemetry."""
        self._export.export(list(self._namespaces.values()), self.local.evictions)

    def stats(self) -> CacheStats:
        """This process's counters and the in-process tier's size."""
        self.export()
        return CacheStats(
            backend="redis" if self.tier is not None else "local",
            local_entries=len(self.local), local_bytes=self.local.bytes, evictions=self.local.evictions,
            invalidations_received=self.invalidations_received, pending_invalidations=len(self.pending),
            breaker=self.breaker.state,
            namespaces={name: ns.stats() for name, ns in list(self._namespaces.items())},
        )

    def health(self) -> CacheHealth:
        """``degraded`` while the shared tier's breaker is open or invalidations wait to be replayed."""
        state = self.breaker.state
        pending = len(self.pending)
        backend: Any = self.backend
        if self.tier is not None and (state != "closed" or pending):
            reason = f"shared tier unreachable (breaker {state})" if state != "closed" else \
                f"{pending} invalidations wait for the shared tier"
            return CacheHealth("degraded", backend, state, pending, reason)
        return CacheHealth("ok", backend, state, pending)

    def close(self) -> None:
        """Stop the listener, export the last counters, release the connections."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.export()
        if self.tier is not None:
            self.tier.close()

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): new locks, no listener thread, a new origin."""
        self.local.reset_lock()
        self._ns_lock = threading.Lock()
        self.pending.reset_lock()
        self.flights = {}
        self.flights_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._export.reset_lock()
        self._thread = None
        self.subscribed = threading.Event()
        self.origin = self._new_origin()

