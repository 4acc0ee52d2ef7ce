"""Testing support shipped with ESF: contract suites for backend authors, helpers for application tests.

Contract suites (``unittest.TestCase`` classes; pytest runs them too), one module per backend kind:

- :mod:`esf.testing.events`: ``EventRecorderContract``, ``QueryableEventStoreContract``,
  ``TransactionalEventStoreContract``;
- :mod:`esf.testing.config`: ``ConfigStoreContract``;
- :mod:`esf.testing.jobs`: ``CoordinatorContract``, ``ScheduleStoreContract``;
- :mod:`esf.testing.telemetry`: ``SnapshotStoreContract``.

Importing ``esf.testing`` needs neither pytest nor a server. See docs/backends.md.
"""

from __future__ import annotations
