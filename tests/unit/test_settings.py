import pytest

from worker.errors import ConfigurationError
from worker.settings import Settings


def test_missing_secret_names_the_variable() -> None:
    settings = Settings(pagerduty_from="a@example.com")
    with pytest.raises(ConfigurationError, match="PAGERBRIDGE_PAGERDUTY_TOKEN") as caught:
        settings.require("pagerduty_token", "pagerduty_from")
    assert "PAGERBRIDGE_PAGERDUTY_FROM" not in str(caught.value)


def test_placeholder_from_env_example_is_refused() -> None:
    settings = Settings(ingress_tokens="good,change-me")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="PAGERBRIDGE_INGRESS_TOKENS"):
        settings.require("ingress_tokens")


def test_tokens_are_comma_separated_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERBRIDGE_INGRESS_TOKENS", " tok-alpha, tok-beta ,,")
    monkeypatch.setenv("PAGERBRIDGE_PAGERDUTY_TOKEN", "pd-secret")
    settings = Settings()
    assert settings.ingress_token_values == ("tok-alpha", "tok-beta")
    assert "pd-secret" not in repr(settings) and "tok-alpha" not in repr(settings)
