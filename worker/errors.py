"""The bridge's own errors (PagerDuty's live in ``worker.pagerduty.errors``).

BridgeError
 ├── ConfigurationError     a setting is missing or invalid; the command stops at start
 ├── ServiceUnavailable     Redis or the database does not answer
 └── InvalidEvent           an event cannot be understood (the ingress answers 4xx)
"""


class BridgeError(Exception):
    """Base of every error pagerbridge raises on purpose."""


class ConfigurationError(BridgeError):
    """A setting is missing or invalid."""


class ServiceUnavailable(BridgeError):
    """A service the bridge depends on (Redis, the database) does not answer."""


class NotDurable(ServiceUnavailable):
    """The database did not take an event and Redis cannot confirm it has it on disk. Its
    message is the caller's answer: it names no host, address or secret."""


class InvalidEvent(BridgeError):
    """An event that cannot be understood; ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
