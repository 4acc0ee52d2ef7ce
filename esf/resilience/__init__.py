"""Resilience: ESF's one circuit breaker, shared through Redis, and named breakers for user downstreams."""

from __future__ import annotations

from ._breaker import STATE_VALUES, BreakerState, CircuitBreaker, SharedState
from ._registry import Breakers, Guard, RateLimitedEvents, validate_breaker_name
from ._shared import RedisSharedState

__all__ = ["STATE_VALUES", "BreakerState", "Breakers", "CircuitBreaker", "Guard", "RateLimitedEvents",
           "RedisSharedState", "SharedState", "validate_breaker_name"]
