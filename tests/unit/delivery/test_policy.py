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
