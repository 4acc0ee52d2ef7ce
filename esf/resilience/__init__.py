"""Resilience helpers: circuit breakers."""

from __future__ import annotations

from ._breaker import STATE_VALUES, BreakerState, CircuitBreaker

__all__ = ["STATE_VALUES", "BreakerState", "CircuitBreaker"]
