import pytest
from pydantic import ValidationError

from worker.errors import ConfigurationError
from worker.settings import Settings


def test_missing_secret_names_the_variable() -> None:
    settings = Settings(pagerduty_from="a@example.com")
    with pytest.raises(ConfigurationError, match="PAGERBRIDGE_PAGERDUTY_TOKEN") as caught:
        settings.require("pagerduty_token", "pagerduty_from")
    assert "PAGERBRIDGE_PAGERDUTY_FROM" not in str(caught.value)


def test_placeholder_from_env_example_is_refused() -> None:
    settings = Settings(ingress_tokens="good-0123456789abcdef0123456789abcdef,change-me")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="PAGERBRIDGE_INGRESS_TOKENS"):
        settings.require("ingress_tokens")


def test_tokens_are_comma_separated_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    alpha, beta = "tok-alpha-" + "a" * 24, "tok-beta-" + "b" * 24
    monkeypatch.setenv("PAGERBRIDGE_INGRESS_TOKENS", f" {alpha}, {beta} ,,")
    monkeypatch.setenv("PAGERBRIDGE_PAGERDUTY_TOKEN", "pd-secret")
    settings = Settings()
    assert settings.ingress_token_values == (alpha, beta)
    assert "pd-secret" not in repr(settings) and "tok-alpha" not in repr(settings)


def test_a_short_ingress_token_is_refused_saying_how_to_make_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAGERBRIDGE_INGRESS_TOKENS", "a,1234")
    with pytest.raises(ValidationError, match=r"at least 32 characters.*openssl rand -hex 32"):
        Settings()


def test_the_pool_memory_guard_reaches_celery_in_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.pipeline.celery_app import create_celery

    assert create_celery(Settings()).conf.worker_max_memory_per_child == 200 * 1024
    monkeypatch.setenv("PAGERBRIDGE_WORKER_MAX_MEMORY_MB", "64")
    assert create_celery(Settings()).conf.worker_max_memory_per_child == 64 * 1024
    monkeypatch.setenv("PAGERBRIDGE_WORKER_MAX_MEMORY_MB", "0")  # no guard
    assert create_celery(Settings()).conf.worker_max_memory_per_child is None
    monkeypatch.setenv("PAGERBRIDGE_WORKER_MAX_MEMORY_MB", "-1")
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Settings()
