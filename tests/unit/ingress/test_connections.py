"""The api's connection cap (worker/ingress/connections.py); the deadlines are tested against a
real server in tests/integration/test_connections.py."""

from __future__ import annotations

import pytest

from worker.ingress.connections import RESERVED_FILES, ConnectionLimits, connection_cap
from worker.settings import Settings


@pytest.mark.parametrize(
    ("configured", "file_limit", "cap"),
    [
        (1000, None, 1000),  # no limit
        (1000, 65536, 1000),
        (1000, 256, 256 - RESERVED_FILES),  # `ulimit -n 256`: the cap fits under it
        (100, 256, 100),
        (1000, 10, 1),
    ],
)
def test_the_cap_leaves_files_for_everything_else(
    configured: int, file_limit: int | None, cap: int
) -> None:
    assert connection_cap(configured, file_limit) == cap


def test_the_limits_come_from_the_settings() -> None:
    settings = Settings(http_idle_timeout=7, http_request_timeout=9, http_max_connections=50)
    limits = ConnectionLimits.of(settings)
    assert (limits.idle_timeout, limits.request_timeout) == (7, 9)
    assert limits.max_connections <= 50


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(ValueError, match="TLS_KEYFILE"):
        Settings(tls_certfile="/etc/cert.pem")
