"""Which incident a looked-up key means (pure policy)."""

from __future__ import annotations

from worker.delivery import choose_incident
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
