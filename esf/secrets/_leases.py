"""Leases of dynamic secrets: issued on first use, renewed before they end, issued again when refused."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import EsfError, NotFound, PermissionDenied, ServiceUnavailable
from ._types import Lease, SecretChange, SecretData

if TYPE_CHECKING:
    from ._service import SecretsService

__all__ = ["LeaseKeeper"]

log = logging.getLogger("esf.secrets")


@dataclass
class _Held:
    lease: Lease
    #: Wall-clock time of the last issue or renewal.
    valid_from: float


class LeaseKeeper:
    """The leases one :class:`SecretsService` holds, one per path."""

    def __init__(self, service: SecretsService) -> None:
        self._service = service
        self._held: dict[str, _Held] = {}
        # Re-entrant: a subscriber told of a re-issue may ask for the lease again from the same thread.
        self._locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._guard = threading.Lock()

    def reset_locks(self) -> None:
        """New locks (in a forked child: a thread of the parent may have held one at the fork)."""
        self._locks = defaultdict(threading.RLock)
        self._guard = threading.Lock()

    def paths(self) -> list[str]:
        """Paths with a held lease."""
        return list(self._held)

    def _lock_of(self, path: str) -> threading.RLock:
        with self._guard:
            return self._locks[path]

    def get(self, path: str) -> Lease:
        """The held lease of ``path``, renewed or issued again when due (see ``SecretsService.lease``)."""
        self._service.keeper.ensure()
        held = self._held.get(path)
        now = self._service._clock()
        if held is not None and now < self._renew_at(held):
            return held.lease
        with self._lock_of(path):
            held = self._held.get(path)
            now = self._service._clock()
            if held is None:
                return self._issue(path, None, reason="first use")
            if now < self._renew_at(held):
                return held.lease
            return self._renew_or_reissue(path, held, now)

    def verify(self, path: str) -> bool:
        """Ask the backend whether the held lease of ``path`` still exists; issue a new one if not.

        Returns:
            ``True`` when a new lease was issued (the caller may retry with it).
        """
        held = self._held.get(path)
        if held is None:
            return False
        service = self._service
        with self._lock_of(path):
            current = self._held.get(path)
            if current is not None and current.lease.lease_id != held.lease.lease_id:
                return True  # another thread already issued a new one
            try:
                service.call(service.provider.lease_ttl, held.lease.lease_id)
            except (NotFound, PermissionDenied):
                self._issue(path, held, reason="lease revoked")
                return True
        return False

    def reissue(self, path: str, reason: str) -> Lease:
        """Issue a new lease of ``path`` now (its credentials were refused); notifies subscribers."""
        with self._lock_of(path):
            return self._issue(path, self._held.get(path), reason=reason)

    def _renew_at(self, held: _Held) -> float:
        span = held.lease.expires_at - held.valid_from
        return held.valid_from + span * (1.0 - self._service.settings.renew_margin)

    def _renew_or_reissue(self, path: str, held: _Held, now: float) -> Lease:
        service = self._service
        lease = held.lease
        if lease.renewable:
            try:
                ttl = float(service.call(service.provider.renew, lease.lease_id, None))
            except ServiceUnavailable:
                if now < lease.expires_at:
                    return lease  # the backend is down: the lease still holds
                raise
            except (NotFound, PermissionDenied) as exc:
                service.emit("secrets.renewal_refused", {"path": path, "lease_id": lease.lease_id, "error": exc.code})
                return self._issue(path, held, reason="renewal refused")
            if now + ttl > lease.expires_at + 1.0:
                renewed = Lease(path, lease.lease_id, lease.data, lease.issued_at, now + ttl, lease.renewable)
                self._held[path] = _Held(renewed, now)
                service.emit("secrets.lease_renewed", {"path": path, "lease_id": lease.lease_id, "ttl_s": ttl})
                service.count("esf.secrets.renewals", {"path": path})
                self._expiry_gauges(path, ttl, now + ttl)
                return renewed
            # The lease reached its maximum TTL: a renewal no longer extends it.
        try:
            return self._issue(path, held, reason="lease at its maximum TTL")
        except ServiceUnavailable:
            if now < lease.expires_at:
                return lease
            raise

    def _issue(self, path: str, held: _Held | None, *, reason: str) -> Lease:
        service = self._service
        data: SecretData = service.call(service.provider.issue, path)
        now = service._clock()
        duration = float(data.lease_duration_s or 0.0)
        if not data.lease_id or duration <= 0:
            from ..errors import ValidationError

            raise ValidationError(f"secret {path!r} is not a dynamic secret (no lease); read it with get()")
        lease = Lease(path, data.lease_id, data.data, now, now + duration, data.renewable)
        self._held[path] = _Held(lease, now)
        service.keeper.ensure(wake=True)
        self._expiry_gauges(path, duration, now + duration)
        if held is None:
            service.emit("secrets.lease_issued", {"path": path, "lease_id": lease.lease_id, "ttl_s": duration})
        else:
            # Old connections keep the previous credentials until its lease ends: they drain, never cut.
            service.emit("secrets.lease_reissued", {"path": path, "lease_id": lease.lease_id,
                                                    "previous_lease_id": held.lease.lease_id, "reason": reason,
                                                    "ttl_s": duration})
            service.rotated(SecretChange(path, "lease", lease_id=lease.lease_id,
                                         previous_lease_id=held.lease.lease_id, details={"reason": reason}))
        return lease

    def refresh_all(self) -> dict[str, Any]:
        """Check every held lease with the backend: renew those due, issue again those revoked."""
        report: dict[str, Any] = {"checked": [], "renewed": [], "reissued": [], "failed": {}, "unreachable": 0}
        service = self._service
        for path in sorted(self._held):
            held = self._held[path]
            try:
                with self._lock_of(path):
                    held = self._held[path]
                    try:
                        left = float(service.call(service.provider.lease_ttl, held.lease.lease_id))
                    except (NotFound, PermissionDenied):
                        self._issue(path, held, reason="lease revoked")
                        report["reissued"].append(path)
                        continue
                    now = service._clock()
                    if left + 1.0 < held.lease.expires_at - now:
                        # Shortened by the backend: believe the backend.
                        short = Lease(path, held.lease.lease_id, held.lease.data, held.lease.issued_at, now + left,
                                      held.lease.renewable)
                        held = _Held(short, held.valid_from)
                        self._held[path] = held
                    self._expiry_gauges(path, left, now + left)
                    if now >= self._renew_at(held):
                        before = held.lease.lease_id
                        after = self._renew_or_reissue(path, held, now)
                        report["reissued" if after.lease_id != before else "renewed"].append(path)
                report["checked"].append(path)
            except EsfError as exc:
                report["failed"][path] = exc.code
                report["unreachable"] += isinstance(exc, ServiceUnavailable)
                service.emit("secrets.failed", {"path": path, "operation": "lease", "error": exc.code})
                service.count("esf.secrets.failures", {"operation": "lease"})
        return report

    def _expiry_gauges(self, path: str, left_s: float, expires_at: float) -> None:
        # Seconds left as of the last check, and the end as an epoch time, which stays right between checks
        # (alert on ``esf_secrets_expires_at_s - time() < …``).
        self._service.gauge("esf.secrets.expires_in_s", {"path": path}, left_s)
        self._service.gauge("esf.secrets.expires_at_s", {"path": path}, expires_at)

    def next_renewal_in(self) -> float | None:
        """Seconds until the earliest renewal point of the held leases (``None``: no lease)."""
        now = self._service._clock()
        due = [self._renew_at(h) - now for h in list(self._held.values())]
        return min(due) if due else None

    def describe(self, now: float | None = None) -> list[dict[str, Any]]:
        """Held leases: path, lease id, seconds to expiry, renewable.

        Parameters:
            now: epoch seconds to count the expiries from (default: the service's clock, the one the
                leases' ends were computed with).
        """
        if now is None:
            now = self._service._clock()
        return [{"path": p, "lease_id": h.lease.lease_id, "expires_in_s": round(h.lease.expires_at - now, 3),
                 "renewable": h.lease.renewable, "issued_at": h.lease.issued_at}
                for p, h in sorted(self._held.items())]
