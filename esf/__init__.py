"""ESF: durable jobs, schedules, events, configuration and telemetry on Celery."""

from __future__ import annotations

from . import errors
from .errors import EsfError
from .secrets import Secret
from .settings import Settings

ESFError = EsfError

__all__ = [
    "ESFError",
    "EsfError",
    "Secret",
    "Settings",
    "errors",
]

__version__ = "0.1.0"
