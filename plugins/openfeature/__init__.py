"""An OpenFeature provider over ESF's flags: applications use the standard ``openfeature-sdk`` API.

    from openfeature import api
    from esf.plugins.openfeature import EsfProvider

    api.set_provider(EsfProvider(fnd.flags))
    api.get_client().get_boolean_value("new_checkout", False, EvaluationContext("user-1", {"country": "FR"}))

``openfeature-sdk`` is a dependency of ESF (a small package without dependencies of its own).
"""

from __future__ import annotations

from ._provider import REASONS, EsfProvider

__all__ = ["REASONS", "EsfProvider"]
