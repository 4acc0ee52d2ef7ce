"""The aggregates the event-sourcing tests use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from esf.sourcing import Aggregate, applies


class Account(Aggregate):
    """A bank account: opened once, then deposits."""

    #: How many times a handler ran, across instances (shows what a load replayed).
    applied: ClassVar[int] = 0

    def open(self, owner: str) -> None:
        self.record("account.opened", {"owner": owner})

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.record("account.deposited", {"amount": amount})

    @applies("account.opened")
    def _opened(self, data: Mapping[str, Any]) -> None:
        type(self).applied += 1
        self.owner = data["owner"]
        self.balance = 0
        self.deposits = 0

    @applies("account.deposited")
    def _deposited(self, data: Mapping[str, Any]) -> None:
        type(self).applied += 1
        self.balance += data["amount"]
        self.deposits += 1


class SnapshottedAccount(Account):
    """The same account, snapshotted every 5 events."""

    stream_prefix = "account"
    snapshot_every = 5
