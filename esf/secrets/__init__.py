"""Secret values: strings whose ``repr`` and ``str`` never show their content."""

from __future__ import annotations

from ._value import Secret

__all__ = ["Secret"]
