import random

import pytest

from worker.delivery.backoff import retry_delay, should_give_up


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20, 100, 10_000])
def test_delay_within_bounds(attempt: int) -> None:
    rand = random.Random(attempt)
    for _ in range(200):
        delay = retry_delay(attempt, minimum=5, maximum=300, rand=rand)
        assert 5 <= delay <= 300


def test_delay_grows_exponentially_with_jitter_only_lengthening() -> None:
    low = random.Random()
    low.uniform = lambda a, b: a  # type: ignore[method-assign]
    high = random.Random()
    high.uniform = lambda a, b: b  # type: ignore[method-assign]
    assert [retry_delay(n, minimum=5, maximum=1e9, rand=low) for n in (1, 2, 3, 4)] == [
        5,
        10,
        20,
        40,
    ]
    assert [retry_delay(n, minimum=5, maximum=1e9, rand=high) for n in (1, 2, 3)] == [10, 20, 40]


def test_delay_is_capped() -> None:
    assert retry_delay(50, minimum=5, maximum=300) == 300


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        retry_delay(0, minimum=1, maximum=2)


def test_give_up_age() -> None:
    assert not should_give_up(3599, give_up_after=3600)
    assert should_give_up(3600, give_up_after=3600)
