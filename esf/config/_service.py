"""ConfigService: the per-process view of the configuration (``fnd.config``)."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from ._paths import DELETE, deep_merge, is_under, leaf_diff, overlaps, path_error, set_path, thaw, thaw_plain
from ._schema import Rules, SchemaSource, redact, redact_value
from ._snapshot import NOT_FOUND, LocalSnapshotFile, PathCache, Snapshot
from ._types import (
    REDACTED,
    Change,
    ChangeEvent,
    Commit,
    ConfigHealth,
    ConfigStore,
    HistoryEntry,
    NodeStatus,
    StoredConfig,
)

__all__ = ["MISSING", "AuditSink", "ConfigService", "Subscription", "TestHooks"]

log = logging.getLogger("esf.config")

#: Receives one JSON-safe dict per committed change (``type == "config.updated"``) or refused
#: change (``type == "config.denied"``). Must not block; its errors are logged and ignored.
AuditSink = Callable[[dict[str, Any]], None]
#: A subscriber: called once per applied version with the changes under its prefix.
Subscriber = Callable[[ChangeEvent], None]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: ``get(path)`` without a default raises ``NotFound`` for an absent path.
MISSING: Any = _Missing()

#: Longest gap replayed version by version from the history (see ``_catch_up``).
MAX_CATCH_UP = 100

#: Attempts of a batch without ``expected_version`` that keeps losing the race to other writers.
MAX_WRITE_ATTEMPTS = 200


@dataclass
class TestHooks:
    """Fault injection for tests: never set these in production."""

    #: Ignore every notification from the store (reconciliation still runs).
    drop_notifications: bool = False
    #: Apply no new version from any source (heartbeats go on, showing the old version).
    freeze: bool = False


class Subscription:
    """Handle returned by ``subscribe``: call it (or ``close()``) to unsubscribe."""

    def __init__(self, service: ConfigService, token: int) -> None:
        self._service = service
        self._token = token

    def close(self) -> None:
        self._service._subscribers.pop(self._token, None)

    def __call__(self) -> None:
        self.close()


class ConfigService:
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
    ) -> None:
        self._store = store
        self._settings = settings or ConfigSettings()
        self._audit = audit
        self._host = socket.gethostname()
        self.node_id = node_id or f"{self._host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._started_at = time.time()
        self.test_hooks = TestHooks()
        self._rules = Rules()
        self._rules.read_only.add("esf")
        if esf_defaults:
            self._rules.defaults = {"esf": dict(esf_defaults)}
        self._local = LocalSnapshotFile(Path(data_dir), store.identity) if data_dir is not None else None
        self._lock = threading.RLock()  # guards swaps and subscriber delivery (in version order)
        self._subscribers: dict[int, tuple[str, Subscriber]] = {}
        self._next_token = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._beat_pending = False
        self._sync_pending = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._store_ok = False
        self._last_error: str | None = None
        self._last_sync: float | None = None
        self._source: Literal["store", "local-snapshot", "empty"] = "empty"
        self._install(StoredConfig(0, {}))
        self._initial_load()
        if start:
            self.start()

    # -- reading ----------------------------------------------------------

    def get(self, path: str | None = None, default: Any = MISSING) -> Any:
        """The value at ``path`` (the whole tree when ``None``) in the current snapshot.

        The value never changes under the caller: mappings are read-only
        (``types.MappingProxyType``), lists are tuples, secrets are
        :class:`~esf.Secret`. Defaults registered with the schema apply.

        Raises:
            NotFound: nothing at ``path`` and no ``default`` given.
            ValidationError: ``path`` is malformed.
        """
        # Hot path: one attribute and one dict lookup (a plain method specialises best on 3.11+;
        # a closure stored on the instance measured slower).
        try:
            return self._values[path]
        except (KeyError, TypeError):
            return self._get_slow(self._cache, path, default)

    def _get_slow(self, cache: PathCache, path: Any, default: Any) -> Any:
        problem = path_error(path) if path is not None else None
        if problem is not None:
            raise ValidationError(f"invalid path {path!r}: {problem}", errors={str(path): problem})
        value = cache.resolve(path, tuple(path.split(".")))
        if value is NOT_FOUND:
            if default is MISSING:
                raise NotFound(f"no configuration value at {path!r}", path=path)
            return default
        return value

    @property
    def version(self) -> int:
        """The version of the snapshot this process serves (0: nothing was ever written)."""
        return self._snap.version

    # -- writing ----------------------------------------------------------

    def update(
        self, path: str, value: Any, *, expected_version: int | None = None, actor: str | None = None
    ) -> int:
        """Set one path; see :meth:`update_batch`."""
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
        deadline = time.monotonic() + timeout
        prepared, secret_paths = self._prepare(changes, actor)

        def build(base: StoredConfig) -> tuple[dict[str, Any], frozenset[str]]:
            document = json.loads(json.dumps(base.document))
            secrets = set(base.secrets)
            for path, value in prepared.items():
                set_path(document, tuple(path.split(".")), value)
                secrets = {s for s in secrets if not is_under(s, path)}
            secrets |= secret_paths
            return document, frozenset(secrets)

        version = self._write(build, list(prepared), expected_version, actor, None, deadline)
        if wait == "all":
            self.wait_applied(version, timeout=max(0.0, deadline - time.monotonic()))
        elif wait is not None:
            raise ValidationError(f"wait must be None or 'all', not {wait!r}", errors={"wait": "unsupported"})
        return version

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
            document = json.loads(json.dumps(thaw_plain(target.document)))
            secrets: set[str] = set()
            prefixes = self._rules.secret | set(target.secrets)
            for path in _redacted_paths(document, "", prefixes):
                try:
                    current = base.document
                    for part in path.split("."):
                        current = current[part]
                    set_path(document, tuple(path.split(".")), current)
                    secrets |= {s for s in base.secrets if is_under(s, path)}
                except (KeyError, TypeError):
                    log.warning("config rollback to %d: secret %s no longer exists; left out", version, path)
                    set_path(document, tuple(path.split(".")), DELETE)
            return document, frozenset(secrets)

        return self._write(build, None, expected_version, actor, version, deadline)

    # -- history ----------------------------------------------------------

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

    # -- subscribers --------------------------------------------------------

    def subscribe(self, prefix: str, callback: Subscriber) -> Subscription:
        """Call ``callback(ChangeEvent)`` once per applied version that changes a path under ``prefix``.

        The call comes after the snapshot swap (``get`` already returns the new
        values), from the thread that applied it, in version order. ``""``
        subscribes to everything. Exceptions from the callback are logged.

        Raises:
            ValidationError: ``prefix`` is malformed.

        Returns:
            A handle; call it to unsubscribe.
        """
        if prefix:
            problem = path_error(prefix)
            if problem:
                raise ValidationError(f"invalid prefix {prefix!r}: {problem}", errors={prefix: problem})
        with self._lock:
            self._next_token += 1
            self._subscribers[self._next_token] = (prefix, callback)
            return Subscription(self, self._next_token)

    # -- schema -----------------------------------------------------------

    def register_schema(
        self,
        schema: SchemaSource | None = None,
        *,
        prefix: str = "",
        defaults: Mapping[str, Any] | None = None,
        read_only: Iterable[str] = (),
        restricted: Mapping[str, Collection[str]] | None = None,
        secret: Iterable[str] = (),
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

        Raises:
            ValidationError: the schema or a path is invalid.
        """
        with self._lock:
            self._rules.add(
                schema, prefix=prefix, defaults=defaults, read_only=read_only, restricted=restricted, secret=secret
            )
            self._install(self._snap.stored)

    # -- nodes and health ---------------------------------------------------

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

    def close(self) -> None:
        """Stop the background work, remove this process's heartbeat and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self._store.forget(self.node_id)
        except ServiceUnavailable:
            pass
        self._store.close()

    def __enter__(self) -> ConfigService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start notifications, reconciliation and heartbeats (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"esf-config-{self.node_id}", daemon=True)
        self._thread.start()
        self._store.watch(self._on_notify)

    def _initial_load(self) -> None:
        try:
            stored = self._store.read()
        except ServiceUnavailable as exc:
            self._mark_down(exc)
            saved = self._local.load() if self._local is not None else None
            if saved is not None:
                log.warning("config: store unreachable; serving version %d from the local snapshot", saved.version)
                with self._lock:
                    self._install(saved)
                    self._source = "local-snapshot"
            return
        self._mark_up()
        self._last_sync = time.time()
        with self._lock:
            self._install(stored)
            self._source = "store"
        self._persist(stored)

    def _run(self) -> None:
        s = self._settings
        next_beat = 0.0
        next_reconcile = time.monotonic() + s.reconcile_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat or self._beat_pending:
                self._beat_pending = False
                self._beat()
                next_beat = now + s.heartbeat_interval_s
            if now >= next_reconcile or self._sync_pending:
                self._sync_pending = False
                self._sync(None)
                interval = s.reconcile_interval_s if self._store_ok else min(s.reconcile_interval_s, 1.0)
                next_reconcile = time.monotonic() + interval
            timeout = max(0.0, min(next_beat, next_reconcile) - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()

    def _request_beat(self) -> None:
        self._beat_pending = True
        self._wake.set()

    def _request_sync(self) -> None:
        self._sync_pending = True
        self._wake.set()

    def _beat(self) -> None:
        try:
            self._store.beat(self._status(), self._settings.node_ttl_s)
        except ServiceUnavailable as exc:
            self._mark_down(exc)

    def _status(self) -> NodeStatus:
        return NodeStatus(self.node_id, self._host, os.getpid(), self.version, time.time(), self._started_at)

    def _on_notify(self, version: int | None) -> None:
        if self.test_hooks.drop_notifications:
            return
        if version is not None and version <= self._snap.version:
            return
        self._sync(version)

    def _sync(self, hint: int | None) -> None:
        """Read the store and apply its document when it is newer than the snapshot."""
        before = self._snap.version
        try:
            if hint is None and self._store_ok and self._source == "store":
                if self._store.version() <= before:
                    self._last_sync = time.time()
                    return
            stored = self._store.read()
        except ServiceUnavailable as exc:
            self._mark_down(exc)
            return
        self._mark_up()
        self._last_sync = time.time()
        if stored.version < before and self._source == "store":
            # Older than what we served before reading: the store lost data (restored, flushed).
            # (Older than a version applied *during* the read is just a race with a local write.)
            log.warning("config: the store is at version %d, behind this process (%d)", stored.version, before)
            return
        self._catch_up(stored)
        self._apply(stored)

    def _catch_up(self, stored: StoredConfig) -> None:
        """Apply the versions between the snapshot and ``stored`` one by one, from the history.

        So that subscribers get one call per batch even when notifications were
        coalesced (polling) or lost. Intermediate versions hold secrets at
        their latest value (history keeps them redacted). Skipped when nobody
        subscribes, when the gap is over ``MAX_CATCH_UP`` versions, or when an
        entry is no longer kept: then one call covers the whole gap.
        """
        start = self._snap.version
        if not self._subscribers or self._source != "store" or not 1 < stored.version - start <= MAX_CATCH_UP:
            return
        try:
            entries = [self._store.entry(v) for v in range(start + 1, stored.version)]
        except ServiceUnavailable:
            return
        for entry in entries:
            if entry is None:
                return
        for entry in entries:
            assert entry is not None
            document = json.loads(json.dumps(thaw_plain(entry.document)))
            for path in _redacted_paths(document, "", self._rules.secret | set(entry.secrets)):
                try:
                    value: Any = stored.document
                    for part in path.split("."):
                        value = value[part]
                except (KeyError, TypeError):
                    value = DELETE
                set_path(document, tuple(path.split(".")), value)
            self._apply(StoredConfig(entry.version, document, frozenset(entry.secrets)))

    def _mark_down(self, exc: Exception) -> None:
        if self._store_ok or self._last_error is None:
            log.warning("config: store unreachable, serving the last snapshot: %s", exc)
        self._store_ok = False
        self._last_error = str(exc)

    def _mark_up(self) -> None:
        if not self._store_ok and self._last_error is not None:
            log.info("config: store reachable again; resynchronising")
        self._store_ok = True
        self._last_error = None

    # -- applying ---------------------------------------------------------------

    def _apply(self, stored: StoredConfig) -> None:
        """Swap in ``stored`` if newer (or if the snapshot did not come from the store), then notify."""
        with self._lock:
            if self.test_hooks.freeze:
                return
            old = self._snap
            if stored.version < old.version or (stored.version == old.version and self._source == "store"):
                return
            self._install(stored)
            self._source = "store"
            new = self._snap
            if self._subscribers:
                self._deliver(old, new)
        self._persist(stored)
        self._request_beat()

    def _install(self, stored: StoredConfig) -> None:
        snap = Snapshot(stored, self._rules.defaults, self._rules.secret)
        cache = PathCache(snap)
        self._cache = cache
        self._values = cache.values
        self._snap = snap

    def _deliver(self, old: Snapshot, new: Snapshot) -> None:
        changes = [Change(p, o, n) for p, o, n in leaf_diff(old.tree, new.tree)]
        for prefix, callback in list(self._subscribers.values()):
            mine = tuple(c for c in changes if overlaps(c.path, prefix))
            if not mine:
                continue
            try:
                callback(ChangeEvent(new.version, old.version, mine))
            except Exception:
                log.exception("config: subscriber %r for %r failed", callback, prefix)

    def _persist(self, stored: StoredConfig) -> None:
        if self._local is not None:
            self._local.save(stored, self._rules.secret)

    # -- write path --------------------------------------------------------------

    def _prepare(self, changes: Mapping[str, Any], actor: str | None) -> tuple[dict[str, Any], frozenset[str]]:
        if not isinstance(changes, Mapping) or not changes:
            raise ValidationError("a batch is a non-empty mapping of path -> value", errors={"(batch)": "empty"})
        errors: dict[str, str] = {}
        paths = list(changes)
        for path in paths:
            problem = path_error(path)
            if problem:
                errors[str(path)] = problem
        if errors:
            raise ValidationError(f"invalid paths: {describe_errors(errors)}", errors=errors)
        for i, a in enumerate(paths):
            for b in paths[i + 1 :]:
                if overlaps(a, b):
                    errors[b] = f"overlaps {a!r} in the same batch"
        if errors:
            raise ValidationError(f"invalid batch: {describe_errors(errors)}", errors=errors)
        ro = self._rules.read_only_paths(paths)
        if ro:
            self._audit_denied(ro, actor, "read-only")
            raise PermissionDenied(f"read-only paths: {', '.join(ro)}", paths=ro)
        denied = self._rules.denied_paths(paths, actor)
        if denied:
            self._audit_denied(denied, actor, "restricted")
            raise PermissionDenied(
                f"paths restricted to other actors than {actor!r}: {', '.join(denied)}", paths=denied
            )
        prepared: dict[str, Any] = {}
        secrets: set[str] = set()
        limit = self._settings.max_value_bytes
        for path, value in changes.items():
            if value is DELETE:
                prepared[path] = DELETE
                continue
            found: dict[str, str] = {}
            plain = thaw(value, path, found, secrets)
            if found:
                errors.update(found)
                continue
            size = len(json.dumps(plain, separators=(",", ":")).encode())
            if size > limit:
                errors[path] = f"value is {size} bytes; the limit is {limit} (config.max_value_bytes)"
                continue
            prepared[path] = plain
        if errors:
            raise ValidationError(f"invalid values: {describe_errors(errors)}", errors=errors)
        for path in list(prepared):
            prefixes = self._rules.secret | secrets
            for leaf, value in _leaves_at(path, prepared[path]):
                if any(is_under(leaf, p) for p in prefixes) and not isinstance(value, str):
                    errors[leaf] = "a secret value must be a string"
        if errors:
            raise ValidationError(f"invalid values: {describe_errors(errors)}", errors=errors)
        return prepared, frozenset(secrets)

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
            prefixes = self._rules.secret | base.secrets | secrets
            diff = leaf_diff(base.document, document)
            changed = paths if paths is not None else [p for p, _, _ in diff]
            if paths is None:
                ro = self._rules.read_only_paths(changed) + self._rules.denied_paths(changed, actor)
                if ro:
                    self._audit_denied(ro, actor, "read-only or restricted")
                    raise PermissionDenied(f"rollback would change protected paths: {', '.join(ro)}", paths=ro)
            effective = deep_merge(self._rules.defaults, document)
            problems = self._rules.validate(effective, changed) if changed else {}
            if problems:
                raise ValidationError(f"rejected: {describe_errors(problems)}", errors=problems)
            entry = HistoryEntry(
                version=base.version + 1,
                at=time.time(),
                actor=actor,
                node=self.node_id,
                changes=tuple(
                    Change(p, redact_value(p, o, prefixes), redact_value(p, n, prefixes)) for p, o, n in diff
                ),
                document=redact(document, prefixes),
                rollback_of=rollback_of,
                secrets=tuple(sorted(secrets)),
            )
            try:
                version = self._store.commit(Commit(base.version, document, secrets, entry))
            except ConcurrencyConflict as exc:
                if expected_version is not None:
                    raise
                fresh = True
                if time.monotonic() > deadline:
                    raise Timeout(f"gave up after {attempt + 1} attempts: other writers kept winning") from exc
                time.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))
                continue
            except ServiceUnavailable as exc:
                self._mark_down(exc)
                raise
            self._apply(StoredConfig(version, document, secrets))
            log.info("config: version %d committed by %s (%d paths changed)", version, actor, len(diff))
            self._audit_updated(entry, base.version)
            return version
        raise Timeout(f"gave up after {MAX_WRITE_ATTEMPTS} attempts: other writers kept winning")

    def _audit_updated(self, entry: HistoryEntry, previous: int) -> None:
        payload = entry.to_dict(with_document=False)
        payload.update(type="config.updated", previous_version=previous)
        self._emit(payload)

    def _audit_denied(self, paths: list[str], actor: str | None, reason: str) -> None:
        self._emit(
            {"type": "config.denied", "paths": paths, "actor": actor, "node": self.node_id, "at": time.time(),
             "reason": reason}
        )

    def _emit(self, payload: dict[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            self._audit(payload)
        except Exception:
            log.exception("config: the audit sink failed (the change itself is committed)")


def _leaves_at(path: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for key, sub in value.items():
            out.extend(_leaves_at(f"{path}.{key}", sub))
        return out
    return [(path, value)]


def _redacted_paths(tree: Mapping[str, Any], path: str, prefixes: Collection[str]) -> list[str]:
    """Paths of ``tree`` that hold a redacted secret (under a secret prefix and equal to ``REDACTED``)."""
    out: list[str] = []
    for key, value in tree.items():
        sub = f"{path}.{key}" if path else key
        if value == REDACTED and any(is_under(sub, p) for p in prefixes):
            out.append(sub)
        elif isinstance(value, Mapping):
            out.extend(_redacted_paths(value, sub, prefixes))
    return out
