"""Which incident a looked-up key means (pure policy)."""

from __future__ import annotations

from worker.delivery.policy import choose_incident
from worker.pagerduty import Incident


def incident(number: int, status: str) -> Incident:
    return Incident(id=f"P{number}", status=status, number=number)


def test_nothing_found_is_none() -> None:
    assert choose_incident([]) is None


def test_an_open_incident_wins_over_a_newer_resolved_one() -> None:
    chosen = choose_incident([incident(9, "resolved"), incident(3, "triggered")])
    assert chosen is not None and chosen.id == "P3"


def test_among_resolved_ones_the_newest() -> None:
    chosen = choose_incident([incident(2, "resolved"), incident(7, "resolved")])
    assert chosen is not None and chosen.id == "P7"


def test_calls_in_flight_start_at_one_double_on_answers_and_fall_back_on_failure() -> None:
    from worker.delivery.policy import calls_in_flight_after

    widths = [1]
    for _ in range(4):
        widths.append(calls_in_flight_after(widths[-1], answered=True, limit=4))
    assert widths == [1, 2, 4, 4, 4]
    assert calls_in_flight_after(4, answered=False, limit=4) == 1
    assert calls_in_flight_after(1, answered=True, limit=1) == 1
    assert calls_in_flight_after(4, answered=True, limit=6) == 6


def test_only_a_page_waiting_for_an_alert_that_resolved_is_withdrawn() -> None:
    from worker.delivery.policy import Create, FindByKey, SendEvent, Update, withdrawn_by
    from worker.vocabulary import AlertStatus

    create = Create("t", "PSVC", "key", None, None)
    trigger = SendEvent(AlertStatus.TRIGGERED, {"event_action": "trigger"})
    resolve = SendEvent(AlertStatus.RESOLVED, {"event_action": "resolve"})
    update = Update("P1", AlertStatus.ACKNOWLEDGED)
    look_up = FindByKey("key", include_resolved=True)
    # A create or a trigger, once the alert resolved: withdrawn
    assert withdrawn_by(create, AlertStatus.RESOLVED)
    assert withdrawn_by(trigger, AlertStatus.RESOLVED)
    # Still wanted while the alert fires or is acknowledged
    assert not withdrawn_by(create, AlertStatus.TRIGGERED)
    assert not withdrawn_by(trigger, AlertStatus.ACKNOWLEDGED)
    # Never a call that ends or quiets a page, nor the look-up a resolve needs
    assert not any(withdrawn_by(step, AlertStatus.RESOLVED) for step in (resolve, update, look_up))
