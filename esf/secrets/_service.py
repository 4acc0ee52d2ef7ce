"""The secrets service: cached reads, leases renewed before they end, rotation notices."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import EsfError, SecretNotFound, ServiceUnavailable, ValidationError
from ..lifecycle import track_fork
from ..resilience import CircuitBreaker
from ._keeper import Keeper
from ._leases import LeaseKeeper
from ._refs import SecretRef, resolve_references
from ._types import Lease, SecretChange, SecretData, SecretsProvider, Subscriber
from ._value import Secret

if TYPE_CHECKING:
    from ..settings import SecretsSettings
    from ..telemetry import Telemetry

__all__ = ["SecretsService", "Subscription"]

log = logging.getLogger("esf.secrets")

#: Paths: segments of letters, digits and ``_ . - @ +`` separated by ``/``.
PATH_RE = re.compile(r"^[A-Za-z0-9_.@+\-]+(/[A-Za-z0-9_.@+\-]+)*$")

#: Sink of lifecycle events: ``emit(type, payload)``; payloads never hold a value.
EventSink = Callable[[str, dict[str, Any]], None]


def check_path(path: object) -> str:
    """Return ``path`` when it is a valid secret path, else raise ``ValidationError``."""
    if not isinstance(path, str) or len(path) > 512 or not PATH_RE.match(path) or ".." in path.split("/"):
        raise ValidationError(f"invalid secret path {path!r}: segments of letters, digits and '_.@+-' "
                              "separated by '/', at most 512 characters", errors={str(path): "invalid path"})
    return path


@dataclass
class _Cached:
    data: SecretData
    fetched_at: float


class Subscription:
    """A subscription returned by :meth:`SecretsService.subscribe`; ``cancel()`` ends it."""

    def __init__(self, service: SecretsService, path: str, callback: Subscriber) -> None:
        self.path = path
        self._service = service
        self._callback = callback

    def cancel(self) -> None:
        """Stop calling the callback (idempotent)."""
        self._service._unsubscribe(self.path, self._callback)


class SecretsService:
    """Secrets of one process: reads through a cache, leases kept alive, subscribers told of rotations.

    Parameters:
        provider: the backend (see :class:`SecretsProvider`); owned and closed by the service.
        settings: ``Settings.secrets``.
        emit: sink of lifecycle events (``secrets.rotated``, ``secrets.lease_renewed`` …); never given a value.
        telemetry: returns the Telemetry that receives the gauges and counters (``None``: none).
        clock: wall clock in epoch seconds (leases end at wall-clock times).
    """

    def __init__(self, provider: SecretsProvider, settings: SecretsSettings, *, emit: EventSink | None = None,
                 telemetry: Callable[[], Telemetry | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.provider = provider
        self.settings = settings
        self._emit_sink = emit
        self._telemetry = telemetry
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int | None], _Cached] = {}
        self._cache_ttl_s = settings.cache_ttl_s
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)
        self._last_rotation: dict[str, float] = {}
        #: Why the backend is unreachable (``None``: it answered last time).
        self._down_reason: str | None = None
        self._down_since: float | None = None
        #: When the backend's token ends (this service's clock), as the last token upkeep read it; None: unknown
        #: or a token without an end.
        self._token_expires_at: float | None = None
        self.breaker = self._new_breaker()
        self.leases = LeaseKeeper(self)
        self.keeper = Keeper(self)
        track_fork(self)

    def after_fork(self) -> None:
        """In a forked child (``esf.lifecycle.track_fork``): new locks, since another thread of the parent may
        have held one at the fork."""
        self._lock = threading.Lock()
        self.breaker = self._new_breaker()
        self.leases.reset_locks()
        self.keeper.after_fork()

    def _new_breaker(self) -> CircuitBreaker:
        return CircuitBreaker(f"secrets.{self.provider.name}", failure_threshold=self.settings.breaker_failures,
                              reset_timeout_s=self.settings.breaker_reset_s)

    # -- reading ---------------------------------------------------------------

    def get(self, path: str, key: str | None = None, version: int | None = None) -> Secret:
        """The value of ``key`` in the secret at ``path`` (latest version, or ``version``).

        ``key`` may be left out when the secret holds exactly one key. Served from the cache
        while it is younger than ``secrets.cache_ttl_s`` (a pinned version: always); while the
        backend is unreachable the cached value is served until its lease or ``secrets.hard_expiry_s``
        ends.

        Raises:
            ValidationError: ``path``, ``key`` or ``version`` is malformed, or ``key`` is needed.
            SecretNotFound: no such secret, version or key.
            ServiceUnavailable: the backend is unreachable and no usable cached value is left.
        """
        if version is None and key is not None:
            # Hot path: a fresh cache entry holds only valid paths, so the checks of read() are not needed.
            entry = self._cache.get((path, None))
            if entry is not None and self._clock() - entry.fetched_at < self._cache_ttl_s:
                value = entry.data.data.get(key)
                if value is not None:
                    return value
        return pick(self.read(path, version), key)

    def read(self, path: str, version: int | None = None) -> SecretData:
        """Every key of the secret at ``path`` (see :meth:`get`; same errors)."""
        check_path(path)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValidationError(f"secret {path!r}: version must be a whole number >= 1, got {version!r}",
                                  errors={"version": "must be >= 1"})
        entry = self._cache.get((path, version))
        now = self._clock()
        if entry is not None and (version is not None or now - entry.fetched_at < self.settings.cache_ttl_s):
            return entry.data
        return self._fetch(path, version, entry, now)

    def _fetch(self, path: str, version: int | None, entry: _Cached | None, now: float) -> SecretData:
        try:
            fresh: SecretData = self.call(self.provider.read, path, version)
        except ServiceUnavailable as exc:
            if entry is not None and now < self._serve_until(entry):
                log.warning("secrets: serving the cached value of %r: %s", path, self._down_reason)
                return entry.data
            raise ServiceUnavailable(
                f"secret {path!r}: the {self.provider.name} backend is unreachable ({type(exc).__name__}) and no "
                f"cached value within secrets.hard_expiry_s={self.settings.hard_expiry_s:g} s is left",
                path=path) from None
        self._store(path, version, fresh, entry)
        return fresh

    def _serve_until(self, entry: _Cached) -> float:
        until = entry.fetched_at + self.settings.hard_expiry_s
        if entry.data.lease_duration_s:
            until = min(until, entry.data.issued_at + entry.data.lease_duration_s)
        return until

    def _store(self, path: str, version: int | None, fresh: SecretData, entry: _Cached | None) -> None:
        with self._lock:
            previous = self._cache.get((path, version), entry)
            self._cache[(path, version)] = _Cached(fresh, self._clock())
        if version is not None or previous is None:
            return
        old = previous.data
        changed = old.version != fresh.version if fresh.version is not None else dict(old.data) != dict(fresh.data)
        if changed:
            self.rotated(SecretChange(path, "version", version=fresh.version, previous_version=old.version))

    # -- subscribers and rotation --------------------------------------------

    def subscribe(self, path: str, callback: Subscriber) -> Subscription:
        """Call ``callback(SecretChange)`` each time the secret at ``path`` gets a new value in this process.

        The call comes after the service serves the new value, from the thread that noticed it
        (a read, a lease renewal or :meth:`refresh`). Exceptions from the callback are logged.
        Subscribing to a path also makes :meth:`refresh` watch it.

        Raises:
            ValidationError: ``path`` is malformed or ``callback`` is not callable.
        """
        check_path(path)
        if not callable(callback):
            raise ValidationError("subscribe: callback must be callable")
        with self._lock:
            self._subscribers[path].append(callback)
        self.keeper.ensure()
        return Subscription(self, path, callback)

    def _unsubscribe(self, path: str, callback: Subscriber) -> None:
        with self._lock:
            subs = self._subscribers.get(path, [])
            if callback in subs:
                subs.remove(callback)

    def rotated(self, change: SecretChange) -> None:
        """Record a new value at ``change.path``: an event, a counter, then every subscriber."""
        self._last_rotation[change.path] = self._clock()
        self.emit("secrets.rotated", change.to_dict())
        self.count("esf.secrets.rotations", {"path": change.path, "kind": change.kind})
        with self._lock:
            callbacks = list(self._subscribers.get(change.path, ()))
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                log.exception("secrets: a subscriber of %r failed; continuing", change.path)

    # -- leases ------------------------------------------------------------------

    def lease(self, path: str) -> Lease:
        """The current dynamic secret at ``path`` (``database/creds/app``), issued on first use, renewed
        before it ends (at ``1 - secrets.renew_margin`` of its duration) and issued again when a renewal
        is refused. A re-issue notifies the path's subscribers.

        Raises:
            ValidationError: ``path`` is malformed or the backend has no dynamic secrets.
            ServiceUnavailable: the backend is unreachable and the held lease (if any) has ended.
        """
        return self.leases.get(check_path(path))

    # -- refresh -----------------------------------------------------------------

    def refresh(self, paths: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
        """Check every secret this process uses, now: renew or re-obtain the backend's token, read each
        watched path again (a new version notifies its subscribers), renew leases that are due and
        issue again those that were revoked.

        Parameters:
            paths: more paths to read (added to ``secrets.watch`` and to those read or subscribed in this process).

        Returns:
            ``{"checked", "rotated", "renewed", "reissued", "failed", "auth"}`` (paths and error codes only).

        Raises:
            ServiceUnavailable: the backend could not be reached for any of the checks (worth a retry).
        """
        paths = (*self.settings.watch, *paths)
        for p in paths:
            check_path(p)
        report: dict[str, Any] = {"checked": [], "rotated": [], "renewed": [], "reissued": [], "failed": {}}
        unreachable = 0
        try:
            report["auth"] = self.call(self.provider.maintain)
            self._auth_outcome(report["auth"])
        except EsfError as exc:
            report["failed"]["auth"] = exc.code
            unreachable += isinstance(exc, ServiceUnavailable)
            self.emit("secrets.failed", {"path": "auth", "operation": "auth", "error": exc.code})
        with self._lock:
            watched = {p for (p, v) in self._cache if v is None} | set(self._subscribers) | set(paths)
        watched -= set(self.leases.paths())
        for path in sorted(watched):
            before = self._last_rotation.get(path)
            try:
                entry = self._cache.get((path, None))
                if entry is None:
                    self._fetch(path, None, None, self._clock())
                else:
                    self._refetch(path, entry)
                report["checked"].append(path)
                if self._last_rotation.get(path) != before:
                    report["rotated"].append(path)
            except EsfError as exc:
                report["failed"][path] = exc.code
                unreachable += isinstance(exc, ServiceUnavailable)
                self.emit("secrets.failed", {"path": path, "operation": "read", "error": exc.code})
                self.count("esf.secrets.failures", {"operation": "read"})
        lease_report = self.leases.refresh_all()
        for k in ("renewed", "reissued", "checked"):
            report[k].extend(lease_report[k])
        report["failed"].update(lease_report["failed"])
        unreachable += lease_report["unreachable"]
        if unreachable and unreachable == len(report["failed"]) and not report["checked"]:
            raise ServiceUnavailable(f"secrets refresh: the {self.provider.name} backend is unreachable",
                                     failed=report["failed"])
        return report

    def _refetch(self, path: str, entry: _Cached) -> None:
        fresh: SecretData = self.call(self.provider.read, path, None)
        self._store(path, None, fresh, entry)

    def _auth_outcome(self, auth: dict[str, Any]) -> None:
        action = auth.get("action")
        if action in ("renewed", "login"):
            self.emit(f"secrets.token_{action}", {k: v for k, v in auth.items() if k != "action"})
            self.count("esf.secrets.token", {"action": str(action)})
        ttl = auth.get("ttl_s")
        if isinstance(ttl, int | float) and ttl > 0:
            self.gauge("esf.secrets.expires_in_s", {"path": "auth/token"}, float(ttl))
            self._token_expires_at = self._clock() + float(ttl)
        elif isinstance(ttl, int | float):
            self._token_expires_at = None  # a token without an end (a root token)

    def token_expires_in(self) -> float | None:
        """Seconds until the backend's token ends, as the last token upkeep (``refresh``) read its TTL;
        ``None`` before any upkeep, or for a token without an end."""
        if self._token_expires_at is None:
            return None
        return round(self._token_expires_at - self._clock(), 3)

    # -- calls to the backend --------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the backend through the circuit breaker; note whether it was reachable.

        Raises:
            CircuitOpen: the breaker is open (nothing is called).
            ServiceUnavailable: the backend did not answer in ``secrets.timeout_s``.
        """
        try:
            result = self.breaker.call(fn, *args)
        except ServiceUnavailable as exc:
            if self._down_reason is None:
                self._down_since = self._clock()
                self.emit("secrets.unreachable", {"backend": self.provider.name, "error": exc.code})
            self._down_reason = f"{self.provider.name} backend unreachable: {exc.code}"
            raise
        except EsfError:
            self.breaker.record_success()  # the backend answered (a refusal is not an outage)
            self._reachable()
            raise
        self._reachable()
        return result

    def _reachable(self) -> None:
        if self._down_reason is not None:
            self._down_reason = None
            self._down_since = None
            self.emit("secrets.reachable", {"backend": self.provider.name})

    # -- events and metrics ------------------------------------------------------

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """Send a lifecycle event (no value ever) to the sink; a failing sink is logged, never raised."""
        if self._emit_sink is None:
            return
        try:
            self._emit_sink(kind, payload)
        except Exception:
            log.exception("secrets: could not record the %s event", kind)

    def count(self, name: str, labels: dict[str, str]) -> None:
        """Add one to a counter (when telemetry is on)."""
        telemetry = self._telemetry() if self._telemetry is not None else None
        if telemetry is not None:
            try:
                telemetry.counter(name, labels).inc()
            except Exception:
                log.debug("secrets: counter %s refused", name, exc_info=True)

    def gauge(self, name: str, labels: dict[str, str], value: float) -> None:
        """Set a gauge (when telemetry is on)."""
        telemetry = self._telemetry() if self._telemetry is not None else None
        if telemetry is not None:
            try:
                telemetry.gauge(name, labels).set(value)
            except Exception:
                log.debug("secrets: gauge %s refused", name, exc_info=True)

    # -- config references, health, status ---------------------------------------

    def resolve_references(self, value: Any) -> Any:
        """``value`` with each ``secret://path[?version=N][#key]`` string replaced by its :class:`Secret`.

        Raises:
            ValidationError, SecretNotFound, ServiceUnavailable: as :meth:`get`.
        """
        def lookup(ref: SecretRef) -> Secret:
            return self.get(ref.path, ref.key, ref.version)

        return resolve_references(value, lookup)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"degraded", "backend", "reason", "breaker", "leases", "cached"}``."""
        degraded = self._down_reason is not None or self.breaker.state != "closed"
        report: dict[str, Any] = {"status": "degraded" if degraded else "ok", "backend": self.provider.name,
                                  "breaker": self.breaker.state, "leases": len(self.leases.paths()),
                                  "cached": len(self._cache)}
        if degraded:
            report["reason"] = self._down_reason or f"circuit breaker {self.breaker.state}"
            report["unreachable_since"] = self._down_since
        return report

    def status(self) -> dict[str, Any]:
        """Leases (expiry), cached secrets (version, age), last rotation per path and the backend's status."""
        now = self._clock()
        with self._lock:
            cached = [{"path": p, "version": c.data.version, "pinned": v is not None,
                       "age_s": round(now - c.fetched_at, 3)} for (p, v), c in sorted(self._cache.items(),
                                                                                     key=lambda kv: str(kv[0]))]
        try:
            backend = self.provider.status()
        except EsfError as exc:
            backend = {"error": exc.code}
        return {"health": self.health(), "backend": backend, "leases": self.leases.describe(now),
                "cached": cached, "last_rotation": dict(self._last_rotation)}

    def close(self) -> None:
        """Stop the lease keeper and close the backend's connections (held leases are left to expire)."""
        self.keeper.close()
        self.provider.close()


def pick(data: SecretData, key: str | None) -> Secret:
    """The value of ``key`` in ``data`` (the only key when ``key`` is ``None``).

    Raises:
        ValidationError: ``key`` is ``None`` and the secret holds several keys.
        SecretNotFound: no such key.
    """
    if key is None:
        if len(data.data) == 1:
            return next(iter(data.data.values()))
        raise ValidationError(f"secret {data.path!r} holds keys {sorted(data.data)}; name the one to read",
                              errors={"key": "required"})
    try:
        return data.data[key]
    except KeyError:
        raise SecretNotFound(f"secret {data.path!r} has no key {key!r} (keys: {sorted(data.data)})",
                             path=data.path, key=key) from None
