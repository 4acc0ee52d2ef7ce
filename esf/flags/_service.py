"""``FlagService`` (``fnd.flags``): evaluate, write and carry feature flags kept in the configuration."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._json import check_json, check_name
from ..errors import NotFound, ServiceUnavailable, ValidationError
from ..jobs._meta import FlagCarry, current_flags, current_job
from ._conditions import EvaluationFailed
from ._model import Compiled, CompiledFlag, compile_all
from ._values import FLAGS_PREFIX, REASON_ERROR, SEGMENTS_PREFIX, Evaluation

if TYPE_CHECKING:
    from datetime import datetime

    from ..config import ConfigService
    from ..config._deferred import ScheduledBatch
    from ..events import Event
    from ..settings import FlagSettings
    from ..telemetry import Telemetry

__all__ = ["FlagService", "validate_flags"]

#: The flag label of evaluations of names no label can carry (one series for all of them).
UNKNOWN_FLAG = "(unknown)"
#: Longest flag name used as a telemetry label as it is.
MAX_NAME_LABEL_CHARS = 200

log = logging.getLogger("esf.flags")

#: Largest evaluation context a scope carries into jobs (bytes of JSON).
MAX_CONTEXT_BYTES = 4096
_EMPTY: Mapping[str, Any] = {}


def validate_flags(document: Mapping[str, Any], changed: Any) -> dict[str, str]:
    """The configuration validator of ``flags.*`` and ``flag_segments.*``.

    Reports the problems of every definition a batch changes, and of every
    definition that uses one it changes (a deleted segment, a broken
    prerequisite), so a bad rule never reaches a node.
    """
    from ..config._paths import overlaps

    compiled = compile_all(document.get(FLAGS_PREFIX), document.get(SEGMENTS_PREFIX))
    if not compiled.problems:
        return {}
    changed = list(changed)
    affected = {p for p, deps in compiled.refs.items()
                if any(overlaps(p, c) or any(overlaps(d, c) for d in deps) for c in changed)}
    grew = True
    while grew:
        grew = False
        for p, deps in compiled.refs.items():
            if p not in affected and deps & affected:
                affected.add(p)
                grew = True
    return {p: m for p, m in compiled.problems.items()
            if p in affected or (p in (FLAGS_PREFIX, SEGMENTS_PREFIX) and any(overlaps(p, c) for c in changed))}


class FlagService:
    """Feature flags: definitions under ``flags.*`` in the configuration, evaluated in this process.

    Every change goes through the configuration service, so it is validated,
    versioned, audited, rolled back and propagated like any configuration
    batch. Evaluation reads the process's configuration snapshot and never
    does I/O; definitions are compiled again only when a configuration version changes them.

    Parameters:
        config: returns the configuration service (``fnd.config``; rebuilt after a fork).
        settings: ``Settings.flags``.
        telemetry: returns the telemetry service, or None (no metrics).
        record: appends an event in the background (``fnd.record``), or None (no exposures).
    """

    def __init__(self, config: Callable[[], ConfigService], *, settings: FlagSettings,
                 telemetry: Callable[[], Telemetry] | None = None,
                 record: Callable[[Event], None] | None = None) -> None:
        self._config = config
        self._settings = settings
        self._telemetry = telemetry
        self._record = record
        self._consistent = settings.job_consistency == "consistent"
        self._sample = settings.exposure_sample_rate
        self._version = -1
        self._compiled = Compiled({}, {}, {})
        self._trees: tuple[Any, Any] = (None, None)
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._answer_counters: dict[int, Callable[[], object]] = {}
        self._counted_answers: list[Evaluation] = []
        self._incrementers: dict[tuple[str, str, str], Callable[[], object]] = {}
        #: Evaluations answered with the caller's default, by flag.
        self.errors: Counter[str] = Counter()

    # -- evaluating --------------------------------------------------------------

    def evaluate(self, name: str, context: Mapping[str, Any] | None = None, default: Any = None) -> Evaluation:
        """Evaluate flag ``name`` for ``context``. Never raises.

        In a :meth:`scope` or a job, ``context=None`` means the scope's context. In a
        job whose enqueuing request evaluated ``name`` for the same ``key``, the
        request's answer is returned when ``flags.job_consistency`` is ``consistent``.

        Parameters:
            name: the flag (``flags.<name>`` in the configuration).
            context: attributes of who asks (``key`` identifies them; rollouts hash it).
            default: the value returned with reason ``error`` (unknown flag, missing
                attribute, bad context, invalid definition).

        Returns:
            The :class:`Evaluation` (value, variant, reason, rule).
        """
        if type(name) is not str:  # a list or dict is no flag name: the default, as for any unknown flag
            return self._error(ascii(name), default, f"a flag name is a string, got {type(name).__name__}")
        carry = current_flags.get()
        if carry is None and type(context) is dict:
            # The hot path, inlined: one version check, one lookup, the compiled flag, one counter.
            config = self._config()
            if config.version != self._version:
                self._refresh(config)
            flags = self._compiled.flags
            flag = flags.get(name)
            if flag is not None:
                try:
                    answer = flag.evaluate(context, flags)
                except EvaluationFailed as exc:
                    answer = self._error(name, default, str(exc))
                except Exception as exc:  # never break the caller
                    answer = self._error(name, default, f"{type(exc).__name__} while evaluating")
                else:
                    if self._telemetry is not None:
                        increment = self._answer_counters.get(id(answer))
                        if increment is not None:
                            increment()
                        else:
                            self._count(answer)
                if self._sample:
                    self._expose(answer, context, None)
                return answer
        if carry is not None:
            if context is None or (isinstance(context, Mapping) and context.get("key") == carry.context.get("key")):
                if carry.received and self._consistent:
                    wire = carry.answers.get(name)
                    if type(wire) is list and len(wire) == 4:  # a header is input: check its shape
                        answer = Evaluation(name, wire[0], wire[1], wire[2], wire[3])
                        if self._telemetry is not None:
                            self._count_key((name, str(answer.variant or ""), str(answer.reason)))
                        return answer
                answer = self._evaluate(name, carry.context if context is None else context, default)
                if answer.reason != REASON_ERROR:
                    carry.answers[name] = answer.to_wire()
                if self._sample and name not in carry.exposed:
                    carry.exposed.add(name)
                    self._expose(answer, carry.context if context is None else context, carry.correlation_id)
                return answer
        answer = self._evaluate(name, _EMPTY if context is None else context, default)
        if self._sample:
            self._expose(answer, context or _EMPTY, None)
        return answer

    def enabled(self, name: str, context: Mapping[str, Any] | None = None, default: bool = False) -> bool:
        """Whether flag ``name`` is on for ``context``: its value when that is a boolean, else ``default``.

        Never raises; see :meth:`evaluate`.
        """
        value = self.evaluate(name, context, default).value
        if value is True or value is False:
            return value
        self._count_error(name, "the flag's value is not a boolean")
        return default

    def variant(self, name: str, context: Mapping[str, Any] | None = None, default: str | None = None) -> str | None:
        """The variant name of flag ``name`` for ``context`` (``default`` on error). Never raises."""
        answer = self.evaluate(name, context, default)
        return answer.variant if answer.reason != REASON_ERROR else default

    def _evaluate(self, name: str, context: Any, default: Any) -> Evaluation:
        config = self._config()
        if config.version != self._version:
            self._refresh(config)
        flags = self._compiled.flags
        flag = flags.get(name)
        if flag is None:
            return self._error(name, default, self._missing(name))
        if type(context) is not dict and not isinstance(context, Mapping):
            return self._error(name, default, f"the context is a {type(context).__name__}, not a mapping")
        try:
            answer = flag.evaluate(context, flags)
        except EvaluationFailed as exc:
            return self._error(name, default, str(exc))
        except Exception as exc:  # a context whose mapping raises: never break the caller
            return self._error(name, default, f"{type(exc).__name__} while evaluating")
        if self._telemetry is not None:
            self._count(answer)
        return answer

    def _count(self, answer: Evaluation) -> None:
        # Keyed by the answer object, compiled once per version and pinned in _counted_answers (so its
        # id is not reused while the entry exists): no key tuple to build per evaluation, and a
        # lock-free exact increment (Counter.incrementer).
        increment = self._answer_counters.get(id(answer))
        if increment is None:
            with self._lock:
                increment = self._answer_counters.get(id(answer))
                if increment is None:
                    key = (answer.flag, answer.variant or "", answer.reason)
                    increment = self._incrementers.get(key)
                    if increment is None:  # one per series for the service's life: versions share it
                        increment = self._incrementers[key] = self._counter(key).incrementer()
                    self._counted_answers.append(answer)
                    self._answer_counters[id(answer)] = increment
        increment()

    def _missing(self, name: str) -> str:
        problem = self._compiled.problems.get(f"{FLAGS_PREFIX}.{name}")
        return f"invalid definition: {problem}" if problem else f"no flag named {name!r}"

    def _error(self, name: str, default: Any, why: str) -> Evaluation:
        # A name no telemetry label can carry (too long, control characters, lone surrogates) is
        # counted as UNKNOWN_FLAG: evaluation answers the default, it never raises.
        label = name if (len(name) <= MAX_NAME_LABEL_CHARS and name.isprintable() and name.isascii()) \
            or name in self._compiled.flags else UNKNOWN_FLAG
        self._count_error(label, why if label == name else f"no flag named {name[:200]!a}")
        if self._telemetry is not None:
            self._count_key((label, "", REASON_ERROR))
        return Evaluation(name, default, None, REASON_ERROR, None, why)

    def _count_error(self, name: str, why: str) -> None:
        self.errors[name] += 1
        if self.errors[name] == 1:
            log.warning("flag %r: answered with the caller's default (%s)", name, why)

    def _count_key(self, key: tuple[str, str, str]) -> None:
        (self._counters.get(key) or self._counter(key)).inc()

    def _counter(self, key: tuple[str, str, str]) -> Any:
        assert self._telemetry is not None
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._telemetry().instruments.flag_counter(*key)
        return counter

    def _refresh(self, config: ConfigService) -> None:
        with self._lock:
            version = config.version
            if version == self._version:
                return
            trees = (config.get(FLAGS_PREFIX, default=None), config.get(SEGMENTS_PREFIX, default=None))
            if self._version >= 0 and trees == self._trees:
                self._version = version  # another part of the configuration changed: nothing to compile
                return
            try:
                compiled = compile_all(*trees)
            except Exception:  # never break the callers: every flag answers with their default
                log.exception("flags: the definitions of configuration version %d could not be compiled", version)
                compiled = Compiled({}, {FLAGS_PREFIX: "the definitions could not be compiled (see the log)"}, {})
            for path, problem in compiled.problems.items():
                log.warning("flags: %s is invalid and evaluates to the caller's default: %s", path, problem)
            self._compiled = compiled
            self._trees = trees
            self._answer_counters = {}
            self._counted_answers = []
            self._version = version

    # -- carrying into jobs ------------------------------------------------------

    @contextmanager
    def scope(self, context: Mapping[str, Any], *, correlation_id: str | None = None) -> Iterator[FlagCarry]:
        """Evaluate flags for one request: ``context`` becomes the default context, the answers are
        remembered, and every job enqueued inside carries both in its headers.

        Parameters:
            context: the request's evaluation context (JSON object, at most 4096 bytes).
            correlation_id: put on the exposure events of this scope.

        Raises:
            ValidationError: ``context`` is not a JSON object or is too large.
        """
        if not isinstance(context, Mapping):
            raise ValidationError(f"a flag context is a mapping, not {type(context).__name__}",
                                  errors={"context": "not a mapping"})
        try:
            size = len(json.dumps(dict(context), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"a flag context must be JSON: {exc}", errors={"context": "not JSON"}) from None
        if size > MAX_CONTEXT_BYTES:
            raise ValidationError(f"a flag context is at most {MAX_CONTEXT_BYTES} bytes of JSON, not {size}",
                                  errors={"context": "too large"})
        carry = FlagCarry(dict(context), correlation_id=correlation_id)
        token = current_flags.set(carry)
        try:
            yield carry
        finally:
            current_flags.reset(token)

    # -- exposures -------------------------------------------------------------

    def _expose(self, answer: Evaluation, context: Mapping[str, Any], correlation_id: str | None) -> None:
        if self._record is None or answer.reason == REASON_ERROR:
            return
        if self._sample < 1.0 and random.random() >= self._sample:
            return
        from ..events import Event

        if correlation_id is None:
            job = current_job.get()
            correlation_id = job.correlation_id if job is not None else None
        key = context.get("key") if isinstance(context, Mapping) else None
        data = {"flag": answer.flag, "variant": answer.variant, "reason": answer.reason,
                "key": key if isinstance(key, str | int) and not isinstance(key, bool) else None}
        try:
            self._record(Event("flag.exposure", data, stream_id=f"flag-{answer.flag}", correlation_id=correlation_id))
        except Exception:
            log.warning("flags: an exposure of %r could not be recorded", answer.flag, exc_info=True)

    def track(self, event_type: str, context: Mapping[str, Any] | None = None,
              data: Mapping[str, Any] | None = None) -> None:
        """Record that ``event_type`` happened for ``context`` (``order.placed`` after an exposure), in the
        background through ``fnd.record``: data ``{"key": <the context's key>, **data}``, with the
        correlation id of the current scope or job, so ``followed_by`` pairs it with the exposures.

        Raises:
            ValidationError: ``event_type`` is not a valid event type, or ``data`` is not a JSON object.
            ServiceUnavailable: this flag service records no events.
        """
        if self._record is None:
            raise ServiceUnavailable("flags: this flag service has no event store to record to")
        from ..events import Event

        carry = current_flags.get()
        if context is None and carry is not None:
            context = carry.context
        if data is not None and not isinstance(data, Mapping):
            raise ValidationError(f"track: data is a mapping, not {type(data).__name__}", errors={"data": "invalid"})
        key = context.get("key") if isinstance(context, Mapping) else None
        payload = {"key": key if isinstance(key, str | int) and not isinstance(key, bool) else None, **(data or {})}
        correlation_id = carry.correlation_id if carry is not None else None
        if correlation_id is None:
            job = current_job.get()
            correlation_id = job.correlation_id if job is not None else None
        self._record(Event(event_type, payload, correlation_id=correlation_id))

    # -- reading and writing definitions -----------------------------------------

    def names(self) -> list[str]:
        """The names of every flag in the current configuration snapshot, sorted."""
        tree = self._config().get(FLAGS_PREFIX, default=None)
        return sorted(tree) if isinstance(tree, Mapping) else []

    def definition(self, name: str) -> Mapping[str, Any]:
        """The stored definition of flag ``name`` (read-only).

        Raises:
            NotFound: there is no such flag.
        """
        value = self._config().get(f"{FLAGS_PREFIX}.{name}", default=None)
        if not isinstance(value, Mapping):
            raise NotFound(f"no flag named {name!r}", flag=name)
        return value

    def problems(self) -> dict[str, str]:
        """Definitions of the current snapshot that do not compile, by configuration path (written before
        validation was registered, or directly in the store)."""
        config = self._config()
        if config.version != self._version:
            self._refresh(config)
        return dict(self._compiled.problems)

    def set(self, name: str, definition: Mapping[str, Any], *, actor: str | None = None) -> int:
        """Write the definition of flag ``name`` (one configuration batch).

        Raises:
            ValidationError: the definition is invalid (the message names the rule); nothing is written.
            PermissionDenied, ServiceUnavailable: as ``ConfigService.update_batch``.

        Returns:
            The new configuration version.
        """
        check_name(name, "flag name")
        if not isinstance(definition, Mapping):
            raise ValidationError(f"flag {name!r}: the definition must be a mapping, got {type(definition).__name__}",
                                  errors={name: "not a mapping"})
        check_json(definition, f"flag {name!r}")
        return self._config().update_batch({f"{FLAGS_PREFIX}.{name}": dict(definition)}, actor=actor)

    def schedule(self, name: str, definition: Mapping[str, Any], *, at: datetime,
                 expected_version: int | None = None, actor: str | None = None) -> ScheduledBatch:
        """Write the definition of flag ``name`` at ``at`` (a timezone-aware datetime): a scheduled
        configuration batch (``fnd.config.schedule_batch``), applied by an ETA task on ``esf.config`` with
        compare-and-set and listed by ``esf config scheduled``.

        The definition is validated now, against the current configuration (segments, prerequisites);
        it is validated again when applied, and a batch refused then is dead-lettered on ``esf.config.dlq``
        with its error.

        Parameters:
            expected_version: apply only if the configuration is still at this version then
                (``ConcurrencyConflict`` otherwise, dead-lettered).

        Raises:
            ValidationError: the definition is invalid (the message names the rule), or ``at`` is naive;
                nothing is recorded or sent.
            PermissionDenied, ServiceUnavailable: as ``ConfigService.schedule_batch``.

        Returns:
            the ``ScheduledBatch`` (``id``, ``at``, ``state`` …).
        """
        batch: ScheduledBatch = self._config().schedule_batch({f"{FLAGS_PREFIX}.{name}": dict(definition)}, at=at,
                                                               expected_version=expected_version, actor=actor)
        return batch

    def set_segment(self, name: str, definition: Mapping[str, Any], *, actor: str | None = None) -> int:
        """Write segment ``name`` (``flag_segments.<name>``); every flag using it is checked again.

        Raises:
            ValidationError: the segment, or a flag using it, would be invalid; nothing is written.
        """
        check_name(name, "segment name")
        if not isinstance(definition, Mapping):
            raise ValidationError(f"segment {name!r}: the definition must be a mapping, got "
                                  f"{type(definition).__name__}", errors={name: "not a mapping"})
        check_json(definition, f"segment {name!r}")
        return self._config().update_batch({f"{SEGMENTS_PREFIX}.{name}": dict(definition)}, actor=actor)

    def delete(self, name: str, *, actor: str | None = None) -> int:
        """Remove flag ``name``.

        Raises:
            NotFound: there is no such flag.
            ValidationError: another flag has it as a prerequisite; nothing is written.
        """
        from ..config import DELETE

        self.definition(name)
        return self._config().update_batch({f"{FLAGS_PREFIX}.{name}": DELETE}, actor=actor)

    def enable(self, name: str, *, actor: str | None = None) -> int:
        """Turn flag ``name`` on (``enabled: true``) and release its kill switch.

        Raises:
            NotFound: there is no such flag.
        """
        self.definition(name)
        return self._config().update_batch({f"{FLAGS_PREFIX}.{name}.enabled": True,
                                            f"{FLAGS_PREFIX}.{name}.kill": False}, actor=actor)

    def disable(self, name: str, *, actor: str | None = None) -> int:
        """Turn flag ``name`` off (``enabled: false``): every context gets its off variant.

        Raises:
            NotFound: there is no such flag.
        """
        self.definition(name)
        return self._config().update(f"{FLAGS_PREFIX}.{name}.enabled", False, actor=actor)

    def kill(self, name: str, *, actor: str | None = None) -> int:
        """Pull the kill switch of flag ``name``: its off variant for everyone, whatever else is set, until
        :meth:`enable`.

        Raises:
            NotFound: there is no such flag.
        """
        self.definition(name)
        return self._config().update(f"{FLAGS_PREFIX}.{name}.kill", True, actor=actor)

    def watch(self, callback: Callable[[list[str]], None]) -> Callable[[], None]:
        """Call ``callback(names)`` after each configuration version that changes flags or segments.

        ``names`` are the flags changed (every flag when a segment changed, since any may use it),
        sorted. Calls come from the thread that applied the version, after the swap. The watch
        belongs to this process's configuration service (a forked child watches again).

        Returns:
            A function that stops the watch.
        """
        def changed(event: Any) -> None:
            names: set[str] = set()
            for change in event.changes:
                parts = change.path.split(".")
                if parts[0] == SEGMENTS_PREFIX or len(parts) == 1:
                    names.update(self.names())
                    old, new = change.old, change.new
                    for tree in (old, new):
                        if parts[0] == FLAGS_PREFIX and isinstance(tree, Mapping):
                            names.update(tree)
                else:
                    names.add(parts[1])
            callback(sorted(names))

        config = self._config()
        subscriptions = [config.subscribe(FLAGS_PREFIX, changed), config.subscribe(SEGMENTS_PREFIX, changed)]

        def stop() -> None:
            for subscription in subscriptions:
                subscription()

        return stop

    def health(self) -> dict[str, Any]:
        """``{"status", "flags", "invalid", "errors"}``: invalid definitions make it ``degraded``."""
        problems = self.problems()
        return {"status": "degraded" if problems else "ok", "flags": len(self._compiled.flags),
                "invalid": sorted(problems), "errors": sum(self.errors.values())}

    def compiled(self, name: str) -> CompiledFlag | None:
        """The compiled flag ``name`` of the current snapshot (None: unknown or invalid)."""
        config = self._config()
        if config.version != self._version:
            self._refresh(config)
        return self._compiled.flags.get(name)
