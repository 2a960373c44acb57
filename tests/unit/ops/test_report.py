import pytest

from worker.errors import InvalidEvent
from worker.vocabulary import AlertStatus, advance, next_update, parse_action

T, A, R = AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("triggered", T),
        ("TRIGGERED", T),
        ("Trigger", T),
        (" triggered ", T),
        ("acknowledged", A),
        ("acknowledge", A),
        ("Acknowledged", A),
        ("resolved", R),
        ("RESOLVE", R),
    ],
)
def test_actions_in_any_case_and_verb_form(text: str, status: AlertStatus) -> None:
    assert parse_action(text) is status


@pytest.mark.parametrize("text", ["", "ack", "closed", "triggered!", "{ACTION}"])
def test_unknown_action_names_the_field(text: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_action(text)
    assert caught.value.field == "action"


def test_desired_status_only_moves_forward() -> None:
    assert advance(T, A) is A
    assert advance(A, T) is A
    assert advance(R, A) is R
    assert advance(R, T) is R
    assert advance(T, R) is R


def test_never_acknowledge_once_resolve_is_wanted() -> None:
    assert next_update(R, T) is R
    assert next_update(A, T) is A
    assert next_update(A, A) is None
    assert next_update(A, R) is None
    assert next_update(T, T) is None
