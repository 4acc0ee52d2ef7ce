"""``EsfProvider``: the OpenFeature provider interface answered by ``fnd.flags``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from esf.events._model import thaw_json
from esf.flags import Evaluation, FlagService

__all__ = ["REASONS", "EsfProvider"]

T = TypeVar("T")

#: ESF reasons as OpenFeature reasons (ESF's own is also in ``flag_metadata["reason"]``).
REASONS: Mapping[str, str] = {
    "default": Reason.DEFAULT,
    "disabled": Reason.DISABLED,
    "kill_switch": Reason.DISABLED,
    "prerequisite_failed": Reason.DISABLED,
    "target_match": Reason.TARGETING_MATCH,
    "rule_match": Reason.TARGETING_MATCH,
    "rollout": Reason.SPLIT,
    "error": Reason.ERROR,
}


class EsfProvider(AbstractProvider):
    """OpenFeature provider answering from ``fnd.flags`` (local evaluation, no network).

    The evaluation context's ``targeting_key`` becomes the ESF context's ``key``;
    its attributes are the other attributes. An answer whose value does not have
    the requested type is ``TYPE_MISMATCH`` with the caller's default, as the
    specification asks. Inside ``fnd.flags.scope`` or a job, answers are carried
    like those of ``fnd.flags``. Every configuration version that changes flags or
    segments emits ``PROVIDER_CONFIGURATION_CHANGED`` with the names of the flags.

    Parameters:
        flags: the flag service (``fnd.flags``).
    """

    def __init__(self, flags: FlagService) -> None:
        super().__init__()
        self._flags = flags
        self._stop_watch: Any = None

    def get_metadata(self) -> Metadata:
        return Metadata(name="esf")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Emit ``PROVIDER_CONFIGURATION_CHANGED`` (with ``flags_changed``) for every flag change."""
        if self._stop_watch is None:
            self._stop_watch = self._flags.watch(
                lambda names: self.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=names)))

    def track(self, tracking_event_name: str, evaluation_context: EvaluationContext | None = None,
              tracking_event_details: TrackingEventDetails | None = None) -> None:
        """Record the tracking event as an ESF event (``fnd.flags.track``): data ``key``, ``value`` and the
        details' attributes, with the current scope's or job's correlation id.

        Raises:
            ValidationError: the name is not a valid event type, or the details are not JSON.
        """
        data: dict[str, Any] = {}
        if tracking_event_details is not None:
            data.update(tracking_event_details.attributes)
            if tracking_event_details.value is not None:
                data["value"] = tracking_event_details.value
        self._flags.track(tracking_event_name, _context(evaluation_context) or None, data)

    def shutdown(self) -> None:
        """Stop emitting change events."""
        if self._stop_watch is not None:
            self._stop_watch()
            self._stop_watch = None

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, lambda v: v is True or v is False)

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, lambda v: isinstance(v, str))

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context,
                             lambda v: isinstance(v, int) and not isinstance(v, bool))

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[float]:
        details = self._resolve(flag_key, default_value, evaluation_context,
                                lambda v: isinstance(v, int | float) and not isinstance(v, bool))
        if details.error_code is None:
            details.value = float(details.value)
        return details

    def resolve_object_details(self, flag_key: str, default_value: Any,
                               evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[Any]:
        details = self._resolve(flag_key, default_value, evaluation_context,
                                lambda v: isinstance(v, Mapping | list | tuple))
        if details.error_code is None:
            details.value = thaw_json(details.value)
        return details

    def _resolve(self, flag_key: str, default: T, evaluation_context: EvaluationContext | None,
                 accepts: Any) -> FlagResolutionDetails[T]:
        context = _context(evaluation_context)
        answer = self._flags.evaluate(flag_key, context, default)
        if answer.reason == "error":
            return FlagResolutionDetails(default, error_code=self._error_code(flag_key), error_message=answer.error,
                                         reason=Reason.ERROR, flag_metadata={"reason": "error"})
        if not accepts(answer.value):
            return FlagResolutionDetails(default, error_code=ErrorCode.TYPE_MISMATCH,
                                         error_message=f"flag {flag_key!r} serves a {type(answer.value).__name__}",
                                         reason=Reason.ERROR, flag_metadata={"reason": "error"})
        return FlagResolutionDetails(answer.value, reason=REASONS[answer.reason], variant=answer.variant,
                                     flag_metadata=_metadata(answer))

    def _error_code(self, flag_key: str) -> ErrorCode:
        if self._flags.compiled(flag_key) is not None:
            return ErrorCode.GENERAL  # the context could not be answered (missing or mistyped attribute)
        if f"flags.{flag_key}" in self._flags.problems():
            return ErrorCode.PARSE_ERROR
        return ErrorCode.FLAG_NOT_FOUND


def _context(ctx: EvaluationContext | None) -> dict[str, Any]:
    if ctx is None:
        return {}
    out = dict(ctx.attributes)
    if ctx.targeting_key is not None:
        out["key"] = ctx.targeting_key
    return out


def _metadata(answer: Evaluation) -> dict[str, bool | int | float | str]:
    meta: dict[str, bool | int | float | str] = {"reason": answer.reason}
    if answer.rule is not None:
        meta["rule"] = answer.rule
    return meta
