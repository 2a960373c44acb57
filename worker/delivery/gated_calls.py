"""PagerDuty calls made through a route's :class:`DeliveryGate` (outage breaker, credentials,
rate limit): each call only once the gate admitted it, its failures told to the gate and
returned, not raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from worker.delivery.answers import Deferred, Parked
from worker.delivery.calls import Together, group_at, outcomes
from worker.delivery.gate import Admission, Decision, DeliveryGate
from worker.delivery.pacing import RateLimitReading, deferral_waits
from worker.delivery.policy import calls_in_flight_after
from worker.pagerduty import CredentialsError, PagerDutyError, PermanentError, RetryableError

# The reconciler's logger: a reconcile's lines, these among them, come under one name.
log = logging.getLogger("worker.delivery.reconcile")

MAX_RATE_LIMIT_SLEEP = 1.0  # seconds a worker waits in place for a rate-limit token
# Seconds one task paces its calls in place, all waits together. Past it, the calls not made
# yet go back to the database, each due when the budget will allow it (pacing.deferral_waits):
# a worker busy pacing a storm's creates would otherwise hold its pool process for minutes,
# while the resolves that arrived meanwhile wait behind it in the queue. Due again, the
# sweeper hands them out in drain order, what stops a page first.
MAX_PACING_IN_PLACE = 2.0
WITHDRAWN = "the alert changed while its call waited for the budget; planned again"

T = TypeVar("T")


@dataclass
class WaitedInPlace:
    """Seconds a task has waited in place for rate-limit tokens, all its calls together."""

    seconds: float = 0.0


@dataclass
class GatedCalls:
    """Makes a reconcile's calls through their gates.

    ``sleep`` waits in place for a rate-limit token; ``recovered`` is told when PagerDuty
    answers again after an outage or a refusal, so the parked alerts get drained.
    """

    sleep: Callable[[float], None]
    recovered: Callable[[], None]

    def one(
        self,
        call: Callable[[], T],
        gate: DeliveryGate | None,
        readings: Callable[[], RateLimitReading | None] | None = None,
    ) -> T | PagerDutyError | Parked | Deferred:
        """One PagerDuty call, if the gate admits it; its failures are returned, not raised."""
        return self.many([(0, call)], gate, readings=readings)[0]

    def many(
        self,
        calls: list[tuple[int, Callable[[], T]]],
        gate: DeliveryGate | None,
        *,
        together: Together | None = None,
        readings: Callable[[], RateLimitReading | None] | None = None,
        waited: WaitedInPlace | None = None,
        withdrawn: Callable[[list[int]], set[int]] | None = None,
    ) -> dict[int, T | PagerDutyError | Parked | Deferred]:
        """Calls one after the other (PagerDuty asks for serial requests per credential), or
        those ``together`` allows a few at once once PagerDuty answered the batch's first
        (:func:`calls_in_flight_after`), each only once the gate admitted it; failures are
        returned, not raised.

        The gate admits several calls per round trip to Redis, and hears of the successes once
        per admission. A failure other than a refusal of that one call hands the calls not made
        yet back to the gate: a PagerDuty that starts failing opens the breaker and parks them,
        instead of being called again. Calls already in flight beside the failed one were made,
        and their answers count. ``readings`` gives the ``ratelimit-*`` headers of the latest
        answers, which set every worker's pace (:mod:`worker.delivery.pacing`) after each group.
        After waiting in place for the budget, ``withdrawn`` names the calls about to be made
        that are no longer wanted (the alert changed meanwhile): those are not made, and come
        back ``Deferred`` by nothing, to be planned again.
        """
        answers: dict[int, T | PagerDutyError | Parked | Deferred] = {}
        pending = list(calls)
        together_pks = together.pks if together is not None else frozenset()
        together_size = together.size if together is not None else 1
        width = 1  # calls in flight in the next group of those ``together`` allows
        waited = waited if waited is not None else WaitedInPlace()
        while pending:
            granted = len(pending)
            slept = False
            while gate is not None:
                decision = gate.admit(len(pending))
                if decision.may_call:
                    granted = max(1, decision.granted)  # always progress
                    break
                refusal = self._refusal(decision, gate)
                if refusal is not None:
                    answers.update((pk, refusal) for pk, _ in pending)
                    return answers
                if waited.seconds + decision.wait > MAX_PACING_IN_PLACE and len(pending) > 1:
                    waits = deferral_waits(decision.wait, len(pending), gate.pace_per_minute())
                    reason = "rate limit: waiting for PagerDuty's budget"
                    answers.update(
                        (pk, Deferred(wait, reason))
                        for (pk, _), wait in zip(pending, waits, strict=True)
                    )
                    return answers
                waited.seconds += decision.wait
                self.sleep(decision.wait)
                slept = True
            admitted, pending = pending[:granted], pending[granted:]
            if slept and withdrawn is not None:
                gone = withdrawn([pk for pk, _ in admitted])
                answers.update((pk, Deferred(0.0, WITHDRAWN)) for pk, _ in admitted if pk in gone)
                admitted = [(pk, made) for pk, made in admitted if pk not in gone]
            answered = False
            made = 0
            while made < len(admitted):
                group = group_at(admitted, made, together, width)
                made += len(group)
                stop = False
                for pk, outcome in zip(
                    (pk for pk, _ in group), outcomes(group, together), strict=True
                ):
                    if not isinstance(outcome, PagerDutyError):
                        answers[pk] = outcome
                        answered = True
                        continue
                    if answered and gate is not None:
                        # In the order they happened: a success, then this failure, counts one
                        # failure in a row, not none.
                        self._answered(gate)
                        answered = False
                    answers[pk] = self._failed_call(outcome, gate)
                    # PagerDuty failing, refusing the token or limiting the rate: the gate
                    # decides on the calls not made yet.
                    stop = stop or not isinstance(outcome, PermanentError)
                reading = readings() if readings is not None and gate is not None else None
                if reading is not None and gate is not None:
                    gate.paced(reading)
                if group[0][0] in together_pks:  # a group of those that may go together
                    width = calls_in_flight_after(width, answered=not stop, limit=together_size)
                if stop:
                    pending = admitted[made:] + pending
                    break
            if answered and gate is not None:
                self._answered(gate)
        return answers

    @staticmethod
    def _refusal(decision: Decision, gate: DeliveryGate) -> Parked | Deferred | None:
        """Why the gate sends no call now, or None for a short rate-limit wait (sleep it)."""
        if decision.admission is Admission.OUTAGE:
            return Parked("PagerDuty outage: breaker open, waiting for a probe to succeed")
        if decision.admission is Admission.CREDENTIALS:
            status = gate.status()
            return Parked(f"PagerDuty refused the API token: {status.credentials_error}")
        if decision.wait > MAX_RATE_LIMIT_SLEEP:
            return Deferred(decision.wait, "rate limit: waiting for PagerDuty's budget")
        return None

    def _failed_call(
        self, error: PagerDutyError, gate: DeliveryGate | None
    ) -> PagerDutyError | Deferred:
        if gate is None:
            return error
        self._tell_gate(gate, error)
        if error.status == 429 and isinstance(error, RetryableError):
            return Deferred(gate.rate_limited(error.retry_after, error.rate_limit), str(error))
        return error

    def _answered(self, gate: DeliveryGate) -> None:
        """PagerDuty answered: if that ends an outage or a refusal, drain what was parked."""
        if gate.succeeded():
            log.warning("PagerDuty answers again: draining parked deliveries")
            self.recovered()

    def _tell_gate(self, gate: DeliveryGate, error: PagerDutyError) -> None:
        if isinstance(error, CredentialsError):
            gate.refused_credentials(str(error))
        elif isinstance(error, RetryableError) and error.status != 429:
            gate.failed()
        elif not isinstance(error, RetryableError):
            self._answered(gate)  # a 4xx is an answer: PagerDuty is up
