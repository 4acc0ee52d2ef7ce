"""``TwoTierCache`` (``fnd.cache``) and its ``Namespace`` handles: the public face of the cache."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ValidationError
from ._bindings import EventInvalidator, InvalidationRule, KeyOf
from ._fetch import LoaderCall, fetch, run_loader
from ._service import CacheCore
from ._state import NsState
from ._types import DEFAULT_NAMESPACE, KEY_RE, CacheHealth, CacheStats, Codec, check_key

if TYPE_CHECKING:
    from ..config import ConfigService, Subscription
    from ..resilience import CircuitBreaker
    from ..telemetry import Telemetry

__all__ = ["Namespace", "TwoTierCache"]

log = logging.getLogger("esf.cache")

F = TypeVar("F", bound=Callable[..., Any])
_MISSING: Any = object()

#: Sends a refresh-ahead or warm request to a worker: ``(job name, keyword arguments)``.
Dispatch = Callable[[str, dict[str, Any]], Any]

REFRESH_JOB = "esf.cache.refresh"
WARM_JOB = "esf.cache.warm"


class Namespace:
    """The keys of one namespace (``fnd.cache.namespace("prices")``): the same calls as the cache, and
    ``bump()`` to invalidate all of them on every process at once."""

    def __init__(self, cache: TwoTierCache, state: NsState) -> None:
        self._cache = cache
        self._core = cache.core
        self._ns = state
        self.name = state.name

    def __repr__(self) -> str:
        return f"<cache Namespace {self.name!r}>"

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key`` (read-only: dicts and lists are frozen), or ``default``.

        Never raises because the shared tier is down (the in-process copy is served while it lasts).

        Raises:
            ValidationError: ``key`` is not a valid key.
        """
        entry = self._core.local_hit(self._ns, key)
        if entry is None:
            entry = self._core.read(self._ns, key)[0]
            if entry is None:
                return default
        return entry.value

    def put(self, key: str, value: Any, *, ttl: float | None = None, refresh_after: float | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds (default: the namespace's) and evict every other process's copy.

        Returns:
            False when the shared tier was unreachable: the value is in this process only, and the other
            processes' copies are evicted when the shared tier is back.

        Raises:
            ValidationError: a bad key or ttl; ``SerializationError`` when the codec cannot encode the
                value, ``PayloadTooLarge`` when it is over ``cache.max_value_bytes`` (nothing stored).
        """
        return self._core.put(self._ns, key, value, ttl_s=ttl, refresh_after_s=refresh_after)

    def delete(self, key: str) -> bool:
        """Remove ``key`` from both tiers and every process (False: this process only until Redis is back).

        Raises:
            ValidationError: ``key`` is not a valid key.
        """
        return self._core.delete(self._ns, key)

    def fetch(self, key: str, loader: Callable[[], Any] | str, *, ttl: float | None = None,
              refresh_after: float | None = None, stale_on_error: bool = False) -> Any:
        """The cached value of ``key``, else ``loader``'s, stored for ``ttl`` seconds.

        When several processes miss the same key at once, one runs the loader (a lock leased for
        ``cache.lock_lease_s``) and the others wait for its value (at most ``cache.stampede_wait_s``).

        Parameters:
            loader: a callable without arguments, or the name of a registered loader (called with ``key``).
            refresh_after: seconds after which a hit still returns the value but a worker reloads it
                (``esf.cache.refresh`` on the ``esf.cache`` queue); needs a registered loader.
            stale_on_error: when the loader raises, return the last value (expired up to
                ``cache.stale_grace_s`` ago) instead, if there is one.

        Raises:
            ValidationError: a bad key, ttl or refresh_after, an unknown loader name, or a loaded value
                that cannot be stored. Whatever the loader raises (unless served stale).
        """
        return fetch(self._core, self._ns, key, self._cache.loader_call(loader, key), ttl_s=ttl,
                     refresh_after_s=refresh_after, stale_on_error=stale_on_error,
                     refresher=self._cache.refresh_later, telemetry=self._cache.telemetry)

    def bump(self) -> int | None:
        """Invalidate every key of this namespace on every process; returns the new version
        (None when the shared tier is down: replayed when it is back)."""
        return self._core.bump(self._ns)

    @property
    def version(self) -> int | None:
        """The namespace version this process last saw (None before any shared-tier call)."""
        return self._ns.version


class TwoTierCache:
    """The cache service (``fnd.cache``): an in-process tier (cachetools) in front of a shared Redis tier.

    The calls of the default namespace are available directly (``get``, ``put``, ``delete``, ``fetch``);
    :meth:`namespace` returns the others. See docs/cache.md for the guarantees.

    Parameters:
        core: the two tiers.
        dispatch: sends a job to the ``esf.cache`` queue (refresh-ahead, warmers); None runs them in a thread.
        telemetry: returns the Telemetry that loader times go to.
        watch_events: makes the event store call the invalidator after each append (for ``invalidate_on``).
        config: returns the configuration service (for ``bind_config``).
    """

    def __init__(self, core: CacheCore, *, dispatch: Dispatch | None = None,
                 telemetry: Callable[[], Telemetry] | None = None,
                 watch_events: Callable[[EventInvalidator], None] | None = None,
                 config: Callable[[], ConfigService] | None = None) -> None:
        self.core = core
        self.invalidator = EventInvalidator()
        self._watch_events = watch_events
        self._config = config
        self._config_subscriptions: list[Subscription] = []
        self.settings = core.settings
        self._dispatch = dispatch
        self.telemetry = telemetry
        self._namespaces: dict[str, Namespace] = {}
        self._loaders: dict[str, Callable[..., Any]] = {}
        self._refreshing: dict[tuple[str, str], float] = {}
        self._default = self.namespace(DEFAULT_NAMESPACE)
        self._default_state = self._default._ns

    def __repr__(self) -> str:
        return f"<TwoTierCache backend={self.core.backend}>"

    @property
    def breaker(self) -> CircuitBreaker:
        """The shared tier's breaker, ``cache.redis`` (listed in ``fnd.breakers`` and ``fnd.health()``)."""
        return self.core.breaker

    # -- namespaces and the default one ------------------------------------------

    def namespace(self, name: str, *, ttl: float | None = None, codec: Codec | None = None) -> Namespace:
        """The namespace ``name`` (created on first use; ``ttl`` and ``codec`` set its defaults).

        Raises:
            ValidationError: ``name`` is not 1-64 letters, digits, ``_ . -``; or ``ttl`` is not > 0.
        """
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0):
            raise ValidationError(f"cache namespace {name!r}: ttl must be greater than zero, got {ttl!r}")
        handle = self._namespaces.get(name)
        if handle is None or ttl is not None or codec is not None:
            state = self.core.namespace_state(name, codec=codec, ttl_s=float(ttl) if ttl is not None else None)
            handle = self._namespaces.setdefault(name, Namespace(self, state))
        return handle

    def get(self, key: str, default: Any = None) -> Any:
        """``namespace("default").get``."""
        state = self._default_state
        entry = self.core.local_hit(state, key)
        if entry is None:
            entry = self.core.read(state, key)[0]
            if entry is None:
                return default
        return entry.value

    def put(self, key: str, value: Any, *, ttl: float | None = None, refresh_after: float | None = None) -> bool:
        """``namespace("default").put``."""
        return self._default.put(key, value, ttl=ttl, refresh_after=refresh_after)

    def delete(self, key: str) -> bool:
        """``namespace("default").delete``."""
        return self._default.delete(key)

    def fetch(self, key: str, loader: Callable[[], Any] | str, *, ttl: float | None = None,
              refresh_after: float | None = None, stale_on_error: bool = False) -> Any:
        """``namespace("default").fetch``."""
        return self._default.fetch(key, loader, ttl=ttl, refresh_after=refresh_after, stale_on_error=stale_on_error)

    def bump(self, namespace: str) -> int | None:
        """``namespace(namespace).bump()``."""
        return self.namespace(namespace).bump()

    # -- loaders -------------------------------------------------------------------

    def loader(self, name: str) -> Callable[[F], F]:
        """Register the decorated function as loader ``name``, called as ``fn(key)`` by ``fetch(key, name)``,
        by refresh-ahead and by warmers (in every process that imports it: workers too)."""

        def decorator(fn: F) -> F:
            self.register_loader(name, fn)
            return fn

        return decorator

    def register_loader(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn`` as loader ``name``.

        Raises:
            ValidationError: ``name`` is empty or already names another function.
        """
        if not isinstance(name, str) or not name:
            raise ValidationError("cache loader name: must be a non-empty string")
        known = self._loaders.get(name)
        if known is not None and known is not fn and getattr(known, "__qualname__", None) != fn.__qualname__:
            raise ValidationError(f"cache loader {name!r} is already registered for another function")
        self._loaders[name] = fn

    def loader_call(self, loader: Callable[[], Any] | str, key: str) -> LoaderCall:
        if isinstance(loader, str):
            fn = self._loaders.get(loader)
            if fn is None:
                raise ValidationError(f"no cache loader named {loader!r} is registered "
                                      f"(registered: {', '.join(sorted(self._loaders)) or 'none'})")
            return LoaderCall(functools.partial(fn, key), loader, (key,))
        if not callable(loader):
            raise ValidationError("cache fetch: loader must be a callable or a registered loader name")
        return LoaderCall(loader)

    def cached(self, fn: Callable[..., Any] | None = None, /, *, ttl: float | None = None,
               key: Callable[..., str] | None = None, namespace: str = DEFAULT_NAMESPACE,
               refresh_after: float | None = None, stale_on_error: bool = False, name: str | None = None) -> Any:
        """Cache a function's results: ``@fnd.cached`` or ``@fnd.cached(ttl=, key=, namespace=, refresh_after=,
        stale_on_error=)``.

        The key is ``key(*args, **kwargs)``, by default ``<module>.<qualname>:<JSON of the arguments>``
        (arguments must then be JSON). The function is registered as a loader under ``name`` (default
        ``<module>.<qualname>``) so that workers can refresh it. ``wrapper.cache_namespace`` is its namespace.

        Raises:
            ValidationError: a bad option (at declaration); at call time, non-JSON arguments without ``key``.
        """
        ns = self.namespace(namespace)

        def decorate(func: Callable[..., Any]) -> Any:
            loader_name = name or f"{func.__module__}.{func.__qualname__}"
            self.register_loader(loader_name, func)

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key(*args, **kwargs) if key is not None else _default_key(loader_name, args, kwargs)
                call = LoaderCall(functools.partial(func, *args, **kwargs), loader_name, args, kwargs)
                return fetch(self.core, ns._ns, k, call, ttl_s=ttl, refresh_after_s=refresh_after,
                             stale_on_error=stale_on_error, refresher=self.refresh_later, telemetry=self.telemetry)

            wrapper.cache_namespace = ns  # type: ignore[attr-defined]
            return wrapper

        return decorate(fn) if fn is not None else decorate

    # -- invalidation bound to events and configuration ------------------------------

    def invalidate_on(self, event_type: str, *, key: KeyOf | None = None,
                      namespace: str = DEFAULT_NAMESPACE) -> InvalidationRule:
        """Evict, on every process, what an event names when it is appended through this Foundation.

        Parameters:
            event_type: an event type, or a prefix ending in ``.*`` (``"order.*"``).
            key: ``key(event)`` returns the key(s) to delete (or None); omitted: bump the whole namespace.

        Raises:
            ValidationError: a malformed event type, ``key`` not callable, or no event store to watch.
        """
        if self._watch_events is None:
            raise ValidationError("invalidate_on: this cache has no event store to watch (build it from a Foundation)")
        rule = InvalidationRule(event_type, self.namespace(namespace), key)
        self.invalidator.add(rule)
        self._watch_events(self.invalidator)
        return rule

    def bind_config(self, namespace: str, *paths: str) -> None:
        """Bump ``namespace`` whenever the configuration under one of ``paths`` changes (in every process that
        binds it: each bumps once per change).

        Raises:
            ValidationError: no path, a malformed path, or no configuration service.
        """
        if self._config is None:
            raise ValidationError("bind_config: this cache has no configuration service (build it from a Foundation)")
        if not paths:
            raise ValidationError("bind_config: name at least one configuration path")
        ns = self.namespace(namespace)
        config = self._config()

        def changed(_change: object) -> None:
            ns.bump()

        for path in paths:
            self._config_subscriptions.append(config.subscribe(path, changed))

    # -- refresh-ahead and warmers ---------------------------------------------------

    def refresh_later(self, ns: NsState, key: str, call: LoaderCall, ttl_s: float, refresh_after_s: float,
                      claim_s: float) -> None:
        """Have ``key`` reloaded in the background: one refresh across processes for the ``claim_s`` seconds the
        current value has left (a refresh that fails is not sent again for this value: the next miss loads)."""
        mark = (ns.name, key)
        now = time.monotonic()
        if self._refreshing.get(mark, 0.0) > now:
            return
        claim = max(self.settings.lock_lease_s, claim_s)
        self._refreshing[mark] = now + claim
        if len(self._refreshing) > 10_000:
            self._refreshing = {k: v for k, v in self._refreshing.items() if v > now}
        token = uuid.uuid4().hex
        if self.core.acquire(f"r:{ns.name}:{key}", token, claim) is False:
            return  # another process sent it
        request: dict[str, Any] = {"namespace": ns.name, "key": key, "loader": call.name, "args": list(call.args),
                   "kwargs": dict(call.kwargs), "ttl": ttl_s, "refresh_after": refresh_after_s, "claim": token}
        ns.refreshes += 1
        self._send(REFRESH_JOB, request, lambda: self.refresh(**request))

    def refresh(self, namespace: str, key: str, loader: str, args: list[Any], kwargs: dict[str, Any],
                ttl: float, refresh_after: float | None = None, claim: str | None = None) -> None:
        """Run loader ``loader(*args, **kwargs)`` now and store its value as ``key`` (the ``esf.cache.refresh``
        job's body); then free the refresh ``claim`` so that the new value can be refreshed in its turn.

        Raises:
            ValidationError: ``loader`` is not registered in this process. Whatever the loader raises.
        """
        fn = self._loaders.get(loader)
        if fn is None:
            raise ValidationError(f"no cache loader named {loader!r} is registered in this process")
        state = self.namespace(namespace)._ns
        value = run_loader(self.core, state, LoaderCall(functools.partial(fn, *args, **kwargs), loader), self.telemetry)
        self.core.put(state, key, value, ttl_s=ttl, refresh_after_s=refresh_after)
        if claim is not None:
            self.core.release(f"r:{namespace}:{key}", claim)

    def warm(self, loader: str, keys: Iterable[str], *, namespace: str = DEFAULT_NAMESPACE,
             ttl: float | None = None) -> Any:
        """Load ``keys`` with registered ``loader`` (called with each key) in a worker (``esf.cache.warm``).

        Returns:
            The job handle (``wait(timeout)``), or None without a broker (run in a thread here).

        Raises:
            ValidationError: an invalid key or namespace, or an unknown loader.
        """
        items = [check_key(k) for k in keys]
        self.namespace(namespace)
        if loader not in self._loaders:
            raise ValidationError(f"no cache loader named {loader!r} is registered")
        request: dict[str, Any] = {"loader": loader, "keys": items, "namespace": namespace, "ttl": ttl}
        return self._send(WARM_JOB, request, lambda: self.run_warm(**request))

    def run_warm(self, loader: str, keys: list[str], namespace: str = DEFAULT_NAMESPACE,
                 ttl: float | None = None) -> int:
        """Load and store every key now (the ``esf.cache.warm`` job's body); returns how many were stored.

        Raises:
            ValidationError: ``loader`` is not registered here. Whatever the loader raises (keys stored before
                the failure stay stored).
        """
        fn = self._loaders.get(loader)
        if fn is None:
            raise ValidationError(f"no cache loader named {loader!r} is registered in this process")
        state = self.namespace(namespace)._ns
        for key in keys:
            value = run_loader(self.core, state, LoaderCall(functools.partial(fn, key), loader), self.telemetry)
            self.core.put(state, key, value, ttl_s=ttl)
        return len(keys)

    def _send(self, job: str, request: dict[str, Any], here: Callable[[], Any]) -> Any:
        if self._dispatch is not None:
            try:
                return self._dispatch(job, request)
            except Exception:
                log.warning("cache: could not send %s; running it in this process", job, exc_info=True)

        def run() -> None:
            try:
                here()
            except Exception:
                log.exception("cache: %s failed", job)

        threading.Thread(target=run, name="esf-cache-refresh", daemon=True).start()
        return None

    # -- state -----------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """This process's hits, misses, loads, waits and the in-process tier's size."""
        return self.core.stats()

    def health(self) -> CacheHealth:
        """``ok``, or ``degraded`` while the shared tier is unreachable."""
        return self.core.health()

    def close(self) -> None:
        """Stop the background thread and release connections."""
        for subscription in self._config_subscriptions:
            subscription()
        self.core.close()


def _default_key(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        text = json.dumps([list(args), kwargs], separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"@cached {name}: arguments are not JSON ({exc}); pass key=") from None
    key = f"{name}:{text}"
    if len(key) > 512 or not KEY_RE.match(key):
        key = f"{name}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"
    return key
