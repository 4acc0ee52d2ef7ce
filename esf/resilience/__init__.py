"""Resilience: ESF's one circuit breaker, shared through Redis, named breakers for user downstreams,
and the health endpoint."""

from __future__ import annotations

from ._breaker import STATE_VALUES, BreakerState, CircuitBreaker, SharedState, dependency_breaker
from ._health_server import HealthServer, ReadinessCache, start_health_server
from ._registry import Breakers, Guard, RateLimitedEvents, validate_breaker_name
from ._shared import RedisSharedState

__all__ = [
    "STATE_VALUES",
    "BreakerState",
    "Breakers",
    "CircuitBreaker",
    "Guard",
    "HealthServer",
    "RateLimitedEvents",
    "ReadinessCache",
    "RedisSharedState",
    "SharedState",
    "dependency_breaker",
    "start_health_server",
    "validate_breaker_name",
]
