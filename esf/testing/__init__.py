"""Testing support shipped with ESF: contract suites for backend authors, helpers for application tests.

Contract suites (``unittest.TestCase`` classes; pytest runs them too), one module per backend kind:

- :mod:`esf.testing.events`: ``EventRecorderContract``, ``QueryableEventStoreContract``,
  ``TransactionalEventStoreContract``;
- :mod:`esf.testing.config`: ``ConfigStoreContract``;
- :mod:`esf.testing.jobs`: ``CoordinatorContract``, ``ScheduleStoreContract``;
- :mod:`esf.testing.telemetry`: ``SnapshotStoreContract``.

Helpers for applications' own tests: :class:`TestFoundation` and :func:`foundation` run jobs in this
process (a Celery worker in a thread, the embedded backends in a temporary directory), with retries,
dead letters, hooks, job history and telemetry as in production, and expose them to assert on.

Importing ``esf.testing`` needs neither pytest nor a server. See docs/backends.md.
"""

from __future__ import annotations

from ._foundation import TestFoundation, foundation

__all__ = ["TestFoundation", "foundation"]
