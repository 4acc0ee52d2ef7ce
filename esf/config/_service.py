"""ConfigService: the per-process view of the configuration (``fnd.config``)."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import (
    ConcurrencyConflict,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    Timeout,
    ValidationError,
    describe_errors,
)
from ..settings import ConfigSettings
from ._batch import Denied, apply_changes, check_batch, copy_document, make_entry, restore_secrets
from ._paths import deep_merge, is_under, leaf_diff, path_error
from ._replica import Replica
from ._schema import Rules, SchemaSource, Validator
from ._types import (
    Change,
    Commit,
    ConfigHealth,
    ConfigStore,
    HistoryEntry,
    NodeStatus,
    StoredConfig,
)

if TYPE_CHECKING:
    from ..telemetry import Telemetry

__all__ = ["AuditSink", "ConfigService"]

log = logging.getLogger("esf.config")

#: Receives one JSON-safe dict per committed change (``type == "config.updated"``: version,
#: previous_version, actor, node, at, changes (redacted), rollback_of, secrets, event_id) or refused
#: change (``type == "config.denied"``: paths, actor, node, at, reason, event_id). ``event_id`` is
#: stable per (store, version) for updates. Must not block; its errors are logged and ignored.
AuditSink = Callable[[dict[str, Any]], None]


#: Attempts of a batch without ``expected_version`` that keeps losing the race to other writers.
MAX_WRITE_ATTEMPTS = 200


class ConfigService(Replica):
    """The configuration as this process sees it: an immutable snapshot, kept in step with a store.

    Reads (``get``, ``version``) never touch the store. Writes validate the
    whole batch, then commit it atomically on the store with compare-and-set,
    and apply it locally before returning. Other processes apply it on the
    store's notification, or at the latest on the next reconciliation.

    Parameters:
        store: the source of truth (``RedisConfigStore``, ``SqliteConfigStore`` …); owned and closed by the service.
        settings: ``Settings.config``.
        data_dir: where the last snapshot is kept on local disk (``None``: not kept).
        node_id: this process's name in heartbeats (default ``<host>:<pid>:<random>``).
        audit: optional sink for ``config.updated`` / ``config.denied`` payloads.
        esf_defaults: read-only defaults published under ``esf`` (ESF's own settings).
        start: start the background thread and notifications (tests may start later with ``start()``).
        telemetry: returns the telemetry service, or None (no metrics); :meth:`health` records the
            number of diverged processes as the ``esf.config.diverged_nodes`` gauge.
    """

    def __init__(
        self,
        store: ConfigStore,
        *,
        settings: ConfigSettings | None = None,
        data_dir: str | Path | None = None,
        node_id: str | None = None,
        audit: AuditSink | None = None,
        esf_defaults: Mapping[str, Any] | None = None,
        start: bool = True,
        telemetry: Callable[[], Telemetry] | None = None,
    ) -> None:
        rules = Rules()
        rules.read_only.add("esf")
        if esf_defaults:
            rules.defaults = {"esf": dict(esf_defaults)}
        self._audit = audit
        self._telemetry = telemetry
        super().__init__(store, settings=settings, data_dir=data_dir, node_id=node_id, rules=rules)
        if start:
            self.start()

    # -- writing ---------------------------------------------------------------

    def update(
        self, path: str, value: Any, *, expected_version: int | None = None, actor: str | None = None
    ) -> int:
        """Set one path; see :meth:`update_batch`."""
        if not isinstance(path, str):
            raise ValidationError(f"a configuration path is a string, got {type(path).__name__}",
                                  errors={"(path)": "not a string"})
        return self.update_batch({path: value}, expected_version=expected_version, actor=actor)

    def update_batch(
        self,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        wait: Literal["all"] | None = None,
        timeout: float = 10.0,
        actor: str | None = None,
    ) -> int:
        """Validate every change, then apply them all in one atomic step; the version rises by one.

        Parameters:
            changes: ``path -> value`` (JSON values; :data:`DELETE` removes a path; an
                :class:`~esf.Secret` value makes the path secret). Paths may not overlap.
            expected_version: compare-and-set: apply only if the store is at this version.
                Without it, a batch that loses a race is re-validated against the newer
                document and retried.
            wait: ``"all"``: return only when every live process has applied the new version.
            timeout: seconds for the whole call, including ``wait``.
            actor: who makes the change (history, audit, restricted paths).

        Raises:
            ValidationError: a path or value is invalid; ``errors`` maps each bad path to its problem.
            PermissionDenied: a path is read-only, or restricted to other actors.
            ConcurrencyConflict: ``expected_version`` is not the store's version.
            ServiceUnavailable: the store cannot be reached; nothing was applied.
            Timeout: ``wait="all"`` and some process did not apply in time (the update *is* committed).

        Returns:
            The new version.
        """
        if wait not in (None, "all"):
            raise ValidationError(f"wait must be None or 'all', not {wait!r}", errors={"wait": "unsupported"})
        deadline = time.monotonic() + timeout
        try:
            prepared, secret_paths = check_batch(changes, self._rules, actor, self._settings.max_value_bytes)
        except Denied as exc:
            self._audit_denied(exc.paths, actor, exc.reason)
            raise

        def build(base: StoredConfig) -> tuple[dict[str, Any], frozenset[str]]:
            return apply_changes(base, prepared, secret_paths)

        version = self._write(build, list(prepared), expected_version, actor, None, deadline)
        if wait == "all":
            self.wait_applied(version, timeout=max(0.0, deadline - time.monotonic()))
        return version

    def validate_batch(self, changes: Mapping[str, Any], *, actor: str | None = None) -> None:
        """Check ``changes`` as :meth:`update_batch` would against this process's snapshot, writing nothing:
        paths, permissions, values, registered schemas and validators (flag definitions among them).

        A batch valid now may still be refused when it is applied later (the document moved on).

        Raises:
            ValidationError: a path or value is invalid, or a schema or validator refuses the document the
                batch would produce (``errors`` maps each bad path to its problem).
            PermissionDenied: a path is read-only, or restricted to other actors.
        """
        prepared, secret_paths = check_batch(changes, self._rules, actor, self._settings.max_value_bytes)
        document, _ = apply_changes(self._snap.stored, prepared, secret_paths)
        problems = self._rules.validate(deep_merge(self._rules.defaults, document), list(prepared))
        if problems:
            raise ValidationError(f"rejected: {describe_errors(problems)}", errors=problems)

    def rollback(self, version: int, *, actor: str | None = None, expected_version: int | None = None) -> int:
        """Write a new version whose document equals that of ``version``.

        Secret values are kept only redacted in history, so a secret path that
        exists in both keeps its current value, and one that no longer exists
        is left out (logged).

        Raises:
            NotFound: ``version`` is not (or no longer) in the history.
            ValidationError, PermissionDenied, ConcurrencyConflict, ServiceUnavailable: as ``update_batch``.

        Returns:
            The new version.
        """
        target = self._entry_at(version)
        deadline = time.monotonic() + 30.0

        def build(base: StoredConfig) -> tuple[dict[str, Any], frozenset[str]]:
            document = copy_document(target.document)
            restored, dropped = restore_secrets(document, self._rules.secret | set(target.secrets), base.document)
            for path in dropped:
                log.warning("config rollback to %d: secret %s no longer exists; left out", version, path)
            secrets = {s for s in base.secrets if any(is_under(s, p) for p in restored)}
            return document, frozenset(secrets)

        return self._write(build, None, expected_version, actor, version, deadline)

    # -- history ---------------------------------------------------------------

    def history(self, limit: int = 50) -> list[HistoryEntry]:
        """The newest ``limit`` versions, newest first (secrets redacted).

        Raises:
            ServiceUnavailable: the store cannot be reached.
        """
        return self._store.history(max(1, int(limit)))

    def diff(self, v1: int, v2: int) -> tuple[Change, ...]:
        """Leaf-by-leaf differences from version ``v1`` to version ``v2`` (secrets redacted).

        A secret whose value changed while its path stayed is not visible here
        (both sides are redacted); the history entries of the versions between show it.

        Raises:
            NotFound: a version is not (or no longer) in the history.
        """
        a = self._entry_at(v1).document
        b = self._entry_at(v2).document
        return tuple(Change(p, o, n) for p, o, n in leaf_diff(a, b))

    def _entry_at(self, version: int) -> HistoryEntry:
        if version == 0:
            return HistoryEntry(0, 0.0, None, None, (), {})
        entry = self._store.entry(int(version))
        if entry is None:
            raise NotFound(f"version {version} is not in the configuration history", version=version)
        return entry

    # -- schema ----------------------------------------------------------------

    def register_schema(
        self,
        schema: SchemaSource | None = None,
        *,
        prefix: str = "",
        defaults: Mapping[str, Any] | None = None,
        read_only: Iterable[str] = (),
        restricted: Mapping[str, Collection[str]] | None = None,
        secret: Iterable[str] = (),
        writable: Iterable[str] | None = None,
    ) -> None:
        """Register a schema (pydantic model class or JSON Schema) for the subtree at ``prefix``, and path rules.

        Every later batch is validated against every schema whose subtree it
        touches. The schema's ``default`` values become defaults under the
        stored values; ``readOnly`` properties become read-only paths and
        ``writeOnly`` ones (pydantic ``SecretStr``) secret paths. A closed
        schema (``additionalProperties: false``, pydantic ``extra="forbid"``)
        rejects unknown paths. Rule paths are relative to ``prefix``.

        Parameters:
            restricted: ``path -> actors`` allowed to change it; others get ``PermissionDenied``.
            read_only: paths nobody may change through the service (``esf`` always is).
            secret: paths whose values are redacted everywhere but the live document.
            writable: an allowlist of subtrees that may be changed; once one is registered,
                every other path is denied by default (``PermissionDenied``, audited).

        Raises:
            ValidationError: the schema or a path is invalid.
        """
        with self._lock:
            self._rules.add(
                schema,
                prefix=prefix,
                defaults=defaults,
                read_only=read_only,
                restricted=restricted,
                secret=secret,
                writable=writable,
            )
            self._install(self._snap.stored)

    def register_validator(self, validator: Validator, *, prefixes: Iterable[str]) -> None:
        """Check every later batch that changes a path at, under or above one of ``prefixes`` with ``validator``.

        ``validator(document, changed)`` gets the document the batch would produce
        (defaults included) and the changed paths, and returns ``{path: problem}``;
        any problem rejects the whole batch (nothing is written). It runs for
        rollbacks too. It must not raise, block or touch the store.

        Raises:
            ValidationError: a prefix is not a valid path.
        """
        prefixes = tuple(prefixes)
        bad = {p: problem for p in prefixes if (problem := path_error(p)) is not None}
        if bad or not prefixes:
            raise ValidationError("invalid validator prefixes", errors=bad or {"prefixes": "none given"})
        with self._lock:
            self._rules.validators.append((prefixes, validator))
    # -- deferred batches (the esf.config.apply_batch service task) ------------------

    #: Set by the Foundation (an ``esf.config._deferred.DeferredBatches``): deferred batches need its jobs.
    deferred: Any = None

    def update_batch_async(
        self, changes: Mapping[str, Any], *, expected_version: int | None = None, actor: str | None = None
    ) -> Any:
        """Check ``changes`` now (paths, permissions, JSON values) and apply them on a worker.

        Raises:
            ValidationError: bad paths or values; a secret or ``DELETE`` value (neither travels in a task).
            PermissionDenied: read-only or restricted paths. Nothing is sent on any error.
            ServiceUnavailable: no Foundation jobs (a service built on its own), or the broker is unreachable.

        Returns:
            the job's ``JobHandle``: ``wait(timeout)`` returns ``{"version": N}``, or raises ``JobFailed``
            (``remote_type`` ``ConcurrencyConflict`` …) when the batch was refused.
        """
        return self._deferred().update_batch_async(changes, expected_version=expected_version, actor=actor)

    def schedule_batch(
        self, changes: Mapping[str, Any], *, at: Any, expected_version: int | None = None, actor: str | None = None
    ) -> Any:
        """Apply ``changes`` at ``at`` (an aware ``datetime``) through an ETA task with compare-and-set.

        A batch refused at that time (``expected_version`` no longer current, a schema error) is
        dead-lettered to ``esf.config.dlq`` with its error; ``esf config scheduled`` lists, shows
        and cancels pending batches.

        Raises:
            ValidationError, PermissionDenied, ServiceUnavailable: as :meth:`update_batch_async`; ``at`` naive.

        Returns:
            the ``ScheduledBatch`` (``id``, ``at``, ``state`` …).
        """
        return self._deferred().schedule_batch(changes, at=at, expected_version=expected_version, actor=actor)

    def _deferred(self) -> Any:
        if self.deferred is None:
            raise ServiceUnavailable("deferred configuration batches need a Foundation (fnd.config), whose jobs "
                                     "apply them")
        return self.deferred

    # -- nodes and health ------------------------------------------------------

    def nodes(self) -> list[NodeStatus]:
        """Live processes using this store, with the version each has applied.

        Raises:
            ServiceUnavailable: the store cannot be reached.
        """
        return self._store.nodes(self._settings.node_ttl_s)

    def wait_applied(self, version: int, *, timeout: float = 10.0) -> None:
        """Block until every live process has applied ``version`` (or a later one).

        Raises:
            Timeout: some live process has not applied it in time; the message names them.
            ServiceUnavailable: the store cannot be reached.
        """
        self._beat()  # our own heartbeat shows the new version before we look at the others'
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            lagging = [n for n in self.nodes() if n.version < version and n.node_id != self.node_id]
            if self.version < version:
                lagging.append(self._status())
            if not lagging:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{n.node_id} (pid {n.pid}, at version {n.version})" for n in lagging)
                raise Timeout(
                    f"version {version} is committed but not yet applied by: {names}",
                    version=version,
                    nodes=[n.node_id for n in lagging],
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.1)

    def health(self) -> ConfigHealth:
        """``ok``, or ``degraded`` with reasons: store unreachable, this process behind, other processes diverged."""
        reasons: list[str] = []
        store_version: int | None = None
        diverged: list[NodeStatus] = []
        try:
            store_version = self._store.version()
            reachable = True
        except ServiceUnavailable as exc:
            reachable = False
            reasons.append(f"store unreachable ({exc}); serving version {self.version} from {self._source}")
        if reachable and store_version is not None:
            if store_version > self.version:
                self._request_sync()
                reasons.append(f"this process serves version {self.version}; the store has {store_version}")
            elif store_version < self.version:
                reasons.append(f"the store is at version {store_version}, behind this process ({self.version})")
            try:
                diverged = self._diverged(store_version)
            except ServiceUnavailable:
                diverged = []
            if diverged:
                reasons.append("diverged: " + ", ".join(f"{n.node_id} at {n.version}" for n in diverged))
            self._record_diverged(len(diverged))
        return ConfigHealth(
            status="ok" if not reasons else "degraded",
            version=self.version,
            store_version=store_version,
            store_reachable=reachable,
            source=self._source,
            last_sync_at=self._last_sync,
            diverged=tuple(diverged),
            reasons=tuple(reasons),
        )

    def _record_diverged(self, count: int) -> None:
        """The ``esf.config.diverged_nodes`` gauge: processes stuck on an older version than the store's."""
        if self._telemetry is None:
            return
        try:
            self._telemetry().gauge("esf.config.diverged_nodes").set(count)
        except Exception:
            log.debug("the diverged-nodes gauge could not be recorded", exc_info=True)

    def _diverged(self, store_version: int) -> list[NodeStatus]:
        limit = time.time() - self._settings.diverged_after_s
        out = []
        for node in self.nodes():
            if node.version >= store_version:
                continue
            nxt = self._store.entry(node.version + 1)
            if nxt is None or nxt.at < limit:
                out.append(node)
        return out

    # -- write path ------------------------------------------------------------

    def _write(
        self,
        build: Callable[[StoredConfig], tuple[dict[str, Any], frozenset[str]]],
        paths: list[str] | None,
        expected_version: int | None,
        actor: str | None,
        rollback_of: int | None,
        deadline: float,
    ) -> int:
        base = self._snap.stored
        fresh = not (self._store_ok and self._source == "store")
        if expected_version is not None and base.version != expected_version:
            fresh = True
        for attempt in range(MAX_WRITE_ATTEMPTS):
            if fresh:
                base = self._store.read()
                self._mark_up()
            if expected_version is not None and base.version != expected_version:
                raise ConcurrencyConflict(
                    f"expected version {expected_version}, the store is at {base.version}",
                    expected=expected_version,
                    actual=base.version,
                )
            document, secrets = build(base)
            entry, diff = make_entry(
                base, document, secrets, self._rules, actor=actor, node=self.node_id, rollback_of=rollback_of
            )
            changed = paths if paths is not None else [p for p, _, _ in diff]
            if paths is None:
                protected = self._rules.read_only_paths(changed) + self._rules.denied_paths(changed, actor)
                if protected:
                    self._audit_denied(protected, actor, "read-only or restricted")
                    raise PermissionDenied(
                        f"rollback would change protected paths: {', '.join(protected)}", paths=protected
                    )
            effective = deep_merge(self._rules.defaults, document)
            problems = self._rules.validate(effective, changed) if changed else {}
            if problems:
                raise ValidationError(f"rejected: {describe_errors(problems)}", errors=problems)
            try:
                version = self._store.commit(Commit(base.version, document, secrets, entry))
            except ConcurrencyConflict as exc:
                if expected_version is not None:
                    raise
                self.counters["conflicts"] += 1
                fresh = True
                if time.monotonic() > deadline:
                    raise Timeout(f"gave up after {attempt + 1} attempts: other writers kept winning") from exc
                time.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))
                continue
            except ServiceUnavailable as exc:
                self._mark_down(exc)
                raise
            self.counters["commits"] += 1
            self._apply(StoredConfig(version, document, secrets))
            log.info("config: version %d committed by %s (%d paths changed)", version, actor, len(diff))
            self._audit_updated(entry, base.version)
            return version
        raise Timeout(f"gave up after {MAX_WRITE_ATTEMPTS} attempts: other writers kept winning")

    def _audit_updated(self, entry: HistoryEntry, previous: int) -> None:
        payload = entry.to_dict(with_document=False)
        # A stable id per (store, version): appending the audit event twice stores it once.
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"esf-config:{self._store.identity}#{entry.version}"))
        payload.update(type="config.updated", previous_version=previous, event_id=event_id)
        self._emit(payload)

    def _audit_denied(self, paths: list[str], actor: str | None, reason: str) -> None:
        self._emit(
            {
                "type": "config.denied",
                "event_id": str(uuid.uuid4()),
                "paths": paths,
                "actor": actor,
                "node": self.node_id,
                "at": time.time(),
                "reason": reason,
            }
        )

    def _emit(self, payload: dict[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            self._audit(payload)
        except Exception:
            log.exception("config: the audit sink failed (the change itself is committed)")
