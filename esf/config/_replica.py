"""The per-process replica: an immutable snapshot kept in step with the store, and its subscribers."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from ..errors import NotFound, ServiceUnavailable, ValidationError
from ..secrets._refs import has_reference
from ..settings import ConfigSettings
from ._batch import copy_document, restore_secrets
from ._paths import leaf_diff, overlaps, path_error
from ._schema import Rules
from ._snapshot import NOT_FOUND, LocalSnapshotFile, PathCache, Snapshot
from ._types import Change, ChangeEvent, ConfigStore, NodeStatus, StoredConfig

__all__ = ["MISSING", "Replica", "Subscriber", "Subscription", "TestHooks"]

log = logging.getLogger("esf.config")

#: A subscriber: called once per applied version with the changes under its prefix.
Subscriber = Callable[[ChangeEvent], None]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: ``get(path)`` without a default raises ``NotFound`` for an absent path.
MISSING: Any = _Missing()

#: Shortest time between two heartbeats asked for by applied versions (seconds).
MIN_BEAT_GAP_S = 0.02

#: Longest gap replayed version by version from the history (see ``_catch_up``).
MAX_CATCH_UP = 100


@dataclass
class TestHooks:
    """Fault injection for tests: never set these in production."""

    #: Ignore every notification from the store (reconciliation still runs).
    drop_notifications: bool = False
    #: Apply no new version from any source (heartbeats go on, showing the old version).
    freeze: bool = False


class Subscription:
    """Handle returned by ``subscribe``: call it (or ``close()``) to unsubscribe."""

    def __init__(self, replica: Replica, token: int) -> None:
        self._replica = replica
        self._token = token

    def close(self) -> None:
        self._replica._subscribers.pop(self._token, None)

    def __call__(self) -> None:
        self.close()


class Replica:
    """The configuration as this process sees it: an immutable snapshot, kept in step with a store.

    Reads never touch the store. A background thread beats and reconciles;
    the store's notification thread triggers resynchronisation. Base class of
    :class:`ConfigService`, which adds writes, history and health.
    """

    def __init__(
        self,
        store: ConfigStore,
        *,
        settings: ConfigSettings | None,
        data_dir: str | Path | None,
        node_id: str | None,
        rules: Rules,
    ) -> None:
        self._store = store
        self._settings = settings or ConfigSettings()
        self._rules = rules
        self._host = socket.gethostname()
        self.node_id = node_id or f"{self._host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._started_at = time.time()
        self.test_hooks = TestHooks()
        #: Turns values holding ``secret://path#key`` references into secrets on read (set by the Foundation).
        self.secret_resolver: Callable[[Any], Any] | None = None
        #: Event counts since start, for telemetry: ``notifications`` received, ``gaps`` seen
        #: (a notification more than one version ahead), ``reloads`` of the document,
        #: ``reconciled`` (reloads found by polling or reconciliation rather than a notification),
        #: ``replayed`` versions from the history, ``store_errors``, ``commits``, ``conflicts`` retried.
        self.counters: dict[str, int] = dict.fromkeys(
            ("notifications", "gaps", "reloads", "reconciled", "replayed", "store_errors", "commits", "conflicts"), 0
        )
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

    # -- reading ---------------------------------------------------------------

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
        resolver = self.secret_resolver
        if resolver is not None and has_reference(value):
            # A ``secret://`` reference is resolved at each read (it stays a reference in the store,
            # the history and the events); keeping it off the fast path lets rotations show at once.
            cache.values.pop(path, None)
            return resolver(value)
        return value

    @property
    def version(self) -> int:
        """The version of the snapshot this process serves (0: nothing was ever written)."""
        return self._snap.version

    # -- subscribers -----------------------------------------------------------

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

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start notifications, reconciliation and heartbeats (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"esf-config-{self.node_id}", daemon=True)
        self._thread.start()
        self._store.watch(self._on_notify)

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        last_beat = 0.0
        next_reconcile = time.monotonic() + s.reconcile_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            if self._beat_pending:
                # A beat right after applying a version, but at most one per MIN_BEAT_GAP_S
                # during a burst of updates.
                next_beat = min(next_beat, last_beat + MIN_BEAT_GAP_S)
            if now >= next_beat:
                self._beat_pending = False
                self._beat()
                last_beat = now
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

    # -- keeping in step -------------------------------------------------------

    def _on_notify(self, version: int | None) -> None:
        if self.test_hooks.drop_notifications:
            return
        self.counters["notifications"] += 1
        if version is not None and version <= self._snap.version:
            return
        if version is not None and version > self._snap.version + 1:
            self.counters["gaps"] += 1
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
        if stored.version > before:
            self.counters["reloads"] += 1
            if hint is None:
                self.counters["reconciled"] += 1
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
            self.counters["replayed"] += 1
            document = copy_document(entry.document)
            restore_secrets(document, self._rules.secret | set(entry.secrets), stored.document)
            self._apply(StoredConfig(entry.version, document, frozenset(entry.secrets)))

    def _mark_down(self, exc: Exception) -> None:
        if self._store_ok or self._last_error is None:
            log.warning("config: store unreachable, serving the last snapshot: %s", exc)
        self._store_ok = False
        self._last_error = str(exc)
        self.counters["store_errors"] += 1

    def _mark_up(self) -> None:
        if not self._store_ok and self._last_error is not None:
            log.info("config: store reachable again; resynchronising")
        self._store_ok = True
        self._last_error = None

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
