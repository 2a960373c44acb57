"""The batch claim: a reconcile's first step, taken where the batch's events are applied."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from models import AlertRecord
from worker.delivery.leases import lease_owner_id
from worker.delivery.policy import Done, HoldResolve, Misconfigured, Step, WaitForTrigger

if TYPE_CHECKING:
    from worker.delivery.reconcile import Reconciler


@dataclass
class BatchClaim:
    """A reconcile's first step taken inside the transaction that applies the batch's events
    (:class:`worker.pipeline.intake.Claim`).

    For each alert that now needs a PagerDuty call and that no live worker holds, it plans the
    call, takes the lease and sets the create mark on the alert's record before the intake
    stores it: a new cycle is inserted leased, a stored one written back leased, in the
    statements that store the events. Otherwise a batch's reconcile began with a transaction
    of its own, a locking read and an UPDATE of every alert of the batch, which is one more
    version of every row and of its index entries per alert in a storm.

    The alerts it leaves (a live lease elsewhere, nothing to call, past ``limit``, or a batch
    applied again one event at a time after a conflict, when ``kept`` never comes) are planned
    by ``reconcile_many`` as before.
    """

    reconciler: Reconciler
    limit: int
    owner: str = field(default_factory=lease_owner_id)
    _taken: list[tuple[AlertRecord, Step]] = field(default_factory=list, init=False)
    _kept: bool = field(default=False, init=False)

    def take(self, alerts: list[AlertRecord]) -> None:
        now = self.reconciler.clock()
        until = self.reconciler.lease_until()
        self._taken.clear()
        for alert in alerts:
            if len(self._taken) >= self.limit:
                break
            expired = alert.lease_expires_at is None or alert.lease_expires_at < now
            if alert.lease_owner is not None and not expired:
                continue  # its worker will see this change when it records its call
            step = self.reconciler.plan(alert)
            if isinstance(step, Done | WaitForTrigger | HoldResolve | Misconfigured):
                continue  # finished without a call, by reconcile_many (logged once stored)
            alert.lease_owner, alert.lease_expires_at = self.owner, until
            self.reconciler.mark_create(alert, step)
            self._taken.append((alert, step))

    def kept(self) -> None:
        self._kept = True

    def first_calls(self) -> dict[int, tuple[Step, str]]:
        """Alert id -> (its first call, its route), once the claim is stored; else nothing."""
        if not self._kept:
            return {}
        return {alert.id: (step, alert.route) for alert, step in self._taken}
